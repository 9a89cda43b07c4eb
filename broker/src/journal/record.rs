//! Typed journal records and their byte encoding.
//!
//! ```text
//! record   := len:u32  type:u8  payload[len]          (little endian; len counts the payload only)
//! str      := n:u32 utf8[n]
//! opt_str  := 0:u8 | 1:u8 str
//! bool     := 0:u8 | 1:u8
//!
//! type  record             payload
//! 0x01  AddMessage         msg_id:u64 encoded[rest]
//! 0x02  AddRef             msg_id:u64 queue:str
//! 0x03  AckRef             msg_id:u64 queue:str
//! 0x04  DeliveryCount      msg_id:u64 queue:str count:u32
//! 0x05  ScheduledDelivery  msg_id:u64 queue:str deliver_at_ms:u64
//! 0x06  Destination        name:str kind:u8 deleted:bool
//! 0x07  Subscription       queue:str topic:str client_id:opt_str name:str selector:opt_str
//!                          durable:bool shared:bool deleted:bool
//! 0x08  DupId              producer:str seq:u64
//! 0x09  EpochMarker        epoch:u64
//! 0x10  Tx                 tx_id:u64 op_type:u8 op_payload[rest]   (op is 0x01..=0x05 or 0x08)
//! 0x11  TxPrepare          tx_id:u64
//! 0x12  TxCommit           tx_id:u64
//! 0x13  TxRollback         tx_id:u64
//! ```
//!
//! There is no per-record checksum: the batch that carries records has one CRC32C over all of
//! them, and a batch is the unit that is accepted or rejected as a whole.

use bytes::Bytes;

use super::error::DecodeError;

/// Bytes of the record frame before the payload (`len:u32 type:u8`).
pub const RECORD_HEADER_LEN: usize = 5;

const T_ADD_MESSAGE: u8 = 0x01;
const T_ADD_REF: u8 = 0x02;
const T_ACK_REF: u8 = 0x03;
const T_DELIVERY_COUNT: u8 = 0x04;
const T_SCHEDULED: u8 = 0x05;
const T_DESTINATION: u8 = 0x06;
const T_SUBSCRIPTION: u8 = 0x07;
const T_DUP_ID: u8 = 0x08;
const T_EPOCH: u8 = 0x09;
const T_TX: u8 = 0x10;
const T_TX_PREPARE: u8 = 0x11;
const T_TX_COMMIT: u8 = 0x12;
const T_TX_ROLLBACK: u8 = 0x13;

/// A durable subscription (or a shared non-durable one that must survive restarts) and the
/// queue that backs it. Keyed by `queue`: a later record for the same queue replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The subscription queue's name (messages are `AddRef`ed to it).
    pub queue: String,
    /// The topic it subscribes to.
    pub topic: String,
    /// JMS client id, if any (unshared durable subscriptions need one).
    pub client_id: Option<String>,
    /// The subscription name.
    pub name: String,
    /// Message selector, if any.
    pub selector: Option<String>,
    pub durable: bool,
    pub shared: bool,
    /// True removes the subscription.
    pub deleted: bool,
}

