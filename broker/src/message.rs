//! The broker's view of a message: the producer's encoded bytes plus the headers routing needs.
//!
//! The bytes are kept as received and handed to every consumer and subscription as `Bytes` handles
//! (reference-counted, never copied). Only the headers are decoded on the send path
//! ([`wire::MessageHeaders`] skips properties and body); properties are decoded on first use by a
//! selector and cached.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message as _;
use tandem_protocol::ErrorCode;
use tandem_protocol::model::{Destination, PropertyValue};
use tandem_protocol::selector::{SelectorSource, SelectorValue};
use tandem_protocol::wire;

/// A message accepted by the broker, shared by every queue it is on.
#[derive(Debug)]
pub struct BrokerMessage {
    /// Broker-wide sequence number.
    pub id: u64,
    /// The encoded `wire::Message`, as the producer sent it.
    pub encoded: Bytes,
    /// Where it was sent.
    pub destination: Destination,
    /// JMSPriority, 0-9.
    pub priority: u8,
    /// JMSExpiration (ms since the epoch; 0 = never).
    pub expiration: i64,
    /// JMSDeliveryMode is PERSISTENT.
    pub persistent: bool,
    /// The connection it came from (for noLocal).
    pub origin_connection: u64,
    /// The decoded headers (selectors read them).
    pub headers: wire::MessageHeaders,
    properties: OnceLock<Vec<(String, PropertyValue)>>,
    /// Where the store keeps its body (set once durable, if the store can read it back).
    location: OnceLock<crate::journal::Location>,
}

/// Why a message was refused on the send path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The wire code.
    pub code: ErrorCode,
    /// The explanation for the client.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl BrokerMessage {
    /// Decodes the headers of an encoded message and checks what the broker relies on.
    pub fn parse(
        id: u64,
        encoded: Bytes,
        origin_connection: u64,
        max_size: usize,
    ) -> Result<BrokerMessage, Refusal> {
        if encoded.len() > max_size {
            return Err(Refusal::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds the maximum of {max_size}",
                    encoded.len()
                ),
            ));
        }
        BrokerMessage::decode(id, encoded, origin_connection)
    }

    /// A message read back from the journal: it passed [`BrokerMessage::parse`] when it was sent,
    /// so only decoding can fail (a journal written by a newer format).
    pub fn recovered(id: u64, encoded: Bytes) -> Result<BrokerMessage, Refusal> {
        BrokerMessage::decode(id, encoded, 0)
    }

    fn decode(id: u64, encoded: Bytes, origin_connection: u64) -> Result<BrokerMessage, Refusal> {
        let h = wire::MessageHeaders::decode(encoded.clone()).map_err(|e| {
            Refusal::new(
                ErrorCode::InvalidMessage,
                format!("message does not decode: {e}"),
            )
        })?;
        let destination = match &h.destination {
            None => {
                return Err(Refusal::new(
                    ErrorCode::InvalidDestination,
                    "no destination",
                ));
            }
            Some(d) => Destination::from_wire(d)
                .map_err(|e| Refusal::new(ErrorCode::InvalidDestination, e.to_string()))?,
        };
        if h.priority > 9 {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                format!("priority {} is outside 0-9", h.priority),
            ));
        }
        if let Some(r) = &h.reply_to {
            Destination::from_wire(r).map_err(|e| {
                Refusal::new(ErrorCode::InvalidDestination, format!("reply-to: {e}"))
            })?;
        }
        Ok(BrokerMessage {
            id,
            encoded,
            destination,
            priority: h.priority as u8,
            expiration: h.expiration,
            persistent: h.persistent,
            origin_connection,
            headers: h,
            properties: OnceLock::new(),
            location: OnceLock::new(),
        })
    }

    /// Where the store keeps the body, if it can read it back (paging).
    pub fn location(&self) -> Option<crate::journal::Location> {
        self.location.get().copied()
    }

    /// Records where the store keeps the body (once; later calls are ignored).
    pub fn set_location(&self, at: crate::journal::Location) {
        let _ = self.location.set(at);
    }

    /// Encoded size: what memory budgets count.
    pub fn size(&self) -> usize {
        self.encoded.len()
    }

    /// Expired at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expiration != 0 && self.expiration <= now_ms
    }

    /// The properties, decoded once on first use. Properties that break the model's rules are
    /// left out (a valid selector cannot name them).
    pub fn properties(&self) -> &[(String, PropertyValue)] {
        self.properties.get_or_init(|| {
            let Ok(w) = wire::Message::decode(self.encoded.clone()) else {
                return Vec::new();
            };
            w.properties
                .iter()
                .filter_map(|p| {
                    let v = PropertyValue::from_wire(p.value.as_ref()?, &p.name).ok()?;
                    Some((p.name.clone(), v))
                })
                .collect()
        })
    }
}

