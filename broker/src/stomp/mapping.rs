//! Pure STOMP ⇄ JMS translation: destinations, SEND frames to [`Message`]s, delivered messages to
//! MESSAGE frames, and the header ⇄ property name rule. No I/O, no clock (time is an argument).
//!
//! The full table lives in `docs/STOMP.md`; the rules in short:
//!
//! - Destinations are `/queue/N`, `/topic/N`, `/temp-queue/N`, `/temp-topic/N`; `N` follows the
//!   model's naming rules. Anything else is refused, naming the accepted prefixes.
//! - SEND headers `persistent`, `priority`, `expires`, `correlation-id`, `reply-to`, `type`,
//!   `message-id`, `JMSXGroupID` and `JMSXGroupSeq` set JMS header fields. STOMP messages are
//!   non-persistent unless `persistent:true` (ActiveMQ's convention, the opposite of JMS).
//! - Every other header becomes a String property. A header whose name is a valid JMS property
//!   name keeps it; any other name (`custom-header`, `1st`, `NULL`, `JMSFoo`) is stored as
//!   `JMS_stomp_` followed by the name with each character that is not a letter, digit or `_`
//!   written as `$XX` per UTF-8 byte (`custom-header` → `JMS_stomp_custom$2Dheader`). The JMS
//!   spec reserves `JMS_<vendor>_` names for providers, so this never collides with application
//!   names, and MESSAGE frames undo it: a STOMP peer gets its header back under its own name.
//! - Body: a frame with `content-length` and no UTF-8 text `content-type` becomes a BytesMessage;
//!   anything else a TextMessage, whose body must be UTF-8. A `content-type` other than the one
//!   the body type implies is kept (as the escaped property) and given back on MESSAGE.

use std::borrow::Cow;

use bytes::Bytes;
use tandem_protocol::model::{
    Body, DeliveryMode, Destination, DestinationKind, Message, ModelError, PropertyValue,
    validate_property_name,
};
use tandem_protocol::stomp::{Command, StompFrame};
use tandem_protocol::wire;

/// The prefix of escaped header names in the property namespace (see the module doc).
pub(crate) const ESCAPE_PREFIX: &str = "JMS_stomp_";

/// Where a SEND frame's non-default `content-type` is kept (the escaped form of the name).
pub(crate) const CONTENT_TYPE_PROPERTY: &str = "JMS_stomp_content$2Dtype";

/// What a TextMessage's MESSAGE frame says when the producer gave no content type.
pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain;charset=utf-8";
/// What a BytesMessage's MESSAGE frame says when the producer gave no content type.
pub(crate) const BYTES_CONTENT_TYPE: &str = "application/octet-stream";

const DESTINATION_PREFIXES: [(&str, DestinationKind); 4] = [
    ("/queue/", DestinationKind::Queue),
    ("/topic/", DestinationKind::Topic),
    ("/temp-queue/", DestinationKind::TempQueue),
    ("/temp-topic/", DestinationKind::TempTopic),
];

const ACCEPTED_DESTINATIONS: &str =
    "expected /queue/NAME, /topic/NAME, /temp-queue/NAME or /temp-topic/NAME";

/// Headers the mapping owns on SEND or MESSAGE: they never become properties, and a property
/// of the same name travels escaped.
const RESERVED_HEADERS: [&str; 21] = [
    "destination",
    "content-length",
    "content-type",
    "receipt",
    "transaction",
    "persistent",
    "priority",
    "expires",
    "correlation-id",
    "reply-to",
    "type",
    "message-id",
    "subscription",
    "ack",
    "redelivered",
    "timestamp",
    "JMSXGroupID",
    "JMSXGroupSeq",
    "JMSXUserID",
    "JMSXDeliveryCount",
    "transformation-error",
];

/// Longest piece of a peer's value echoed in an error.
const ECHO_MAX: usize = 64;

/// Why a STOMP frame cannot be mapped onto the JMS model. Sent to the peer as an ERROR frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum MapError {
    #[error("{command} frames need a {header:?} header")]
    MissingHeader {
        command: Command,
        header: &'static str,
    },
    #[error("invalid {header:?} header {value:?}: {reason}")]
    InvalidHeader {
        header: String,
        value: String,
        reason: String,
    },
    #[error("invalid destination {value:?}: {reason}")]
    InvalidDestination { value: String, reason: String },
    #[error(
        "the body is not valid UTF-8 (a TextMessage); send a content-length and no text content-type for a BytesMessage"
    )]
    InvalidUtf8Body,
}

fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}

fn invalid(header: &str, value: &str, reason: impl Into<String>) -> MapError {
    MapError::InvalidHeader {
        header: header.to_string(),
        value: echo(value),
        reason: reason.into(),
    }
}

/// A STOMP destination header as a JMS destination.
pub(crate) fn parse_destination(value: &str) -> Result<Destination, MapError> {
    for (prefix, kind) in DESTINATION_PREFIXES {
        if let Some(name) = value.strip_prefix(prefix) {
            return Destination::new(kind, name).map_err(|e| MapError::InvalidDestination {
                value: echo(value),
                reason: match e {
                    ModelError::InvalidDestination { reason, .. } => reason.to_string(),
                    other => other.to_string(),
                },
            });
        }
    }
    Err(MapError::InvalidDestination {
        value: echo(value),
        reason: ACCEPTED_DESTINATIONS.into(),
    })
}

/// A JMS destination as a STOMP destination header.
pub(crate) fn format_destination(d: &Destination) -> String {
    format!("/{}/{}", d.kind().scheme(), d.name())
}

fn format_wire_destination(d: &wire::Destination) -> Option<String> {
    Destination::from_wire(d)
        .ok()
        .map(|d| format_destination(&d))
}

fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name)
}

/// `$XX` for every UTF-8 byte of every character that is not a letter, digit or `_`.
fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("${b:02X}"));
            }
        }
    }
    out
}

/// The inverse of [`escape_name`]; `None` if `s` is not something it produced.
fn unescape_name(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The JMS property name a non-reserved STOMP header is stored under.
pub(crate) fn property_name_for_header(header: &str) -> Cow<'_, str> {
    // A header that came out of `header_name_for_property` for a colliding property name goes
    // back to that name, so native → STOMP → native keeps it.
    if let Some(rest) = header.strip_prefix(ESCAPE_PREFIX)
        && let Some(original) = unescape_name(rest)
        && is_reserved(&original)
        && validate_property_name(&original).is_ok()
    {
        return Cow::Owned(original);
    }
    if validate_property_name(header).is_ok() {
        Cow::Borrowed(header)
    } else {
        Cow::Owned(format!("{ESCAPE_PREFIX}{}", escape_name(header)))
    }
}

/// The STOMP header name a JMS property is written under on MESSAGE frames.
pub(crate) fn header_name_for_property(property: &str) -> Cow<'_, str> {
    if let Some(rest) = property.strip_prefix(ESCAPE_PREFIX)
        && let Some(original) = unescape_name(rest)
        && !original.is_empty()
        && !is_reserved(&original)
    {
        return Cow::Owned(original);
    }
    if is_reserved(property) {
        Cow::Owned(format!("{ESCAPE_PREFIX}{}", escape_name(property)))
    } else {
        Cow::Borrowed(property)
    }
}

/// Whether a content type denotes UTF-8 text: `text/*`, JSON or XML, with no charset or a UTF-8
/// (or ASCII) one.
pub(crate) fn is_utf8_text(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let textual = media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/json" | "application/xml" | "application/javascript"
        )
        || media.ends_with("+json")
        || media.ends_with("+xml");
    if !textual {
        return false;
    }
    parts.all(|p| match p.trim().split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"').to_ascii_lowercase();
            matches!(v.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii")
        }
        _ => true,
    })
}

fn is_default_content_type(body: &Body, content_type: &str) -> bool {
    let norm: String = content_type
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    match body {
        Body::Text(_) => matches!(
            norm.as_str(),
            "text/plain" | "text/plain;charset=utf-8" | "text/plain;charset=utf8"
        ),
        Body::Bytes(_) => norm == BYTES_CONTENT_TYPE,
        _ => false,
    }
}