/// One journal record. The broker's vocabulary is messages (`msg_id`), queues (by name) and
/// transactions (`tx_id`); the journal knows nothing else about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message body, stored once however many queues hold it. `encoded` is opaque to the journal.
    AddMessage { msg_id: u64, encoded: Bytes },
    /// The message is on `queue` (a queue or a subscription queue). Write it with (or after) the
    /// `AddMessage`; a message with no live ref is dropped at recovery.
    AddRef { msg_id: u64, queue: String },
    /// The message was acknowledged on `queue`; when its last ref is acked the message is gone.
    AckRef { msg_id: u64, queue: String },
    /// The delivery count of the message on `queue` (the last one written wins).
    DeliveryCount {
        msg_id: u64,
        queue: String,
        count: u32,
    },
    /// The message on `queue` must not be delivered before `deliver_at_ms` (Unix ms; last wins).
    ScheduledDelivery {
        msg_id: u64,
        queue: String,
        deliver_at_ms: u64,
    },
    /// A destination exists (`deleted = false`) or was removed. `kind` is the broker's code.
    Destination {
        name: String,
        kind: u8,
        deleted: bool,
    },
    /// A subscription exists or was removed (see [`SubscriptionRecord`]).
    Subscription(SubscriptionRecord),
    /// Duplicate detection: `producer` sent `seq`. Recovery keeps the last N per producer.
    DupId { producer: String, seq: u64 },
    /// Written by every writer first, in its own segment. See the module docs on fencing.
    EpochMarker { epoch: u64 },
    /// `op` is part of transaction `tx_id`: it takes effect only if a `TxCommit { tx_id }`
    /// follows. `op` must be `AddMessage`, `AddRef`, `AckRef`, `DeliveryCount`,
    /// `ScheduledDelivery` or `DupId`.
    Tx { tx_id: u64, op: Box<Record> },
    /// Two-phase commit: the transaction's ops are all written; it survives restarts undecided.
    TxPrepare { tx_id: u64 },
    /// The transaction's ops take effect.
    TxCommit { tx_id: u64 },
    /// The transaction's ops are discarded.
    TxRollback { tx_id: u64 },
}

fn str_len(s: &str) -> usize {
    4 + s.len()
}

fn opt_str_len(s: &Option<String>) -> usize {
    1 + s.as_deref().map_or(0, str_len)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl Record {
    /// The type byte of this record.
    pub fn type_code(&self) -> u8 {
        match self {
            Record::AddMessage { .. } => T_ADD_MESSAGE,
            Record::AddRef { .. } => T_ADD_REF,
            Record::AckRef { .. } => T_ACK_REF,
            Record::DeliveryCount { .. } => T_DELIVERY_COUNT,
            Record::ScheduledDelivery { .. } => T_SCHEDULED,
            Record::Destination { .. } => T_DESTINATION,
            Record::Subscription(_) => T_SUBSCRIPTION,
            Record::DupId { .. } => T_DUP_ID,
            Record::EpochMarker { .. } => T_EPOCH,
            Record::Tx { .. } => T_TX,
            Record::TxPrepare { .. } => T_TX_PREPARE,
            Record::TxCommit { .. } => T_TX_COMMIT,
            Record::TxRollback { .. } => T_TX_ROLLBACK,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::AddMessage { encoded, .. } => 8 + encoded.len(),
            Record::AddRef { queue, .. } | Record::AckRef { queue, .. } => 8 + str_len(queue),
            Record::DeliveryCount { queue, .. } => 8 + str_len(queue) + 4,
            Record::ScheduledDelivery { queue, .. } => 8 + str_len(queue) + 8,
            Record::Destination { name, .. } => str_len(name) + 2,
            Record::Subscription(s) => {
                str_len(&s.queue)
                    + str_len(&s.topic)
                    + opt_str_len(&s.client_id)
                    + str_len(&s.name)
                    + opt_str_len(&s.selector)
                    + 3
            }
            Record::DupId { producer, .. } => str_len(producer) + 8,
            Record::EpochMarker { .. }
            | Record::TxPrepare { .. }
            | Record::TxCommit { .. }
            | Record::TxRollback { .. } => 8,
            Record::Tx { op, .. } => 8 + 1 + op.payload_len(),
        }
    }

    /// Bytes this record takes in a batch, header included.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload_len()
    }

    /// Checks what the type system cannot: a `Tx` op must be a transactional record.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if let Record::Tx { op, .. } = self
            && !is_transactional(op.type_code())
        {
            return Err(DecodeError::NotTransactional(op.type_code()));
        }
        Ok(())
    }

    /// Appends the framed record to `out`. Lengths above `u32::MAX` are the caller's bug
    /// (appends are bounded far below that).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        put_u32(out, self.payload_len() as u32);
        out.push(self.type_code());
        self.encode_payload(out);
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::AddMessage { msg_id, encoded } => {
                put_u64(out, *msg_id);
                out.extend_from_slice(encoded);
            }
            Record::AddRef { msg_id, queue } | Record::AckRef { msg_id, queue } => {
                put_u64(out, *msg_id);
                put_str(out, queue);
            }
            Record::DeliveryCount {
                msg_id,
                queue,
                count,
            } => {
                put_u64(out, *msg_id);
                put_str(out, queue);
                put_u32(out, *count);
            }
            Record::ScheduledDelivery {
                msg_id,
                queue,
                deliver_at_ms,
            } => {
                put_u64(out, *msg_id);
                put_str(out, queue);
                put_u64(out, *deliver_at_ms);
            }
            Record::Destination {
                name,
                kind,
                deleted,
            } => {
                put_str(out, name);
                out.push(*kind);
                out.push(u8::from(*deleted));
            }
            Record::Subscription(s) => {
                put_str(out, &s.queue);
                put_str(out, &s.topic);
                put_opt_str(out, &s.client_id);
                put_str(out, &s.name);
                put_opt_str(out, &s.selector);
                out.push(u8::from(s.durable));
                out.push(u8::from(s.shared));
                out.push(u8::from(s.deleted));
            }
            Record::DupId { producer, seq } => {
                put_str(out, producer);
                put_u64(out, *seq);
            }
            Record::EpochMarker { epoch } => put_u64(out, *epoch),
            Record::TxPrepare { tx_id }
            | Record::TxCommit { tx_id }
            | Record::TxRollback { tx_id } => put_u64(out, *tx_id),
            Record::Tx { tx_id, op } => {
                put_u64(out, *tx_id);
                out.push(op.type_code());
                op.encode_payload(out);
            }
        }
    }

    /// Decodes one framed record from the start of `buf`; returns it and the bytes consumed.
    /// `AddMessage` bodies are zero-copy slices of `buf`.
    pub fn decode(buf: &Bytes) -> Result<(Record, usize), DecodeError> {
        let (view, used) = RecordView::decode(buf)?;
        Ok((view.to_record(buf), used))
    }
}

