//! The state one connection shares between the application's handles and its two tasks.
//!
//! - The **writer task** owns the transport's sending half. Everything goes to it through one
//!   unbounded channel (so the reader, `Drop` impls and `poll` functions can queue acks, flow and pongs
//!   without awaiting); the application's data is bounded instead by a byte semaphore that `Send`
//!   frames hold until they are written. It sends `Ping` after one heartbeat interval with nothing to
//!   write.
//! - The **reader task** owns the receiving half and routes each frame: answers to requests (by
//!   request id), receipts (by producer id and sequence), deliveries (by consumer id, into the
//!   consumer's buffer). It closes the connection with `IdleTimeout` after three silent intervals.
//!
//! One `std::sync::Mutex` guards [`State`]; it is never held across an `.await`. Frames that must keep
//! their order relative to state changes (acks, the recover `Nack`) are queued while it is held:
//! queueing is a non-blocking push.
//!
//! **Failover.** `Shared` outlives any one transport. Each transport is a *generation*: its reader
//! and writer carry the number, and a frame from a reader whose generation is no longer current is
//! dropped (checked under the lock, so a stale delivery can never reach a consumer of the new
//! link). When a link is lost and the connection reconnects ([`Shared::lost`]), under the lock:
//! the writer's channel is swapped for a dead one (frames queued while down — acks, flow — belong
//! to the dead link and are dropped), the generation moves on, consumer buffers and ack positions
//! are cleared (their deliveries are the old broker's, which gives them back flagged redelivered),
//! requests in flight are resolved by what they were ([`OnLoss`]), and unconfirmed persistent
//! sends stay in `receipts` with their frames for the resend. Lock order: `state`, then `out`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tandem_protocol::{CodecError, ErrorCode, Frame, wire};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::event::ConnectionEvent;
use crate::session::AckMode;
use crate::transport::{FrameRx, FrameTx};

/// Most bytes the writer puts into one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A request's id and the receiver of its answer.
pub(crate) type PendingAnswer = (u64, oneshot::Receiver<Result<()>>);

/// What the writer task receives.
pub(crate) enum Outgoing {
    Frame(Frame),
    /// A `Send` holding its share of the send budget until it is written.
    Send(Frame, OwnedSemaphorePermit),
    /// The last frame (`Close`): write it with everything before it, shut the transport down, report.
    Close(Frame, oneshot::Sender<()>),
    /// Stop without writing anything more (the connection is already gone).
    Stop,
}

/// Something to do when a request's answer arrives, inside the reader, before the caller hears.
#[derive(Clone, Copy)]
pub(crate) enum AfterAnswer {
    None,
    /// The recover `Nack` of this session is answered: deliveries count again.
    EndRecover(u64),
}

/// What becomes of a request in flight when the link is lost and the connection fails over.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OnLoss {
    /// Fails with the loss (the caller may retry on the new link).
    Fail,
    /// Done anyway: closes (the dead link took the entity with it; it is not recreated) and the
    /// recover `Nack` (everything unacknowledged comes back flagged redelivered anyway).
    Succeed,
    /// An acknowledgement that cannot reach the broker that made the delivery.
    AckLost,
    /// An open that did not complete: forget the entity (it is not recreated) and fail.
    ForgetSession(u64),
    ForgetProducer(u64),
    ForgetConsumer(u64),
}

struct Pending {
    tx: oneshot::Sender<Result<()>>,
    after: AfterAnswer,
    on_loss: OnLoss,
}

/// A persistent send waiting for its receipt.
pub(crate) struct ReceiptSlot {
    pub(crate) tx: oneshot::Sender<Result<()>>,
    /// With failover: the frame to resend on the next link (same producer and sequence, so the
    /// broker's duplicate detection drops it if it was stored) and its share of the budget of
    /// unconfirmed bytes.
    pub(crate) resend: Option<(wire::Send, OwnedSemaphorePermit)>,
}

/// What the application's calls see of the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    Up,
    /// Lost; the supervisor is reconnecting.
    Down,
    Closed,
}

/// A producer as the broker must see it again after a reconnect.
pub(crate) struct ProducerReg {
    pub(crate) session_id: u64,
    pub(crate) name: String,
    pub(crate) destination: Option<wire::Destination>,
}