/// Builds the JMS message a SEND frame stands for. `generated_id` is used when the frame has no
/// `message-id`; `now_ms` becomes JMSTimestamp.
pub(crate) fn message_from_send(
    frame: &StompFrame,
    now_ms: i64,
    generated_id: impl FnOnce() -> String,
) -> Result<Message, MapError> {
    let dest = frame.header("destination").ok_or(MapError::MissingHeader {
        command: Command::Send,
        header: "destination",
    })?;
    let destination = parse_destination(dest)?;

    let content_type = frame.header("content-type");
    let bytes_body =
        frame.header("content-length").is_some() && !content_type.is_some_and(is_utf8_text);
    let body = if bytes_body {
        Body::Bytes(frame.body.clone())
    } else {
        Body::Text(
            std::str::from_utf8(&frame.body)
                .map_err(|_| MapError::InvalidUtf8Body)?
                .to_string(),
        )
    };

    let mut m = Message::new(body);
    m.destination = Some(destination);
    m.delivery_mode = DeliveryMode::NonPersistent;
    m.timestamp = now_ms;
    let mut seen: Vec<&str> = Vec::with_capacity(frame.headers.len());
    for (name, value) in &frame.headers {
        // Of repeated headers only the first counts (STOMP 1.2).
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let value = value.as_str();
        match name.as_str() {
            "destination" | "content-length" | "receipt" | "transaction" => {}
            // Delivery facts and provider-set fields: a client cannot set them.
            "subscription"
            | "ack"
            | "redelivered"
            | "timestamp"
            | "JMSXDeliveryCount"
            | "JMSXUserID"
            | "transformation-error" => {}
            "content-type" => {
                if !is_default_content_type(&m.body, value) {
                    set_string(&mut m, CONTENT_TYPE_PROPERTY, value)?;
                }
            }
            "persistent" => {
                m.delivery_mode = if value.eq_ignore_ascii_case("true") {
                    DeliveryMode::Persistent
                } else if value.eq_ignore_ascii_case("false") {
                    DeliveryMode::NonPersistent
                } else {
                    return Err(invalid(name, value, "expected true or false"));
                };
            }
            "priority" => {
                let p = value
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 9)
                    .ok_or_else(|| invalid(name, value, "expected an integer from 0 to 9"))?;
                m.set_priority(p).expect("checked range");
            }
            "expires" => {
                m.expiration = value
                    .parse::<i64>()
                    .ok()
                    .filter(|e| *e >= 0)
                    .ok_or_else(|| {
                        invalid(
                            name,
                            value,
                            "expected milliseconds since the Unix epoch, 0 for never",
                        )
                    })?;
            }
            "correlation-id" => m.correlation_id = Some(value.to_string()),
            "type" => m.jms_type = Some(value.to_string()),
            "message-id" => {
                if !value.is_empty() {
                    m.message_id = Some(value.to_string());
                }
            }
            "reply-to" => {
                m.reply_to = Some(parse_destination(value).map_err(|e| match e {
                    MapError::InvalidDestination { reason, .. } => invalid(name, value, reason),
                    other => other,
                })?);
            }
            "JMSXGroupID" => m.group_id = Some(value.to_string()),
            "JMSXGroupSeq" => {
                m.group_seq = value
                    .parse::<i32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid(name, value, "expected a positive int"))?;
            }
            other => set_string(&mut m, &property_name_for_header(other), value)?,
        }
    }
    if m.message_id.is_none() {
        m.message_id = Some(generated_id());
    }
    Ok(m)
}

fn set_string(m: &mut Message, property: &str, value: &str) -> Result<(), MapError> {
    m.set_property(property, value)
        .map_err(|e| invalid(property, value, e.to_string()))
}

/// The per-delivery facts a MESSAGE frame carries besides the message itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery<'a> {
    /// The STOMP subscription id.
    pub subscription: &'a str,
    /// The value of the `ack` header: the native delivery id.
    pub ack: u64,
    pub redelivered: bool,
    pub delivery_count: u32,
}

