//! The load balancer's stand-in: one TCP proxy per tenant port (JMS, STOMP, HTTP) on 127.0.0.1,
//! forwarding each new connection to the lane the [`Router`] picked from `/health`.
//!
//! - A new connection goes to the current target, or is closed at once when there is none (the
//!   client's reconnect loop then tries again; an NLB with no healthy target would do worse).
//! - When a lane stops being the serving active (or dies), every client connection it carries is
//!   closed: clients learn of the failover from the proxy within a few probe intervals instead of
//!   waiting for a timeout on a half-dead path.
//! - Connections are bounded ([`MAX_CONNECTIONS`] per proxy); over it, new ones are closed.
//!
//! Race the switch closes: a connection is tied to its lane's *generation* token, taken after the
//! target was read and checked again afterwards. [`Switch::apply`] moves the target before it
//! cancels a generation, so a connection either sees the new target or holds the token that is
//! cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::policy::{RouteChange, Router};
use super::probe;

/// Most client connections one proxy carries at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// A lane that does not accept within this is treated as gone for that connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where new connections go, and the per-lane generations that close old ones.
pub struct Switch {
    target: watch::Sender<Option<usize>>,
    generations: Vec<Mutex<CancellationToken>>,
}

impl Switch {
    pub fn new(lanes: usize) -> Arc<Switch> {
        Arc::new(Switch {
            target: watch::Sender::new(None),
            generations: (0..lanes)
                .map(|_| Mutex::new(CancellationToken::new()))
                .collect(),
        })
    }

    pub fn target(&self) -> Option<usize> {
        *self.target.borrow()
    }

    /// Moves the target first, then closes the connections of the lanes named in `close`.
    pub fn apply(&self, change: &RouteChange) {
        self.target.send_replace(change.target);
        for &lane in &change.close {
            if let Some(g) = self.generations.get(lane) {
                let old = std::mem::replace(&mut *g.lock(), CancellationToken::new());
                old.cancel();
            }
        }
    }

    /// The target and a token cancelled when connections to it must close; `None` when there is
    /// no target (or it moved while we looked).
    fn route(&self) -> Option<(usize, CancellationToken)> {
        let lane = self.target()?;
        let token = self.generations.get(lane)?.lock().clone();
        (self.target() == Some(lane)).then_some((lane, token))
    }
}

/// Accepts on `listener` until `shutdown`, forwarding to `127.0.0.1:lane_ports[target]`.
pub async fn serve(
    name: String,
    listener: TcpListener,
    lane_ports: Vec<u16>,
    switch: Arc<Switch>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(proxy = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(proxy = %name, %peer, "connection limit reached; closing");
            continue;
        };
        let Some((lane, generation)) = switch.route() else {
            tracing::debug!(proxy = %name, %peer, "no active lane; closing");
            continue;
        };
        let Some(&port) = lane_ports.get(lane) else {
            continue;
        };
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            forward(
                client,
                SocketAddr::from(([127, 0, 0, 1], port)),
                generation,
                shutdown,
            )
            .await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn forward(
    mut client: TcpStream,
    lane: SocketAddr,
    generation: CancellationToken,
    shutdown: CancellationToken,
) {
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(lane)).await;
    // Dropping the client socket closes it: the client reconnects and, by then, probably finds
    // the new active.
    let Ok(Ok(mut upstream)) = upstream else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = generation.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Probes every lane's `/health` each `interval` (each probe bounded by `timeout`), feeds the
/// router and carries out its changes; `on_target` hears every change of target.
pub async fn follow_health(
    lanes_http: Vec<SocketAddr>,
    mut router: Router,
    interval: Duration,
    timeout: Duration,
    switch: Arc<Switch>,
    on_target: impl Fn(Option<usize>),
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probes =
            futures::future::join_all(lanes_http.iter().map(|&h| probe::health(h, timeout))).await;
        for (lane, (p, _)) in probes.into_iter().enumerate() {
            let before = router.target();
            if let Some(change) = router.observe(lane, p) {
                switch.apply(&change);
                if change.target != before {
                    tracing::info!(from = ?before, to = ?change.target, closed = ?change.close, "proxy target changed");
                    on_target(change.target);
                } else if !change.close.is_empty() {
                    tracing::info!(closed = ?change.close, "closing client connections");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> (u16, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = l.accept() => a.unwrap(),
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (port, stop)
    }

    async fn roundtrip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_to_the_target_refuses_without_one_and_closes_on_switch() {
        let (a, _sa) = echo_server().await;
        let (b, _sb) = echo_server().await;
        let switch = Switch::new(2);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            "test".into(),
            l,
            vec![a, b],
            switch.clone(),
            stop.clone(),
        ));
        // No target: the connection is accepted and closed, nothing echoes.
        assert!(roundtrip(addr).await.is_err());
        switch.apply(&RouteChange {
            target: Some(0),
            close: vec![],
        });
        assert_eq!(roundtrip(addr).await.unwrap(), b"ping");
        // A long-lived connection to lane 0 is closed when lane 0 stops being active.
        let mut held = TcpStream::connect(addr).await.unwrap();
        held.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        held.read_exact(&mut one).await.unwrap();
        switch.apply(&RouteChange {
            target: Some(1),
            close: vec![0],
        });
        let n = tokio::time::timeout(Duration::from_secs(10), held.read(&mut one))
            .await
            .expect("the proxy closes the old lane's connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "EOF after the switch");
        assert_eq!(roundtrip(addr).await.unwrap(), b"ping");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_dead_target_closes_the_client() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let switch = Switch::new(1);
        switch.apply(&RouteChange {
            target: Some(0),
            close: vec![],
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve("t".into(), l, vec![port], switch, stop.clone()));
        assert!(roundtrip(addr).await.is_err());
        stop.cancel();
    }
}
