use bytes::Bytes;
use prost::Message as _;

use super::{Destination, ModelError, PropertyValue, Value, validate_property_name};
use crate::wire;

/// JMSPriority when the producer sets none.
pub const DEFAULT_PRIORITY: u8 = 4;

/// JMSDeliveryMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeliveryMode {
    /// Journaled before the send is confirmed; survives restarts and failover.
    #[default]
    Persistent,
    /// Kept in memory only; may be lost on failover, never duplicated.
    NonPersistent,
}

/// A message body: the five JMS message types and the body-less `Message`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Body {
    /// `Message` (headers and properties only).
    #[default]
    Empty,
    /// `TextMessage`.
    Text(String),
    /// `BytesMessage`.
    Bytes(Bytes),
    /// `MapMessage`: names are unique; order is kept as set.
    Map(Vec<(String, Value)>),
    /// `StreamMessage`.
    Stream(Vec<Value>),
    /// `ObjectMessage`: a serialized object, opaque to tandem.
    Object(Bytes),
}

/// A JMS message: headers, properties, body, and the delivery facts a consumer sees.
///
/// Header fields a producer sets are public. Priority and properties go through checked setters so
/// a `Message` always satisfies the model's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// JMSMessageID: set by the producer at send (`ID:` followed by a unique string).
    pub message_id: Option<String>,
    /// JMSDestination: set at send.
    pub destination: Option<Destination>,
    /// JMSDeliveryMode.
    pub delivery_mode: DeliveryMode,
    priority: u8,
    /// JMSTimestamp, ms since the Unix epoch: set at send.
    pub timestamp: i64,
    /// JMSExpiration, ms since the Unix epoch; 0 = never.
    pub expiration: i64,
    /// JMSDeliveryTime, ms since the Unix epoch; 0 = deliverable at once.
    pub delivery_time: i64,
    /// JMSCorrelationID.
    pub correlation_id: Option<String>,
    /// JMSReplyTo.
    pub reply_to: Option<Destination>,
    /// JMSType.
    pub jms_type: Option<String>,
    /// JMSXGroupID.
    pub group_id: Option<String>,
    /// JMSXGroupSeq (0 = unset).
    pub group_seq: i32,
    /// JMSXUserID.
    pub user_id: Option<String>,
    properties: Vec<(String, PropertyValue)>,
    /// The body.
    pub body: Body,
    /// JMSRedelivered, as delivered.
    pub redelivered: bool,
    /// JMSXDeliveryCount, as delivered (1 on first delivery; 0 on a message not yet delivered).
    pub delivery_count: u32,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            message_id: None,
            destination: None,
            delivery_mode: DeliveryMode::Persistent,
            priority: DEFAULT_PRIORITY,
            timestamp: 0,
            expiration: 0,
            delivery_time: 0,
            correlation_id: None,
            reply_to: None,
            jms_type: None,
            group_id: None,
            group_seq: 0,
            user_id: None,
            properties: Vec::new(),
            body: Body::Empty,
            redelivered: false,
            delivery_count: 0,
        }
    }
}

impl Message {
    /// A message with the given body and default headers.
    pub fn new(body: Body) -> Message {
        Message {
            body,
            ..Message::default()
        }
    }

    /// A `TextMessage`.
    pub fn text(text: impl Into<String>) -> Message {
        Message::new(Body::Text(text.into()))
    }

    /// A `BytesMessage`.
    pub fn bytes(bytes: impl Into<Bytes>) -> Message {
        Message::new(Body::Bytes(bytes.into()))
    }

    /// JMSPriority (0-9).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Sets JMSPriority; values above 9 are refused.
    pub fn set_priority(&mut self, priority: u8) -> Result<(), ModelError> {
        if priority > 9 {
            return Err(ModelError::InvalidPriority(u32::from(priority)));
        }
        self.priority = priority;
        Ok(())
    }