fn is_transactional(t: u8) -> bool {
    matches!(
        t,
        T_ADD_MESSAGE | T_ADD_REF | T_ACK_REF | T_DELIVERY_COUNT | T_SCHEDULED | T_DUP_ID
    )
}

/// A decoded record borrowing from the batch buffer: recovery decodes with this so that a
/// record costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordView<'a> {
    AddMessage {
        msg_id: u64,
        encoded: &'a [u8],
    },
    AddRef {
        msg_id: u64,
        queue: &'a str,
    },
    AckRef {
        msg_id: u64,
        queue: &'a str,
    },
    DeliveryCount {
        msg_id: u64,
        queue: &'a str,
        count: u32,
    },
    ScheduledDelivery {
        msg_id: u64,
        queue: &'a str,
        deliver_at_ms: u64,
    },
    Destination {
        name: &'a str,
        kind: u8,
        deleted: bool,
    },
    Subscription(SubscriptionRecord),
    DupId {
        producer: &'a str,
        seq: u64,
    },
    EpochMarker {
        epoch: u64,
    },
    Tx {
        tx_id: u64,
        op: Box<RecordView<'a>>,
    },
    TxPrepare {
        tx_id: u64,
    },
    TxCommit {
        tx_id: u64,
    },
    TxRollback {
        tx_id: u64,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(DecodeError::Truncated { needed: n - rest });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::BadBool(b)),
        }
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::BadUtf8)
    }
    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.str()?.to_owned())
        } else {
            None
        })
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

