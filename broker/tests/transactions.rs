//! Transactions at the wire: what the broker answers to each transaction frame, and how a commit
//! whose answer was lost is resolved on another connection (raw frames, in-process connections).

mod support;

use support::*;
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::ErrorCode;
use tandem_protocol::wire::{self, AckKind, AckMode};

async fn commit(
    c: &mut Raw,
    session_id: u64,
    name: &str,
    seq: u64,
    resolve: bool,
) -> Result<(), (ErrorCode, String)> {
    c.request(|request_id| {
        wire::TxCommit {
            request_id,
            session_id,
            tx_name: name.into(),
            tx_seq: seq,
            resolve,
            ..Default::default()
        }
        .into()
    })
    .await
}

#[tokio::test]
async fn transaction_frames_on_the_wrong_session_are_refused_clearly() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.session(2, AckMode::Transacted).await;
    let r = c
        .request(|request_id| {
            wire::TxBegin {
                request_id,
                session_id: 1,
            }
            .into()
        })
        .await;
    assert!(
        matches!(&r, Err((ErrorCode::IllegalState, m)) if m.contains("not transacted")),
        "{r:?}"
    );
    c.request(|request_id| {
        wire::TxBegin {
            request_id,
            session_id: 2,
        }
        .into()
    })
    .await
    .expect("TxBegin on a transacted session is accepted");
    assert!(matches!(
        commit(&mut c, 9, "", 0, false).await,
        Err((ErrorCode::UnknownSession, _))
    ));
    let r = c
        .request(|request_id| {
            wire::TxRollback {
                request_id,
                session_id: 1,
                ..Default::default()
            }
            .into()
        })
        .await;
    assert!(matches!(r, Err((ErrorCode::IllegalState, _))), "{r:?}");
    // Deliveries of a transacted session are acknowledged by commit, never by Ack.
    let q = queue("tx.wire");
    c.producer(1, 1, Some(&q)).await;
    c.send_msg(1, 1, text(&q, 1, false)).await.unwrap();
    c.consumer(2, 1, &q, 10).await.unwrap();
    let d = c.deliver().await;
    let r = c
        .request(|request_id| {
            wire::Ack {
                session_id: 2,
                consumer_id: 1,
                delivery_id: d.delivery_id,
                kind: AckKind::Individual as i32,
                request_id,
            }
            .into()
        })
        .await;
    assert!(
        matches!(&r, Err((ErrorCode::IllegalState, m)) if m.contains("commit")),
        "{r:?}"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_commit_is_resolved_once_and_a_late_original_cannot_apply_after_a_no() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("tx.resolve");
    let mut a = Raw::local(&b).await;
    a.session(1, AckMode::Transacted).await;
    a.producer(1, 1, Some(&q)).await;
    a.send_msg(1, 1, text(&q, 1, true)).await.unwrap();
    commit(&mut a, 1, "app:tx", 1, false).await.unwrap();

    // Another connection (the client after a failover) asks about commit 1: it took effect.
    let mut b2 = Raw::local(&b).await;
    b2.session(1, AckMode::Transacted).await;
    commit(&mut b2, 1, "app:tx", 1, true)
        .await
        .expect("committed");
    // Commit 2 never reached the broker: the answer is no ...
    let r = commit(&mut b2, 1, "app:tx", 2, true).await;
    assert!(
        matches!(&r, Err((ErrorCode::TransactionRolledBack, _))),
        "{r:?}"
    );
    // ... and stays no: a late copy of commit 2 on the old connection is refused, its send dropped.
    a.send_msg(1, 2, text(&q, 2, true)).await.unwrap();
    let r = commit(&mut a, 1, "app:tx", 2, false).await;
    assert!(matches!(&r, Err((ErrorCode::IllegalState, _))), "{r:?}");
    // A resolve must name its transaction.
    assert!(matches!(
        commit(&mut b2, 1, "", 3, true).await,
        Err((ErrorCode::IllegalState, _))
    ));

    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let d = c.deliver().await;
    assert_eq!(n_of(&d), 1);
    assert!(
        c.deliver_within(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "the refused commit's send was dropped"
    );
    b.shutdown().await;
}