/// A consumer's slot: where the reader puts its deliveries.
pub(crate) struct ConsumerSlot {
    pub(crate) session_id: u64,
    pub(crate) prefetch: u32,
    pub(crate) browser: bool,
    pub(crate) buffer: VecDeque<wire::Deliver>,
    pub(crate) waker: Option<Waker>,
    /// Flow credit asked and not yet used by a delivery (pull consumers: 0 or 1).
    pub(crate) pull_outstanding: u32,
    /// The open frame (request id 0), replayed on a new link.
    pub(crate) open: wire::ConsumerOpen,
    /// A browser whose queue has nothing further (BrowseDone arrived).
    pub(crate) browse_done: bool,
}

impl ConsumerSlot {
    /// A broker respecting credit never exceeds prefetch plus the credit asked; the slack only
    /// absorbs acks still in flight. Beyond it the broker is broken and the connection fails.
    fn capacity(&self) -> usize {
        self.prefetch as usize + self.pull_outstanding as usize + 64
    }
}

/// Where the application stands with one consumer of a session.
#[derive(Default, Clone, Copy)]
pub(crate) struct Position {
    /// The last delivery handed to the application (0: none).
    pub(crate) handed: u64,
    /// The last delivery covered by a cumulative ack (client and dups-ok modes).
    pub(crate) acked: u64,
    /// Dups-ok: deliveries handed since the last cumulative ack.
    pub(crate) pending: u32,
}

pub(crate) struct SessionState {
    pub(crate) ack_mode: AckMode,
    /// Recover `Nack`s not yet answered. Meanwhile deliveries for the session are held back: the
    /// answer's mark says which of them the broker took back (stale) and which are new.
    pub(crate) recovering: u32,
    /// Deliveries with an id up to this were taken back by a recover: drop them on arrival.
    pub(crate) stale_up_to: u64,
    /// Deliveries that arrived while a recover was unanswered, in arrival order.
    pub(crate) held: Vec<wire::Deliver>,
    /// Per consumer (kept after the consumer closes while it has unacknowledged deliveries: a later
    /// session ack or recover still covers them).
    pub(crate) positions: BTreeMap<u64, Position>,
    /// Transacted sessions only: the open transaction.
    pub(crate) tx: Option<TxClient>,
}

/// The client's view of a transacted session's open transaction.
pub(crate) struct TxClient {
    /// Names the session's commits for the broker's duplicate detection (with `seq`), so a commit
    /// whose answer was lost with its link can be asked about on the next one.
    pub(crate) name: String,
    /// The last commit's number.
    pub(crate) seq: u64,
    /// Something was sent or received in the open transaction.
    pub(crate) dirty: bool,
    /// Why the open transaction can only roll back (its link was lost).
    pub(crate) doomed: Option<String>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) closed: Option<Error>,
    pub(crate) started: bool,
    /// A transport is connected (false while failing over).
    pub(crate) up: bool,
    /// The current link's number; raised when a link is lost.
    pub(crate) generation: u64,
    /// Where the current (or last) link goes, for events.
    pub(crate) endpoint: String,
    requests: HashMap<u64, Pending>,
    pub(crate) receipts: HashMap<(u64, u64), ReceiptSlot>,
    pub(crate) consumers: HashMap<u64, ConsumerSlot>,
    pub(crate) sessions: HashMap<u64, SessionState>,
    pub(crate) producers: HashMap<u64, ProducerReg>,
    /// Temporary destinations this connection created: created again on a new link.
    pub(crate) temps: std::collections::BTreeSet<tandem_protocol::model::Destination>,
}