/// The MESSAGE frame for a delivered message (`msg` is the producer's encoded message, read
/// without the model's validation so that a message any native client could send is shown).
///
/// `escaping` is the session's header escaping: without it (STOMP 1.0) a value holding CR or LF
/// cannot be written and its header is left out; a NUL cannot be written in any version. Map,
/// stream and object bodies have no STOMP form: the frame then has no body and a
/// `transformation-error` header says why (ActiveMQ uses the same header name).
pub(crate) fn message_frame(msg: &wire::Message, d: Delivery<'_>, escaping: bool) -> StompFrame {
    use wire::message::Body as B;
    let mut f = StompFrame::new(Command::Message);
    let push = |f: &mut StompFrame, name: Cow<'_, str>, value: String| {
        let writable = !value.contains('\0') && (escaping || !value.contains(['\r', '\n']));
        let name_ok = !name.contains('\0') && (escaping || !name.contains(['\r', '\n', ':']));
        if writable && name_ok {
            f.headers.push((name.into_owned(), value));
        } else {
            tracing::debug!(header = %name, "header left out of a MESSAGE frame: not writable");
        }
    };
    push(&mut f, "subscription".into(), d.subscription.to_string());
    let message_id = if msg.message_id.is_empty() {
        format!("ID:tandem-delivery-{}", d.ack)
    } else {
        msg.message_id.clone()
    };
    push(&mut f, "message-id".into(), message_id);
    if let Some(dest) = msg.destination.as_ref().and_then(format_wire_destination) {
        push(&mut f, "destination".into(), dest);
    }
    push(&mut f, "ack".into(), d.ack.to_string());
    push(&mut f, "redelivered".into(), d.redelivered.to_string());
    push(&mut f, "persistent".into(), msg.persistent.to_string());
    push(&mut f, "priority".into(), msg.priority.to_string());
    push(&mut f, "expires".into(), msg.expiration.to_string());
    push(&mut f, "timestamp".into(), msg.timestamp.to_string());
    if let Some(c) = &msg.correlation_id {
        push(&mut f, "correlation-id".into(), c.clone());
    }
    if let Some(r) = msg.reply_to.as_ref().and_then(format_wire_destination) {
        push(&mut f, "reply-to".into(), r);
    }
    if let Some(t) = &msg.r#type {
        push(&mut f, "type".into(), t.clone());
    }
    if let Some(g) = &msg.group_id {
        push(&mut f, "JMSXGroupID".into(), g.clone());
    }
    if msg.group_seq != 0 {
        push(&mut f, "JMSXGroupSeq".into(), msg.group_seq.to_string());
    }
    if let Some(u) = &msg.user_id {
        push(&mut f, "JMSXUserID".into(), u.clone());
    }
    push(
        &mut f,
        "JMSXDeliveryCount".into(),
        d.delivery_count.to_string(),
    );

    let mut content_type = None;
    for p in &msg.properties {
        let Some(value) = p.value.as_ref().map(wire_value_string) else {
            continue;
        };
        if p.name == CONTENT_TYPE_PROPERTY {
            content_type = Some(value);
            continue;
        }
        let header = header_name_for_property(&p.name);
        if f.headers.iter().any(|(n, _)| *n == header) {
            continue;
        }
        push(&mut f, header, value);
    }

    let (body, default_type, problem) = match &msg.body {
        None => (Bytes::new(), None, None),
        Some(B::Text(t)) => (Bytes::from(t.clone()), Some(TEXT_CONTENT_TYPE), None),
        Some(B::Bytes(b)) => (b.clone(), Some(BYTES_CONTENT_TYPE), None),
        Some(B::Map(_)) => (Bytes::new(), None, Some("MapMessage")),
        Some(B::Stream(_)) => (Bytes::new(), None, Some("StreamMessage")),
        Some(B::Object(_)) => (Bytes::new(), None, Some("ObjectMessage")),
    };
    if let Some(kind) = problem {
        push(
            &mut f,
            "transformation-error".into(),
            format!("a {kind} body has no STOMP form; the frame carries headers only"),
        );
    }
    if let Some(ct) = content_type.or(default_type.map(str::to_string)) {
        push(&mut f, "content-type".into(), ct);
    }
    if matches!(&msg.body, Some(B::Bytes(_))) {
        // Always say how long a bytes body is, even when empty: STOMP peers tell bytes from
        // text by this header (ActiveMQ's convention).
        push(&mut f, "content-length".into(), body.len().to_string());
    }
    f.body = body;
    f
}