impl<'a> RecordView<'a> {
    /// Decodes one framed record from the start of `buf`.
    pub(crate) fn decode(buf: &'a [u8]) -> Result<(RecordView<'a>, usize), DecodeError> {
        if buf.len() < RECORD_HEADER_LEN {
            return Err(DecodeError::Truncated {
                needed: RECORD_HEADER_LEN - buf.len(),
            });
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
        let t = buf[4];
        let avail = buf.len() - RECORD_HEADER_LEN;
        if avail < len {
            return Err(DecodeError::Truncated {
                needed: len - avail,
            });
        }
        let payload = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        Ok((Self::decode_payload(t, payload)?, RECORD_HEADER_LEN + len))
    }

    fn decode_payload(t: u8, payload: &'a [u8]) -> Result<RecordView<'a>, DecodeError> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let view = match t {
            T_ADD_MESSAGE => RecordView::AddMessage {
                msg_id: r.u64()?,
                encoded: r.rest(),
            },
            T_ADD_REF => RecordView::AddRef {
                msg_id: r.u64()?,
                queue: r.str()?,
            },
            T_ACK_REF => RecordView::AckRef {
                msg_id: r.u64()?,
                queue: r.str()?,
            },
            T_DELIVERY_COUNT => RecordView::DeliveryCount {
                msg_id: r.u64()?,
                queue: r.str()?,
                count: r.u32()?,
            },
            T_SCHEDULED => RecordView::ScheduledDelivery {
                msg_id: r.u64()?,
                queue: r.str()?,
                deliver_at_ms: r.u64()?,
            },
            T_DESTINATION => RecordView::Destination {
                name: r.str()?,
                kind: r.u8()?,
                deleted: r.bool()?,
            },
            T_SUBSCRIPTION => RecordView::Subscription(SubscriptionRecord {
                queue: r.str()?.to_owned(),
                topic: r.str()?.to_owned(),
                client_id: r.opt_str()?,
                name: r.str()?.to_owned(),
                selector: r.opt_str()?,
                durable: r.bool()?,
                shared: r.bool()?,
                deleted: r.bool()?,
            }),
            T_DUP_ID => RecordView::DupId {
                producer: r.str()?,
                seq: r.u64()?,
            },
            T_EPOCH => RecordView::EpochMarker { epoch: r.u64()? },
            T_TX => {
                let tx_id = r.u64()?;
                let op_type = r.u8()?;
                if !is_transactional(op_type) {
                    // Unknown inner types are a newer format; known ones are a bad nesting.
                    return Err(if op_type > T_TX_ROLLBACK || op_type == 0 {
                        DecodeError::UnknownType(op_type)
                    } else {
                        DecodeError::NotTransactional(op_type)
                    });
                }
                let op = Self::decode_payload(op_type, r.rest())?;
                RecordView::Tx {
                    tx_id,
                    op: Box::new(op),
                }
            }
            T_TX_PREPARE => RecordView::TxPrepare { tx_id: r.u64()? },
            T_TX_COMMIT => RecordView::TxCommit { tx_id: r.u64()? },
            T_TX_ROLLBACK => RecordView::TxRollback { tx_id: r.u64()? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if r.pos != payload.len() {
            return Err(DecodeError::TrailingBytes {
                record_type: t,
                extra: payload.len() - r.pos,
            });
        }
        Ok(view)
    }

    /// Owned copy; `AddMessage` bodies become zero-copy slices of `src`, which must be the
    /// buffer this view was decoded from.
    pub(crate) fn to_record(&self, src: &Bytes) -> Record {
        match self {
            RecordView::AddMessage { msg_id, encoded } => Record::AddMessage {
                msg_id: *msg_id,
                encoded: src.slice_ref(encoded),
            },
            RecordView::AddRef { msg_id, queue } => Record::AddRef {
                msg_id: *msg_id,
                queue: (*queue).to_owned(),
            },
            RecordView::AckRef { msg_id, queue } => Record::AckRef {
                msg_id: *msg_id,
                queue: (*queue).to_owned(),
            },
            RecordView::DeliveryCount {
                msg_id,
                queue,
                count,
            } => Record::DeliveryCount {
                msg_id: *msg_id,
                queue: (*queue).to_owned(),
                count: *count,
            },
            RecordView::ScheduledDelivery {
                msg_id,
                queue,
                deliver_at_ms,
            } => Record::ScheduledDelivery {
                msg_id: *msg_id,
                queue: (*queue).to_owned(),
                deliver_at_ms: *deliver_at_ms,
            },
            RecordView::Destination {
                name,
                kind,
                deleted,
            } => Record::Destination {
                name: (*name).to_owned(),
                kind: *kind,
                deleted: *deleted,
            },
            RecordView::Subscription(s) => Record::Subscription(s.clone()),
            RecordView::DupId { producer, seq } => Record::DupId {
                producer: (*producer).to_owned(),
                seq: *seq,
            },
            RecordView::EpochMarker { epoch } => Record::EpochMarker { epoch: *epoch },
            RecordView::Tx { tx_id, op } => Record::Tx {
                tx_id: *tx_id,
                op: Box::new(op.to_record(src)),
            },
            RecordView::TxPrepare { tx_id } => Record::TxPrepare { tx_id: *tx_id },
            RecordView::TxCommit { tx_id } => Record::TxCommit { tx_id: *tx_id },
            RecordView::TxRollback { tx_id } => Record::TxRollback { tx_id: *tx_id },
        }
    }
}

impl Record {
    /// A borrowed view of this record (the writer feeds its own records to the same state
    /// machine recovery uses).
    pub(crate) fn view(&self) -> RecordView<'_> {
        match self {
            Record::AddMessage { msg_id, encoded } => RecordView::AddMessage {
                msg_id: *msg_id,
                encoded,
            },
            Record::AddRef { msg_id, queue } => RecordView::AddRef {
                msg_id: *msg_id,
                queue,
            },
            Record::AckRef { msg_id, queue } => RecordView::AckRef {
                msg_id: *msg_id,
                queue,
            },
            Record::DeliveryCount {
                msg_id,
                queue,
                count,
            } => RecordView::DeliveryCount {
                msg_id: *msg_id,
                queue,
                count: *count,
            },
            Record::ScheduledDelivery {
                msg_id,
                queue,
                deliver_at_ms,
            } => RecordView::ScheduledDelivery {
                msg_id: *msg_id,
                queue,
                deliver_at_ms: *deliver_at_ms,
            },
            Record::Destination {
                name,
                kind,
                deleted,
            } => RecordView::Destination {
                name,
                kind: *kind,
                deleted: *deleted,
            },
            Record::Subscription(s) => RecordView::Subscription(s.clone()),
            Record::DupId { producer, seq } => RecordView::DupId {
                producer,
                seq: *seq,
            },
            Record::EpochMarker { epoch } => RecordView::EpochMarker { epoch: *epoch },
            Record::Tx { tx_id, op } => RecordView::Tx {
                tx_id: *tx_id,
                op: Box::new(op.view()),
            },
            Record::TxPrepare { tx_id } => RecordView::TxPrepare { tx_id: *tx_id },
            Record::TxCommit { tx_id } => RecordView::TxCommit { tx_id: *tx_id },
            Record::TxRollback { tx_id } => RecordView::TxRollback { tx_id: *tx_id },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::AddMessage {
                msg_id: 7,
                encoded: Bytes::from_static(b"hello"),
            },
            Record::AddMessage {
                msg_id: 8,
                encoded: Bytes::new(),
            },
            Record::AddRef {
                msg_id: 7,
                queue: "orders".into(),
            },
            Record::AckRef {
                msg_id: 7,
                queue: "orders".into(),
            },
            Record::DeliveryCount {
                msg_id: 7,
                queue: "q".into(),
                count: 3,
            },
            Record::ScheduledDelivery {
                msg_id: 9,
                queue: "q".into(),
                deliver_at_ms: 1_700_000_000_000,
            },
            Record::Destination {
                name: "t.prices".into(),
                kind: 2,
                deleted: false,
            },
            Record::Subscription(SubscriptionRecord {
                queue: "sub-q".into(),
                topic: "t.prices".into(),
                client_id: Some("c1".into()),
                name: "s1".into(),
                selector: None,
                durable: true,
                shared: false,
                deleted: false,
            }),
            Record::Subscription(SubscriptionRecord {
                queue: "sub-q2".into(),
                topic: "t".into(),
                client_id: None,
                name: "s2".into(),
                selector: Some("price > 10".into()),
                durable: false,
                shared: true,
                deleted: true,
            }),
            Record::DupId {
                producer: "p-1".into(),
                seq: 42,
            },
            Record::EpochMarker { epoch: 5 },
            Record::Tx {
                tx_id: 11,
                op: Box::new(Record::AddMessage {
                    msg_id: 1,
                    encoded: Bytes::from_static(b"x"),
                }),
            },
            Record::Tx {
                tx_id: 11,
                op: Box::new(Record::AckRef {
                    msg_id: 1,
                    queue: "q".into(),
                }),
            },
            Record::TxPrepare { tx_id: 11 },
            Record::TxCommit { tx_id: 11 },
            Record::TxRollback { tx_id: 12 },
        ]
    }

    fn encode(r: &Record) -> Bytes {
        let mut v = Vec::new();
        r.encode(&mut v);
        assert_eq!(v.len(), r.encoded_len(), "encoded_len of {r:?}");
        Bytes::from(v)
    }

    #[test]
    fn round_trip_every_type() {
        for r in samples() {
            let b = encode(&r);
            let (back, used) = Record::decode(&b).unwrap();
            assert_eq!(back, r);
            assert_eq!(used, b.len());
            assert_eq!(RecordView::decode(&b).unwrap().0, r.view());
        }
    }

    #[test]
    fn exact_bytes_add_ref() {
        let b = encode(&Record::AddRef {
            msg_id: 0x0102,
            queue: "ab".into(),
        });
        assert_eq!(
            &b[..],
            &[
                14, 0, 0, 0,    // payload len
                0x02, // type
                0x02, 0x01, 0, 0, 0, 0, 0, 0, // msg_id
                2, 0, 0, 0, b'a', b'b', // queue
            ]
        );
    }

    #[test]
    fn exact_bytes_tx_op() {
        let b = encode(&Record::Tx {
            tx_id: 3,
            op: Box::new(Record::AddMessage {
                msg_id: 4,
                encoded: Bytes::from_static(b"z"),
            }),
        });
        assert_eq!(
            &b[..],
            &[
                18, 0, 0, 0, 0x10, // header
                3, 0, 0, 0, 0, 0, 0, 0,    // tx_id
                0x01, // op type
                4, 0, 0, 0, 0, 0, 0, 0, b'z', // op payload
            ]
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for r in samples() {
            let b = encode(&r);
            for cut in 0..b.len() {
                let short = b.slice(..cut);
                match Record::decode(&short) {
                    Err(DecodeError::Truncated { .. }) => {}
                    other => panic!("cut {cut} of {r:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_shortened_length_field_is_detected_as_garbage() {
        // The length says the payload ends early: fields run out (Truncated) rather than
        // reading past the payload into the next record.
        let b = encode(&Record::AddRef {
            msg_id: 1,
            queue: "abc".into(),
        });
        let mut v = b.to_vec();
        v[0] -= 1;
        assert!(Record::decode(&Bytes::from(v)).is_err());
    }

    #[test]
    fn unknown_type_is_a_clear_error() {
        let b = Bytes::from_static(&[0, 0, 0, 0, 0x7f]);
        assert_eq!(
            Record::decode(&b).unwrap_err(),
            DecodeError::UnknownType(0x7f)
        );
        let nested = Bytes::from_static(&[9, 0, 0, 0, 0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0x09]);
        assert_eq!(
            Record::decode(&nested).unwrap_err(),
            DecodeError::NotTransactional(0x09)
        );
    }

    #[test]
    fn trailing_bytes_and_bad_bool_are_errors() {
        let b = Bytes::from_static(&[9, 0, 0, 0, 0x09, 1, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        assert!(matches!(
            Record::decode(&b),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        let mut v = Vec::new();
        Record::Destination {
            name: "d".into(),
            kind: 1,
            deleted: true,
        }
        .encode(&mut v);
        *v.last_mut().unwrap() = 2;
        assert_eq!(
            Record::decode(&Bytes::from(v)).unwrap_err(),
            DecodeError::BadBool(2)
        );
    }

    #[test]
    fn validate_rejects_nested_non_tx_ops() {
        let bad = Record::Tx {
            tx_id: 1,
            op: Box::new(Record::TxCommit { tx_id: 1 }),
        };
        assert!(bad.validate().is_err());
        assert!(samples().iter().all(|r| r.validate().is_ok()));
    }
}