impl State {
    pub(crate) fn check_open(&self) -> Result<()> {
        match &self.closed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// The error of a request made in the instant a link was lost (the caller may retry).
pub(crate) fn failing_over() -> Error {
    Error::ConnectionLost {
        code: None,
        reason: "the connection is failing over; the request was not sent (retry)".into(),
    }
}

/// The reader and writer of the current link.
#[derive(Default)]
pub(crate) struct Io {
    pub(crate) reader: Option<JoinHandle<()>>,
    pub(crate) writer: Option<JoinHandle<()>>,
}

/// Settings fixed at connect time.
pub(crate) struct Settings {
    pub(crate) max_frame_size: usize,
    pub(crate) default_prefetch: u32,
    pub(crate) request_timeout: Duration,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The current writer's channel (a dead one while failing over).
    out: Mutex<mpsc::UnboundedSender<Outgoing>>,
    pub(crate) send_budget: Arc<Semaphore>,
    pub(crate) send_budget_bytes: usize,
    /// With failover: bytes of persistent sends kept for a resend until their receipt arrives.
    pub(crate) unconfirmed_budget: Arc<Semaphore>,
    pub(crate) unconfirmed_budget_bytes: usize,
    next_id: AtomicU64,
    events: broadcast::Sender<ConnectionEvent>,
    pub(crate) settings: Settings,
    link: watch::Sender<LinkState>,
    /// Set when the connection fails over: the supervisor hears of each lost generation here.
    failover: std::sync::OnceLock<mpsc::UnboundedSender<(u64, Error)>>,
    pub(crate) connection_id: AtomicU64,
    pub(crate) io: Mutex<Io>,
}

impl Shared {
    pub(crate) fn new(
        settings: Settings,
        endpoint: String,
    ) -> (Arc<Shared>, mpsc::UnboundedReceiver<Outgoing>) {
        let (out, rx) = mpsc::unbounded_channel();
        // Room for at least one frame of the largest size, and for plenty of small ones.
        let budget = settings.max_frame_size.max(8 * 1024 * 1024);
        let unconfirmed = settings.max_frame_size.max(64 * 1024 * 1024);
        let state = State {
            up: true,
            endpoint,
            ..State::default()
        };
        let shared = Shared {
            state: Mutex::new(state),
            out: Mutex::new(out),
            send_budget: Arc::new(Semaphore::new(budget)),
            send_budget_bytes: budget,
            unconfirmed_budget: Arc::new(Semaphore::new(unconfirmed)),
            unconfirmed_budget_bytes: unconfirmed,
            next_id: AtomicU64::new(1),
            events: broadcast::channel(256).0,
            settings,
            link: watch::channel(LinkState::Up).0,
            failover: std::sync::OnceLock::new(),
            connection_id: AtomicU64::new(0),
            io: Mutex::new(Io::default()),
        };
        (Arc::new(shared), rx)
    }

    /// Turns failover on: lost links are reported to the supervisor instead of closing.
    pub(crate) fn enable_failover(&self, lost: mpsc::UnboundedSender<(u64, Error)>) {
        let _ = self.failover.set(lost);
    }

    pub(crate) fn failover_enabled(&self) -> bool {
        self.failover.get().is_some()
    }

    pub(crate) fn io(&self) -> MutexGuard<'_, Io> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn out(&self) -> MutexGuard<'_, mpsc::UnboundedSender<Outgoing>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the link is up (or the connection closed: the caller then sees why under the
    /// lock), at most until `deadline`.
    pub(crate) async fn wait_up(&self, deadline: tokio::time::Instant) -> Result<()> {
        let mut rx = self.link.subscribe();
        match tokio::time::timeout_at(deadline, rx.wait_for(|s| *s != LinkState::Down)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout(
                "the connection was not re-established within the request timeout",
            )),
        }
    }

    /// [`Shared::wait_up`] bounded by the request timeout from now.
    pub(crate) async fn ready(&self) -> Result<()> {
        self.wait_up(tokio::time::Instant::now() + self.settings.request_timeout)
            .await
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id, unique within the connection (requests, sessions, producers, consumers).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a frame for the writer. Callers hold the lock when the frame's order relative to a
    /// state change matters.
    pub(crate) fn push(&self, frame: Frame) {
        let _ = self.out().send(Outgoing::Frame(frame));
    }

    pub(crate) fn push_outgoing(&self, o: Outgoing) {
        let _ = self.out().send(o);
    }

    pub(crate) fn check_size(&self, frame: &Frame) -> Result<()> {
        let len = frame.body_len() + 1;
        let max = self.settings.max_frame_size;
        if len > max {
            Err(Error::MessageTooLarge { size: len, max })
        } else {
            Ok(())
        }
    }

    /// Registers a request and queues its frame, with the lock held by the caller (so it can change
    /// state in the same step). Returns the receiver of the answer.
    pub(crate) fn request_locked(
        &self,
        st: &mut State,
        build: impl FnOnce(u64) -> Frame,
        after: AfterAnswer,
    ) -> Result<(u64, oneshot::Receiver<Result<()>>)> {
        self.request_locked_on_loss(st, build, after, OnLoss::Fail)
    }

    /// [`Shared::request_locked`], saying what a failover does to the request in flight. While the
    /// link is down nothing is sent: the request fails at once ([`failing_over`]).
    pub(crate) fn request_locked_on_loss(
        &self,
        st: &mut State,
        build: impl FnOnce(u64) -> Frame,
        after: AfterAnswer,
        on_loss: OnLoss,
    ) -> Result<(u64, oneshot::Receiver<Result<()>>)> {
        st.check_open()?;
        if !st.up {
            return Err(failing_over());
        }
        let id = self.next_id();
        let frame = build(id);
        self.check_size(&frame)?;
        let (tx, rx) = oneshot::channel();
        st.requests.insert(id, Pending { tx, after, on_loss });
        self.push(frame);
        Ok((id, rx))
    }

    /// Waits for a registered request's answer.
    pub(crate) async fn wait(&self, id: u64, rx: oneshot::Receiver<Result<()>>) -> Result<()> {
        match tokio::time::timeout(self.settings.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self
                .lock()
                .closed
                .clone()
                .unwrap_or(Error::ConnectionClosed)),
            Err(_) => {
                let mut st = self.lock();
                if let Some(p) = st.requests.remove(&id) {
                    // No mark: the held deliveries cannot be told apart. Drop them; the broker
                    // gives back whatever stays unacknowledged when the session closes.
                    end_recover(&mut st, p.after, None);
                }
                Err(Error::Timeout(
                    "no answer from the broker within the request timeout",
                ))
            }
        }
    }

    /// Registers a request whose answer nobody waits for (closes issued from `Drop`).
    pub(crate) fn fire_and_forget(&self, st: &mut State, build: impl FnOnce(u64) -> Frame) {
        let _ = self.request_locked(st, build, AfterAnswer::None);
    }

    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<ConnectionEvent>, Option<Error>) {
        // Under the lock: the closing event is sent under it too, so a subscriber either sees the
        // connection open and will get the event, or gets the reason here.
        let st = self.lock();
        (self.events.subscribe(), st.closed.clone())
    }

    pub(crate) fn emit(&self, ev: ConnectionEvent) {
        let _ = self.events.send(ev);
    }

    /// Ends the connection with `err`: every pending request and receipt fails with it, consumers
    /// wake up to see it, listeners hear it, the writer stops. Idempotent: the first reason wins.
    pub(crate) fn fail(&self, err: Error) {
        let (requests, receipts, wakers) = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(err.clone());
            st.up = false;
            self.link.send_replace(LinkState::Closed);
            let wakers: Vec<Waker> = st
                .consumers
                .values_mut()
                .filter_map(|c| c.waker.take())
                .collect();
            self.emit(ConnectionEvent::Closed(err.clone()));
            (
                std::mem::take(&mut st.requests),
                std::mem::take(&mut st.receipts),
                wakers,
            )
        };
        tracing::debug!(error = %err, "connection ended");
        self.push_outgoing(Outgoing::Stop);
        for (_, p) in requests {
            let _ = p.tx.send(Err(err.clone()));
        }
        for (_, r) in receipts {
            let _ = r.tx.send(Err(err.clone()));
        }
        for w in wakers {
            w.wake();
        }
    }