    /// The body as text, for a `TextMessage`.
    pub fn text_body(&self) -> Option<&str> {
        match &self.body {
            Body::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The properties in the order they were set (JMSX header fields not included).
    pub fn properties(&self) -> impl Iterator<Item = (&str, &PropertyValue)> {
        self.properties.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A property by name. The JMSX fields kept as headers (JMSXGroupID, JMSXGroupSeq, JMSXUserID,
    /// JMSXDeliveryCount) read through here too, as JMS providers expose them.
    pub fn property(&self, name: &str) -> Option<PropertyValue> {
        match name {
            "JMSXGroupID" => self.group_id.clone().map(PropertyValue::String),
            "JMSXGroupSeq" => (self.group_seq != 0).then_some(PropertyValue::Int(self.group_seq)),
            "JMSXUserID" => self.user_id.clone().map(PropertyValue::String),
            "JMSXDeliveryCount" => {
                (self.delivery_count != 0).then_some(PropertyValue::Int(self.delivery_count as i32))
            }
            _ => self
                .properties
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
        }
    }

    /// Sets a property, replacing one of the same name. JMSXGroupID, JMSXGroupSeq and JMSXUserID set
    /// the header fields; JMSXDeliveryCount belongs to the broker and is refused.
    pub fn set_property(
        &mut self,
        name: &str,
        value: impl Into<PropertyValue>,
    ) -> Result<(), ModelError> {
        validate_property_name(name)?;
        let value = value.into();
        let wrong = |want: &str| ModelError::InvalidValue {
            field: name.to_string(),
            reason: format!("must be {want}"),
        };
        match name {
            "JMSXGroupID" => {
                let PropertyValue::String(s) = value else {
                    return Err(wrong("a String"));
                };
                self.group_id = Some(s);
            }
            "JMSXGroupSeq" => {
                let PropertyValue::Int(i) = value else {
                    return Err(wrong("an int"));
                };
                self.group_seq = i;
            }
            "JMSXUserID" => {
                let PropertyValue::String(s) = value else {
                    return Err(wrong("a String"));
                };
                self.user_id = Some(s);
            }
            "JMSXDeliveryCount" => {
                return Err(ModelError::InvalidPropertyName {
                    name: name.to_string(),
                    reason: "set by the broker",
                });
            }
            _ => match self.properties.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = value,
                None => self.properties.push((name.to_string(), value)),
            },
        }
        Ok(())
    }

    /// Builder form of [`Message::set_property`].
    pub fn with_property(
        mut self,
        name: &str,
        value: impl Into<PropertyValue>,
    ) -> Result<Message, ModelError> {
        self.set_property(name, value)?;
        Ok(self)
    }

    /// Removes every property (`clearProperties`).
    pub fn clear_properties(&mut self) {
        self.properties.clear();
    }

    /// The protobuf form. Delivery facts (redelivered, delivery count) are not part of it: they
    /// travel in the Deliver frame.
    pub fn to_wire(&self) -> wire::Message {
        use wire::message::Body as B;
        let body = match &self.body {
            Body::Empty => None,
            Body::Text(t) => Some(B::Text(t.clone())),
            Body::Bytes(b) => Some(B::Bytes(b.clone())),
            Body::Object(b) => Some(B::Object(b.clone())),
            Body::Map(m) => Some(B::Map(wire::MapBody {
                entries: m
                    .iter()
                    .map(|(k, v)| wire::MapEntry {
                        name: k.clone(),
                        value: Some(v.to_wire()),
                    })
                    .collect(),
            })),
            Body::Stream(s) => Some(B::Stream(wire::StreamBody {
                values: s.iter().map(Value::to_wire).collect(),
            })),
        };
        wire::Message {
            message_id: self.message_id.clone().unwrap_or_default(),
            destination: self.destination.as_ref().map(Destination::to_wire),
            persistent: self.delivery_mode == DeliveryMode::Persistent,
            priority: u32::from(self.priority),
            timestamp: self.timestamp,
            expiration: self.expiration,
            delivery_time: self.delivery_time,
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.as_ref().map(Destination::to_wire),
            r#type: self.jms_type.clone(),
            group_id: self.group_id.clone(),
            group_seq: self.group_seq,
            user_id: self.user_id.clone(),
            properties: self
                .properties
                .iter()
                .map(|(k, v)| wire::Property {
                    name: k.clone(),
                    value: Some(v.to_wire()),
                })
                .collect(),
            body,
        }
    }

    /// Encodes the protobuf form.
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_wire().encode_to_vec())
    }

    /// From the protobuf form, checking every rule of the model.
    pub fn from_wire(w: wire::Message) -> Result<Message, ModelError> {
        use wire::message::Body as B;
        let priority = u8::try_from(w.priority)
            .ok()
            .filter(|p| *p <= 9)
            .ok_or(ModelError::InvalidPriority(w.priority))?;
        let mut properties = Vec::with_capacity(w.properties.len());
        for p in &w.properties {
            validate_property_name(&p.name)?;
            if matches!(
                p.name.as_str(),
                "JMSXGroupID" | "JMSXGroupSeq" | "JMSXUserID" | "JMSXDeliveryCount"
            ) {
                // These travel in header fields (or, for the count, in the Deliver frame); as a
                // property they would be invisible to `property()` and to selectors.
                return Err(ModelError::InvalidPropertyName {
                    name: p.name.clone(),
                    reason: "a header field, not a property, on the wire",
                });
            }
            if properties
                .iter()
                .any(|(k, _): &(String, PropertyValue)| *k == p.name)
            {
                return Err(ModelError::InvalidPropertyName {
                    name: p.name.clone(),
                    reason: "set twice",
                });
            }
            let v = p.value.as_ref().ok_or_else(|| ModelError::InvalidValue {
                field: p.name.clone(),
                reason: "no value".into(),
            })?;
            properties.push((p.name.clone(), PropertyValue::from_wire(v, &p.name)?));
        }
        let body = match w.body {
            None => Body::Empty,
            Some(B::Text(t)) => Body::Text(t),
            Some(B::Bytes(b)) => Body::Bytes(b),
            Some(B::Object(b)) => Body::Object(b),
            Some(B::Map(m)) => {
                let mut entries: Vec<(String, Value)> = Vec::with_capacity(m.entries.len());
                for e in m.entries {
                    if e.name.is_empty() {
                        return Err(ModelError::InvalidValue {
                            field: "map body".into(),
                            reason: "an entry without a name".into(),
                        });
                    }
                    let v = e.value.as_ref().ok_or_else(|| ModelError::InvalidValue {
                        field: e.name.clone(),
                        reason: "no value".into(),
                    })?;
                    let v = Value::from_wire(v, &e.name)?;
                    match entries.iter_mut().find(|(k, _)| *k == e.name) {
                        Some(slot) => slot.1 = v,
                        None => entries.push((e.name, v)),
                    }
                }
                Body::Map(entries)
            }
            Some(B::Stream(s)) => Body::Stream(
                s.values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Value::from_wire(v, &format!("stream[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Message {
            message_id: non_empty(w.message_id),
            destination: w
                .destination
                .as_ref()
                .map(Destination::from_wire)
                .transpose()?,
            delivery_mode: if w.persistent {
                DeliveryMode::Persistent
            } else {
                DeliveryMode::NonPersistent
            },
            priority,
            timestamp: w.timestamp,
            expiration: w.expiration,
            delivery_time: w.delivery_time,
            correlation_id: w.correlation_id,
            reply_to: w
                .reply_to
                .as_ref()
                .map(Destination::from_wire)
                .transpose()?,
            jms_type: w.r#type,
            group_id: w.group_id,
            group_seq: w.group_seq,
            user_id: w.user_id,
            properties,
            body,
            redelivered: false,
            delivery_count: 0,
        })
    }

    /// Decodes and checks an encoded message.
    pub fn decode(bytes: Bytes) -> Result<Message, ModelError> {
        let w = wire::Message::decode(bytes).map_err(|e| ModelError::Malformed(e.to_string()))?;
        Message::from_wire(w)
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DestinationKind;

    fn full() -> Message {
        let mut m = Message::new(Body::Map(vec![
            ("a".into(), Value::Char(65)),
            ("b".into(), Value::Bytes(Bytes::from_static(b"\0\x01"))),
        ]));
        m.message_id = Some("ID:1".into());
        m.destination = Some(Destination::queue("q").unwrap());
        m.delivery_mode = DeliveryMode::NonPersistent;
        m.set_priority(9).unwrap();
        m.timestamp = 1;
        m.expiration = 2;
        m.delivery_time = 3;
        m.correlation_id = Some("c".into());
        m.reply_to = Some(Destination::new(DestinationKind::TempQueue, "tmp").unwrap());
        m.jms_type = Some("t".into());
        m.set_property("JMSXGroupID", "g").unwrap();
        m.set_property("JMSXGroupSeq", 3).unwrap();
        m.set_property("JMSXUserID", "u").unwrap();
        for (k, v) in [
            ("b", PropertyValue::Bool(true)),
            ("y", PropertyValue::Byte(-1)),
            ("s", PropertyValue::Short(-2)),
            ("i", PropertyValue::Int(3)),
            ("l", PropertyValue::Long(i64::MIN)),
            ("f", PropertyValue::Float(1.5)),
            ("d", PropertyValue::Double(-0.25)),
            ("str", PropertyValue::String("x".into())),
        ] {
            m.set_property(k, v).unwrap();
        }
        m
    }

    #[test]
    fn every_header_property_and_body_round_trips() {
        let bodies = [
            Body::Empty,
            Body::Text("héllo".into()),
            Body::Bytes(Bytes::from_static(b"\0\xff")),
            Body::Object(Bytes::from_static(b"\xac\xed")),
            Body::Stream(vec![
                Value::Bool(false),
                Value::Double(1e300),
                Value::String("s".into()),
            ]),
            full().body,
        ];
        for body in bodies {
            let mut m = full();
            m.body = body;
            assert_eq!(Message::decode(m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn defaults() {
        let m = Message::text("x");
        assert_eq!(m.priority(), DEFAULT_PRIORITY);
        assert_eq!(m.delivery_mode, DeliveryMode::Persistent);
        assert_eq!(Message::decode(m.encode()).unwrap(), m);
    }

    #[test]
    fn checked_setters() {
        let mut m = Message::text("x");
        assert!(m.set_priority(10).is_err());
        assert!(m.set_property("JMSXDeliveryCount", 2).is_err());
        assert!(m.set_property("JMSXGroupSeq", "x").is_err());
        assert!(m.set_property("NOT", 1).is_err());
        m.set_property("k", 1).unwrap();
        m.set_property("k", "two").unwrap();
        assert_eq!(m.properties().count(), 1);
        assert_eq!(m.property("k"), Some(PropertyValue::String("two".into())));
        m.delivery_count = 2;
        assert_eq!(m.property("JMSXDeliveryCount"), Some(PropertyValue::Int(2)));
    }

    #[test]
    fn wire_input_is_checked() {
        let mut w = full().to_wire();
        w.priority = 10;
        assert_eq!(
            Message::from_wire(w).unwrap_err(),
            ModelError::InvalidPriority(10)
        );
        let mut w = full().to_wire();
        w.properties[0].name = "1bad".into();
        assert!(matches!(
            Message::from_wire(w),
            Err(ModelError::InvalidPropertyName { .. })
        ));
        let mut w = full().to_wire();
        w.destination = Some(wire::Destination {
            kind: 0,
            name: "a b".into(),
        });
        assert!(matches!(
            Message::from_wire(w),
            Err(ModelError::InvalidDestination { .. })
        ));
        assert!(matches!(
            Message::decode(Bytes::from_static(&[0x0a, 0xff])),
            Err(ModelError::Malformed(_))
        ));
    }

    /// Found by the message_decode fuzz target: the wire may carry what the setters refuse.
    #[test]
    fn wire_properties_follow_the_setter_rules() {
        let mut w = full().to_wire();
        let dup = w.properties[0].clone();
        w.properties.push(dup);
        assert!(matches!(
            Message::from_wire(w),
            Err(ModelError::InvalidPropertyName { .. })
        ));
        for name in [
            "JMSXDeliveryCount",
            "JMSXGroupID",
            "JMSXGroupSeq",
            "JMSXUserID",
        ] {
            let mut w = full().to_wire();
            w.properties[0].name = name.into();
            let r = Message::from_wire(w);
            assert!(
                matches!(r, Err(ModelError::InvalidPropertyName { .. })),
                "{name}: {r:?}"
            );
        }
    }
}