/// A property value as header text (`getStringProperty`'s conversion).
fn wire_value_string(v: &wire::Value) -> String {
    use wire::value::Kind;
    match PropertyValue::from_wire(v, "") {
        Ok(p) => p.to_string_value(),
        Err(_) => match &v.kind {
            Some(Kind::Char(c)) => char::from_u32(*c).map(String::from).unwrap_or_default(),
            Some(Kind::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_protocol::model::DEFAULT_PRIORITY;

    fn send(headers: &[(&str, &str)], body: &'static [u8]) -> StompFrame {
        let mut f = StompFrame::new(Command::Send).with_body(Bytes::from_static(body));
        for (n, v) in headers {
            f.headers.push((n.to_string(), v.to_string()));
        }
        f
    }

    fn delivery() -> Delivery<'static> {
        Delivery {
            subscription: "s1",
            ack: 7,
            redelivered: true,
            delivery_count: 2,
        }
    }

    #[test]
    fn destinations_map_both_ways() {
        for (s, kind) in [
            ("/queue/a.b", DestinationKind::Queue),
            ("/topic/t", DestinationKind::Topic),
            ("/temp-queue/x", DestinationKind::TempQueue),
            ("/temp-topic/y", DestinationKind::TempTopic),
        ] {
            let d = parse_destination(s).unwrap();
            assert_eq!(d.kind(), kind);
            assert_eq!(format_destination(&d), s);
        }
        for bad in [
            "orders",
            "/queues/x",
            "queue/x",
            "/queue/",
            "/queue/a/b",
            "",
        ] {
            let e = parse_destination(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            parse_destination("x")
                .unwrap_err()
                .to_string()
                .contains("/queue/NAME, /topic/NAME, /temp-queue/NAME or /temp-topic/NAME")
        );
    }

    #[test]
    fn header_names_escape_reversibly() {
        for (header, property) in [
            ("plain", "plain"),
            ("custom-header", "JMS_stomp_custom$2Dheader"),
            ("1st", "JMS_stomp_1st"),
            ("NULL", "JMS_stomp_NULL"),
            ("JMSFoo", "JMS_stomp_JMSFoo"),
            ("a$b", "a$b"),
            ("x.y", "JMS_stomp_x$2Ey"),
            ("€uro", "JMS_stomp_$E2$82$ACuro"),
            ("Größe", "Größe"),
        ] {
            assert_eq!(property_name_for_header(header), property, "{header}");
            validate_property_name(property).unwrap();
            assert_eq!(header_name_for_property(property), header, "{property}");
        }
        // A native property named like a header the mapping owns travels escaped, and comes back.
        assert_eq!(header_name_for_property("priority"), "JMS_stomp_priority");
        assert_eq!(property_name_for_header("JMS_stomp_priority"), "priority");
        // Escape-looking names that do not unescape stay as they are.
        assert_eq!(header_name_for_property("JMS_stomp_$ZZ"), "JMS_stomp_$ZZ");
        assert_eq!(unescape_name("$4"), None);
        assert_eq!(unescape_name("$FF"), None, "not UTF-8");
    }

    #[test]
    fn text_content_types() {
        for t in [
            "text/plain",
            "text/html; charset=UTF-8",
            "application/json",
            "application/vnd.x+json;charset=\"utf-8\"",
            "TEXT/XML",
        ] {
            assert!(is_utf8_text(t), "{t}");
        }
        for t in [
            "application/octet-stream",
            "image/png",
            "text/plain;charset=iso-8859-1",
            "",
        ] {
            assert!(!is_utf8_text(t), "{t}");
        }
    }

    #[test]
    fn send_headers_become_jms_headers_and_properties() {
        let f = send(
            &[
                ("destination", "/queue/orders"),
                ("persistent", "TRUE"),
                ("priority", "7"),
                ("expires", "1234"),
                ("correlation-id", "c-1"),
                ("reply-to", "/temp-queue/replies"),
                ("type", "order"),
                ("message-id", "ID:client-1"),
                ("JMSXGroupID", "g"),
                ("JMSXGroupSeq", "3"),
                ("custom-header", "v1"),
                ("custom-header", "ignored repeat"),
                ("region", "eu"),
                ("receipt", "r1"),
                ("redelivered", "true"),
                ("timestamp", "1"),
            ],
            b"hello",
        );
        let m = message_from_send(&f, 99, || unreachable!()).unwrap();
        assert_eq!(m.destination, Some(Destination::queue("orders").unwrap()));
        assert_eq!(m.delivery_mode, DeliveryMode::Persistent);
        assert_eq!(m.priority(), 7);
        assert_eq!(m.expiration, 1234);
        assert_eq!(m.timestamp, 99);
        assert_eq!(m.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(
            m.reply_to.as_ref().map(format_destination).as_deref(),
            Some("/temp-queue/replies")
        );
        assert_eq!(m.jms_type.as_deref(), Some("order"));
        assert_eq!(m.message_id.as_deref(), Some("ID:client-1"));
        assert_eq!(m.group_id.as_deref(), Some("g"));
        assert_eq!(m.group_seq, 3);
        assert_eq!(m.text_body(), Some("hello"));
        let props: Vec<_> = m
            .properties()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(
            props,
            vec![
                (
                    "JMS_stomp_custom$2Dheader".to_string(),
                    PropertyValue::String("v1".into())
                ),
                ("region".to_string(), PropertyValue::String("eu".into())),
            ]
        );
        // The model accepts what we built.
        Message::decode(m.encode()).unwrap();
    }

    #[test]
    fn defaults_for_a_bare_send() {
        let m = message_from_send(&send(&[("destination", "/topic/t")], b""), 5, || {
            "ID:gen".into()
        })
        .unwrap();
        assert_eq!(m.delivery_mode, DeliveryMode::NonPersistent);
        assert_eq!(m.priority(), DEFAULT_PRIORITY);
        assert_eq!(m.message_id.as_deref(), Some("ID:gen"));
        assert_eq!(m.text_body(), Some(""));
        assert_eq!(m.expiration, 0);
    }

    #[test]
    fn body_type_follows_content_length_and_type() {
        let dest = ("destination", "/queue/q");
        let m = |h: &[(&str, &str)], body| message_from_send(&send(h, body), 0, String::new);
        // content-length, no content-type: bytes (NULs and invalid UTF-8 survive).
        let b = m(&[dest, ("content-length", "3")], b"\0\xff\x01").unwrap();
        assert_eq!(b.body, Body::Bytes(Bytes::from_static(b"\0\xff\x01")));
        assert_eq!(b.properties().count(), 0);
        // content-length with a text type: text.
        let t = m(
            &[
                dest,
                ("content-length", "2"),
                ("content-type", "text/plain"),
            ],
            b"hi",
        )
        .unwrap();
        assert_eq!(t.text_body(), Some("hi"));
        assert_eq!(t.properties().count(), 0, "default type is not stored");
        // No content-length: text, UTF-8 required.
        assert_eq!(
            m(&[dest], b"caf\xc3\xa9").unwrap().text_body(),
            Some("café")
        );
        assert_eq!(m(&[dest], b"\xff").unwrap_err(), MapError::InvalidUtf8Body);
        // A non-default content type is kept.
        let j = m(
            &[
                dest,
                ("content-length", "2"),
                ("content-type", "application/json"),
            ],
            b"{}",
        )
        .unwrap();
        assert_eq!(j.text_body(), Some("{}"));
        assert_eq!(
            j.property("JMS_stomp_content$2Dtype"),
            Some(PropertyValue::String("application/json".into()))
        );
        // Text in another charset stays bytes, with its type.
        let l = m(
            &[
                dest,
                ("content-length", "1"),
                ("content-type", "text/plain;charset=latin1"),
            ],
            b"\xe9",
        )
        .unwrap();
        assert_eq!(l.body, Body::Bytes(Bytes::from_static(b"\xe9")));
    }

    #[test]
    fn bad_headers_are_named() {
        let dest = ("destination", "/queue/q");
        for (h, v) in [
            ("persistent", "yes"),
            ("priority", "10"),
            ("priority", "-1"),
            ("expires", "soon"),
            ("expires", "-5"),
            ("reply-to", "nowhere"),
            ("JMSXGroupSeq", "0"),
        ] {
            let e = message_from_send(&send(&[dest, (h, v)], b""), 0, String::new).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(h) && text.contains(v), "{h}={v}: {text}");
        }
        assert_eq!(
            message_from_send(&send(&[], b""), 0, String::new).unwrap_err(),
            MapError::MissingHeader {
                command: Command::Send,
                header: "destination"
            }
        );
    }

    #[test]
    fn message_frames_carry_headers_properties_and_body() {
        let mut m = Message::text("hello");
        m.destination = Some(Destination::queue("orders").unwrap());
        m.message_id = Some("ID:1".into());
        m.correlation_id = Some("c".into());
        m.reply_to = Some(Destination::topic("r").unwrap());
        m.jms_type = Some("t".into());
        m.set_priority(6).unwrap();
        m.expiration = 10;
        m.timestamp = 9;
        m.set_property("JMSXGroupID", "g").unwrap();
        m.set_property("n", 5i64).unwrap();
        m.set_property("JMS_stomp_custom$2Dheader", "v").unwrap();
        m.set_property("priority", "clash").unwrap();
        let f = message_frame(&m.to_wire(), delivery(), true);
        let h = |n: &str| f.header(n).map(str::to_string);
        assert_eq!(h("subscription").as_deref(), Some("s1"));
        assert_eq!(h("message-id").as_deref(), Some("ID:1"));
        assert_eq!(h("destination").as_deref(), Some("/queue/orders"));
        assert_eq!(h("ack").as_deref(), Some("7"));
        assert_eq!(h("redelivered").as_deref(), Some("true"));
        assert_eq!(h("persistent").as_deref(), Some("true"));
        assert_eq!(h("priority").as_deref(), Some("6"));
        assert_eq!(h("expires").as_deref(), Some("10"));
        assert_eq!(h("timestamp").as_deref(), Some("9"));
        assert_eq!(h("correlation-id").as_deref(), Some("c"));
        assert_eq!(h("reply-to").as_deref(), Some("/topic/r"));
        assert_eq!(h("type").as_deref(), Some("t"));
        assert_eq!(h("JMSXGroupID").as_deref(), Some("g"));
        assert_eq!(h("JMSXDeliveryCount").as_deref(), Some("2"));
        assert_eq!(h("n").as_deref(), Some("5"));
        assert_eq!(h("custom-header").as_deref(), Some("v"));
        assert_eq!(h("JMS_stomp_priority").as_deref(), Some("clash"));
        assert_eq!(h("content-type").as_deref(), Some(TEXT_CONTENT_TYPE));
        assert_eq!(&f.body[..], b"hello");
    }

    #[test]
    fn send_then_message_round_trips_headers() {
        let f = send(
            &[
                ("destination", "/topic/t"),
                ("content-length", "2"),
                ("content-type", "application/json"),
                ("custom-header", "v"),
                ("x", "1"),
            ],
            b"{}",
        );
        let m = message_from_send(&f, 0, || "ID:g".into()).unwrap();
        let out = message_frame(&m.to_wire(), delivery(), true);
        assert_eq!(out.header("content-type"), Some("application/json"));
        assert_eq!(out.header("custom-header"), Some("v"));
        assert_eq!(out.header("x"), Some("1"));
        assert_eq!(out.header("destination"), Some("/topic/t"));
        assert_eq!(out.header("persistent"), Some("false"));
        assert_eq!(&out.body[..], b"{}");
    }

    #[test]
    fn bytes_and_other_bodies() {
        let mut m = Message::bytes(Bytes::from_static(b"\0\x01"));
        m.destination = Some(Destination::queue("q").unwrap());
        let f = message_frame(&m.to_wire(), delivery(), true);
        assert_eq!(f.header("content-type"), Some(BYTES_CONTENT_TYPE));
        assert_eq!(f.header("content-length"), Some("2"));
        assert_eq!(&f.body[..], b"\0\x01");

        let mut m = Message::new(Body::Map(vec![]));
        m.destination = Some(Destination::queue("q").unwrap());
        let f = message_frame(&m.to_wire(), delivery(), true);
        assert!(
            f.header("transformation-error")
                .unwrap()
                .contains("MapMessage")
        );
        assert!(f.body.is_empty());
    }

    #[test]
    fn unwritable_values_are_left_out_in_1_0() {
        let mut m = Message::text("x");
        m.destination = Some(Destination::queue("q").unwrap());
        m.set_property("multi", "a\nb").unwrap();
        m.set_property("nul", "a\0b").unwrap();
        let f = message_frame(&m.to_wire(), delivery(), false);
        assert_eq!(f.header("multi"), None);
        assert_eq!(f.header("nul"), None);
        let f = message_frame(&m.to_wire(), delivery(), true);
        assert_eq!(f.header("multi"), Some("a\nb"));
        assert_eq!(f.header("nul"), None);
        // What we build always encodes.
        let mut buf = bytes::BytesMut::new();
        tandem_protocol::stomp::encode_frame(&f, true, &mut buf).unwrap();
    }
}