    /// Marks the connection closed by the application and hands the writer its last frame.
    pub(crate) fn close_by_application(&self, done: oneshot::Sender<()>) -> bool {
        let (requests, receipts, wakers) = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return false;
            }
            st.closed = Some(Error::ConnectionClosed);
            st.up = false;
            self.link.send_replace(LinkState::Closed);
            let wakers: Vec<Waker> = st
                .consumers
                .values_mut()
                .filter_map(|c| c.waker.take())
                .collect();
            self.emit(ConnectionEvent::Closed(Error::ConnectionClosed));
            let close = Frame::Close(wire::Close {
                code: 0,
                message: String::new(),
            });
            self.push_outgoing(Outgoing::Close(close, done));
            (
                std::mem::take(&mut st.requests),
                std::mem::take(&mut st.receipts),
                wakers,
            )
        };
        for (_, p) in requests {
            let _ = p.tx.send(Err(Error::ConnectionClosed));
        }
        for (_, r) in receipts {
            let _ = r.tx.send(Err(Error::ConnectionClosed));
        }
        for w in wakers {
            w.wake();
        }
        true
    }

    /// Wakes every consumer (start, session close).
    pub(crate) fn wake_all(&self, st: &mut State) -> Vec<Waker> {
        st.consumers
            .values_mut()
            .filter_map(|c| c.waker.take())
            .collect()
    }

    /// Resolves a request; `mark` is the Ok's `last_delivery_id` (0 for an error).
    fn answer(&self, generation: u64, request_id: u64, result: Result<()>, mark: u64) {
        let pending = {
            let mut st = self.lock();
            if st.generation != generation {
                return;
            }
            let p = st.requests.remove(&request_id);
            if let Some(p) = &p {
                end_recover(&mut st, p.after, Some(mark));
            }
            p
        };
        match pending {
            Some(p) => {
                let _ = p.tx.send(result);
            }
            // A request that timed out on our side, or a broker answering twice.
            None => tracing::debug!(request_id, "answer to no pending request"),
        }
    }

    fn deliver(&self, generation: u64, d: wire::Deliver) -> Result<()> {
        let waker = {
            let mut st = self.lock();
            if st.generation != generation {
                // From a link already lost: its broker takes the delivery back.
                return Ok(());
            }
            let State {
                consumers,
                sessions,
                ..
            } = &mut *st;
            let Some(slot) = consumers.get_mut(&d.consumer_id) else {
                // A consumer closed while this was in flight: the broker takes it back
                // (ConsumerClose's last_consumed, or the session's close).
                tracing::trace!(
                    consumer = d.consumer_id,
                    "delivery for a closed consumer dropped"
                );
                return Ok(());
            };
            slot.pull_outstanding = slot.pull_outstanding.saturating_sub(1);
            let Some(sess) = sessions.get_mut(&slot.session_id) else {
                return Ok(());
            };
            // A browser's deliveries are numbered apart and never taken back by a recover.
            if !slot.browser && d.delivery_id <= sess.stale_up_to {
                // Sent before the broker took the session's deliveries back for a recover.
                return Ok(());
            }
            if sess.recovering > 0 && !slot.browser {
                // Stale or new? The recover's answer will say (its delivery-id mark).
                sess.held.push(d);
                return Ok(());
            }
            if slot.buffer.len() >= slot.capacity() {
                return Err(Error::Protocol(format!(
                    "consumer {} received more deliveries than its credit allows",
                    d.consumer_id
                )));
            }
            slot.buffer.push_back(d);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Routes one frame from the broker of link `generation`. `false` ends the reader.
    fn dispatch(&self, generation: u64, frame: Frame) -> bool {
        match frame {
            Frame::Ok(ok) => self.answer(generation, ok.request_id, Ok(()), ok.last_delivery_id),
            Frame::Error(e) if e.request_id == 0 => {
                let err = Error::broker(e.code, e.message);
                tracing::warn!(error = %err, "connection error from the broker");
                self.emit(ConnectionEvent::BrokerError(err));
            }
            Frame::Error(e) => self.answer(
                generation,
                e.request_id,
                Err(Error::broker(e.code, e.message)),
                0,
            ),
            Frame::SendReceipt(r) => {
                let tx = self.take_receipt(generation, r.producer_id, r.sequence);
                match tx {
                    Some(tx) => {
                        let _ = tx.send(Ok(()));
                    }
                    None => tracing::debug!(
                        producer = r.producer_id,
                        seq = r.sequence,
                        "receipt for no pending send"
                    ),
                }
            }
            Frame::SendFailure(f) => {
                let err = Error::broker(f.code, f.message);
                let tx = self.take_receipt(generation, f.producer_id, f.sequence);
                match tx {
                    Some(tx) => {
                        let _ = tx.send(Err(err));
                    }
                    // A pipelined (receipt-less) send failed: only the listener can learn of it.
                    None => self.emit(ConnectionEvent::SendFailed {
                        producer_id: f.producer_id,
                        sequence: f.sequence,
                        error: err,
                    }),
                }
            }
            Frame::Deliver(d) => {
                if let Err(e) = self.deliver(generation, d) {
                    self.lost(generation, e, Some(ErrorCode::IllegalState));
                    return false;
                }
            }
            Frame::Ping(p) => {
                let st = self.lock();
                if st.generation == generation && st.up {
                    self.push(Frame::Pong(wire::Pong { nonce: p.nonce }));
                }
            }
            Frame::Pong(_) => {}
            Frame::BrowseDone(b) => {
                let waker = {
                    let mut st = self.lock();
                    if st.generation != generation {
                        return true;
                    }
                    st.consumers.get_mut(&b.consumer_id).and_then(|slot| {
                        slot.browse_done = true;
                        slot.waker.take()
                    })
                };
                if let Some(w) = waker {
                    w.wake();
                }
            }
            Frame::Close(c) => {
                let code = (c.code != 0)
                    .then(|| ErrorCode::from_code(c.code))
                    .flatten();
                let reason = if c.message.is_empty() {
                    format!("the broker closed the connection (code {})", c.code)
                } else {
                    c.message
                };
                self.lost(generation, Error::ConnectionLost { code, reason }, None);
                return false;
            }
            other => {
                let e = Error::Protocol(format!(
                    "unexpected {:?} frame from the broker",
                    other.frame_type()
                ));
                self.lost(generation, e, Some(ErrorCode::IllegalState));
                return false;
            }
        }
        true
    }

    /// The waiting side of a receipt, if `generation` is the current link's.
    fn take_receipt(
        &self,
        generation: u64,
        producer_id: u64,
        sequence: u64,
    ) -> Option<oneshot::Sender<Result<()>>> {
        let mut st = self.lock();
        if st.generation != generation {
            // A receipt racing the loss: the resend on the next link is confirmed instead.
            return None;
        }
        st.receipts.remove(&(producer_id, sequence)).map(|r| r.tx)
    }

    /// Link `generation` ended with `err` (after sending `Close{code}` when given). Without failover
    /// the connection ends. With it, the link goes down and the supervisor reconnects; a report
    /// about a link already replaced is ignored.
    pub(crate) fn lost(&self, generation: u64, err: Error, close: Option<ErrorCode>) {
        let Some(supervisor) = self.failover.get() else {
            if let Some(code) = close
                && self.lock().closed.is_none()
            {
                self.push(Frame::Close(wire::Close {
                    code: code.code(),
                    message: err.to_string(),
                }));
            }
            self.fail(err);
            return;
        };
        let mut answers: Vec<(oneshot::Sender<Result<()>>, Result<()>)> = Vec::new();
        {
            let mut st = self.lock();
            if st.closed.is_some() || !st.up || st.generation != generation {
                return;
            }
            if let Some(code) = close {
                self.push(Frame::Close(wire::Close {
                    code: code.code(),
                    message: err.to_string(),
                }));
            }
            // The old writer flushes what it has and stops; anything queued from now on belongs
            // to the dead link and goes nowhere.
            self.push_outgoing(Outgoing::Stop);
            *self.out() = mpsc::unbounded_channel().0;
            st.up = false;
            st.generation += 1;
            for c in st.consumers.values_mut() {
                // The old broker gives these back (flagged redelivered); their acks cannot reach
                // the new one.
                c.buffer.clear();
                // A browse starts over on the new link (the replayed open begins it again).
                c.browse_done = false;
                c.pull_outstanding = 0;
            }
            let lost_reason = err.to_string();
            for sess in st.sessions.values_mut() {
                sess.recovering = 0;
                sess.stale_up_to = 0;
                sess.held.clear();
                sess.positions.clear();
                // The broker that held the open transaction's sends and deliveries is gone with
                // the link: the transaction cannot commit.
                if let Some(tx) = sess.tx.as_mut().filter(|t| t.dirty && t.doomed.is_none()) {
                    tx.doomed = Some(format!(
                        "the connection was lost during the transaction ({lost_reason})"
                    ));
                }
            }
            for (_, p) in std::mem::take(&mut st.requests) {
                let outcome = match p.on_loss {
                    OnLoss::Succeed => Ok(()),
                    OnLoss::AckLost => Err(Error::AckAfterFailover),
                    OnLoss::Fail => Err(err.clone()),
                    OnLoss::ForgetSession(id) => {
                        st.sessions.remove(&id);
                        st.consumers.retain(|_, c| c.session_id != id);
                        st.producers.retain(|_, p| p.session_id != id);
                        Err(interrupted(&lost_reason))
                    }
                    OnLoss::ForgetProducer(id) => {
                        st.producers.remove(&id);
                        Err(interrupted(&lost_reason))
                    }
                    OnLoss::ForgetConsumer(id) => {
                        st.consumers.remove(&id);
                        Err(interrupted(&lost_reason))
                    }
                };
                answers.push((p.tx, outcome));
            }
            self.emit(ConnectionEvent::Disconnected {
                endpoint: st.endpoint.clone(),
                error: err.clone(),
            });
            self.link.send_replace(LinkState::Down);
            let _ = supervisor.send((generation, err.clone()));
        }
        tracing::info!(error = %err, "link lost; failing over");
        for (tx, outcome) in answers {
            let _ = tx.send(outcome);
        }
    }

    /// Puts a new link in place of a lost one: installs its writer channel, then queues (before
    /// anything the application sends next) the sessions, producers and consumers again under
    /// their ids, and every unconfirmed persistent send with its producer and sequence. Returns the
    /// link's generation and the replayed requests to wait for.
    pub(crate) fn resume(
        &self,
        out: mpsc::UnboundedSender<Outgoing>,
        endpoint: String,
        connection_id: u64,
    ) -> Result<(u64, Vec<PendingAnswer>)> {
        let (generation, waits, wakers) = {
            let mut st = self.lock();
            st.check_open()?;
            *self.out() = out;
            st.up = true;
            st.endpoint = endpoint;
            self.connection_id.store(connection_id, Ordering::Relaxed);
            let mut waits = Vec::new();
            let mut sessions: Vec<(u64, AckMode)> = st
                .sessions
                .iter()
                .map(|(id, s)| (*id, s.ack_mode))
                .collect();
            sessions.sort_unstable_by_key(|(id, _)| *id);
            for (session_id, mode) in sessions {
                waits.push(self.request_locked(
                    &mut st,
                    |request_id| {
                        Frame::SessionOpen(wire::SessionOpen {
                            request_id,
                            session_id,
                            ack_mode: crate::session::ack_mode_wire(mode) as i32,
                        })
                    },
                    AfterAnswer::None,
                )?);
            }
            let mut producers: Vec<(u64, wire::ProducerOpen)> = st
                .producers
                .iter()
                .map(|(id, p)| {
                    let open = wire::ProducerOpen {
                        request_id: 0,
                        session_id: p.session_id,
                        producer_id: *id,
                        producer_name: p.name.clone(),
                        destination: p.destination.clone(),
                    };
                    (*id, open)
                })
                .collect();
            producers.sort_unstable_by_key(|(id, _)| *id);
            for (_, open) in producers {
                waits.push(self.request_locked(
                    &mut st,
                    |request_id| Frame::ProducerOpen(wire::ProducerOpen { request_id, ..open }),
                    AfterAnswer::None,
                )?);
            }
            // Before the consumers: a consumer of a temporary destination needs it to exist.
            let temps: Vec<wire::Destination> = st.temps.iter().map(|d| d.to_wire()).collect();
            for destination in temps {
                waits.push(self.request_locked(
                    &mut st,
                    |request_id| {
                        Frame::TempDestinationCreate(wire::TempDestinationCreate {
                            request_id,
                            destination: Some(destination),
                        })
                    },
                    AfterAnswer::None,
                )?);
            }
            let mut consumers: Vec<wire::ConsumerOpen> =
                st.consumers.values().map(|c| c.open.clone()).collect();
            consumers.sort_unstable_by_key(|c| c.consumer_id);
            for open in consumers {
                waits.push(self.request_locked(
                    &mut st,
                    |request_id| Frame::ConsumerOpen(wire::ConsumerOpen { request_id, ..open }),
                    AfterAnswer::None,
                )?);
            }
            // Per producer in sequence order: the broker keeps the highest stored sequence per
            // producer name, so the resends must not overtake each other.
            let mut resends: Vec<&wire::Send> = st
                .receipts
                .values()
                .filter_map(|r| r.resend.as_ref().map(|(f, _)| f))
                .collect();
            resends.sort_unstable_by_key(|f| (f.producer_id, f.sequence));
            let resends: Vec<Frame> = resends.into_iter().cloned().map(Frame::Send).collect();
            tracing::info!(
                sessions = st.sessions.len(),
                producers = st.producers.len(),
                consumers = st.consumers.len(),
                resends = resends.len(),
                "link resumed; replaying"
            );
            for f in resends {
                self.push(f);
            }
            let wakers = self.wake_all(&mut st);
            self.link.send_replace(LinkState::Up);
            (st.generation, waits, wakers)
        };
        // Pull consumers ask for credit again; everyone re-checks its (empty) buffer.
        wakers.into_iter().for_each(|w| w.wake());
        Ok((generation, waits))
    }
}

/// The error of an open that was in flight when the link was lost: the entity does not exist.
fn interrupted(reason: &str) -> Error {
    Error::ConnectionLost {
        code: None,
        reason: format!("the link was lost before the broker answered ({reason}); retry"),
    }
}

/// Ends a recover: deliveries up to the broker's mark are stale; the held ones above it are new
/// (redeliveries among them) and go to their consumers in arrival order.
fn end_recover(st: &mut State, after: AfterAnswer, mark: Option<u64>) {
    let AfterAnswer::EndRecover(sid) = after else {
        return;
    };
    let State {
        sessions,
        consumers,
        ..
    } = st;
    let Some(s) = sessions.get_mut(&sid) else {
        return;
    };
    s.recovering = s.recovering.saturating_sub(1);
    let Some(mark) = mark else {
        s.held.clear();
        return;
    };
    s.stale_up_to = s.stale_up_to.max(mark);
    if s.recovering > 0 {
        return;
    }
    for d in std::mem::take(&mut s.held) {
        if d.delivery_id <= s.stale_up_to {
            continue;
        }
        if let Some(slot) = consumers.get_mut(&d.consumer_id) {
            slot.buffer.push_back(d);
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }
}

/// The reader task: routes frames until the connection ends.
pub(crate) async fn reader(
    shared: Arc<Shared>,
    generation: u64,
    mut rx: FrameRx,
    heartbeat: Option<Duration>,
) {
    loop {
        let next = match heartbeat {
            Some(hb) => match tokio::time::timeout(hb * 3, rx.recv()).await {
                Ok(n) => n,
                Err(_) => {
                    let e = Error::ConnectionLost {
                        code: Some(ErrorCode::IdleTimeout),
                        reason: format!(
                            "nothing received for 3 heartbeat intervals ({:?})",
                            hb * 3
                        ),
                    };
                    shared.lost(generation, e, Some(ErrorCode::IdleTimeout));
                    return;
                }
            },
            None => rx.recv().await,
        };
        match next {
            None => {
                let e = Error::ConnectionLost {
                    code: None,
                    reason: "the broker ended the connection".into(),
                };
                shared.lost(generation, e, None);
                return;
            }
            Some(Err(e @ CodecError::Io(_))) => {
                shared.lost(generation, crate::transport::codec_error(e), None);
                return;
            }
            Some(Err(e)) => {
                // Tell the broker what was wrong with its bytes, as it would tell us.
                let code = e.error_code();
                shared.lost(generation, crate::transport::codec_error(e), Some(code));
                return;
            }
            Some(Ok(frame)) => {
                if !shared.dispatch(generation, frame) {
                    return;
                }
            }
        }
    }
}

/// The writer task: coalesces every ready frame into one write; pings when idle.
pub(crate) async fn writer(
    shared: Arc<Shared>,
    generation: u64,
    mut tx: FrameTx,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    heartbeat: Option<Duration>,
) {
    let mut batch: Vec<Frame> = Vec::new();
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut nonce = 0u64;
    loop {
        let first = match heartbeat {
            Some(hb) => match tokio::time::timeout(hb, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    nonce += 1;
                    Some(Outgoing::Frame(Frame::Ping(wire::Ping { nonce })))
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else { return };
        let mut done = None;
        let mut stop = false;
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Outgoing::Frame(f) => {
                    bytes += f.wire_len();
                    batch.push(f);
                }
                Outgoing::Send(f, p) => {
                    bytes += f.wire_len();
                    batch.push(f);
                    permits.push(p);
                }
                Outgoing::Close(f, d) => {
                    batch.push(f);
                    done = Some(d);
                    break;
                }
                Outgoing::Stop => {
                    stop = true;
                    break;
                }
            }
            if bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        let r = tx.write_batch(&mut batch).await;
        permits.clear();
        if let Err(e) = r {
            shared.lost(generation, e, None);
            return;
        }
        if let Some(d) = done {
            tx.shutdown().await;
            let _ = d.send(());
            return;
        }
        if stop {
            tx.shutdown().await;
            return;
        }
    }
}