/// A message as a selector sees it: headers, JMSX fields and properties, with the delivery count
/// the next delivery would carry.
pub struct SelectorView<'a> {
    /// The message.
    pub msg: &'a BrokerMessage,
    /// JMSXDeliveryCount of the delivery being considered.
    pub delivery_count: u32,
}

impl SelectorSource for SelectorView<'_> {
    fn value(&self, identifier: &str) -> Option<SelectorValue<'_>> {
        use tandem_protocol::selector::headers as h;
        let m = self.msg;
        match identifier {
            h::JMS_DELIVERY_MODE => Some(SelectorValue::Str(Cow::Borrowed(if m.persistent {
                h::PERSISTENT
            } else {
                h::NON_PERSISTENT
            }))),
            h::JMS_PRIORITY => Some(SelectorValue::Long(i64::from(m.priority))),
            h::JMS_MESSAGE_ID => (!m.headers.message_id.is_empty()).then_some(SelectorValue::Str(
                Cow::Borrowed(m.headers.message_id.as_str()),
            )),
            h::JMS_TIMESTAMP => Some(SelectorValue::Long(m.headers.timestamp)),
            h::JMS_CORRELATION_ID => s(&m.headers.correlation_id),
            h::JMS_TYPE => s(&m.headers.r#type),
            h::JMS_EXPIRATION => Some(SelectorValue::Long(m.expiration)),
            h::JMS_DELIVERY_TIME => Some(SelectorValue::Long(m.headers.delivery_time)),
            h::JMSX_DELIVERY_COUNT => Some(SelectorValue::Long(i64::from(self.delivery_count))),
            h::JMSX_GROUP_ID => s(&m.headers.group_id),
            h::JMSX_GROUP_SEQ => (m.headers.group_seq != 0)
                .then_some(SelectorValue::Long(i64::from(m.headers.group_seq))),
            h::JMSX_USER_ID => s(&m.headers.user_id),
            name => m
                .properties()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| match v {
                    PropertyValue::Bool(b) => SelectorValue::Bool(*b),
                    PropertyValue::Byte(x) => SelectorValue::Long(i64::from(*x)),
                    PropertyValue::Short(x) => SelectorValue::Long(i64::from(*x)),
                    PropertyValue::Int(x) => SelectorValue::Long(i64::from(*x)),
                    PropertyValue::Long(x) => SelectorValue::Long(*x),
                    PropertyValue::Float(x) => SelectorValue::Double(f64::from(*x)),
                    PropertyValue::Double(x) => SelectorValue::Double(*x),
                    PropertyValue::String(x) => SelectorValue::Str(Cow::Borrowed(x.as_str())),
                }),
        }
    }
}

fn s(v: &Option<String>) -> Option<SelectorValue<'_>> {
    v.as_deref().map(|s| SelectorValue::Str(Cow::Borrowed(s)))
}

/// Milliseconds since the Unix epoch: JMS timestamps are wall-clock by definition.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
