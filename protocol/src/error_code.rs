//! Stable, wire-visible error codes. A number, once given, keeps its meaning forever and is never
//! reused (remove a code by leaving its number out). One table, in the manner of nats-server's
//! `errors.json`.

/// The code carried by Error, SendFailure and Close frames.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame that could not be decoded (bad protobuf, missing required field, bad value).
    MalformedFrame = 1,
    /// A well-framed frame of a type this server does not know.
    UnknownFrameType = 2,
    /// A frame larger than the negotiated maximum.
    FrameTooLarge = 3,
    /// No protocol version in common.
    UnsupportedVersion = 4,
    /// A destination name that breaks the naming rules.
    InvalidDestination = 5,
    /// The destination does not exist and auto-create is off.
    DestinationNotFound = 6,
    /// A selector that does not parse.
    InvalidSelector = 7,
    /// The destination's memory budget stayed exhausted past the producer's block timeout.
    DestinationFull = 8,
    /// A message larger than the configured maximum.
    MessageTooLarge = 9,
    /// A message that breaks the JMS model (priority out of range, bad property name, ...).
    InvalidMessage = 10,
    /// A session id that is not open on this connection.
    UnknownSession = 11,
    /// A producer id that is not open on this connection.
    UnknownProducer = 12,
    /// A consumer id that is not open on this connection.
    UnknownConsumer = 13,
    /// An ack or nack for a delivery the session does not hold.
    UnknownDelivery = 14,
    /// A feature this server does not provide (yet).
    NotImplemented = 15,
    /// The server's connection limit is reached.
    ConnectionLimit = 16,
    /// Nothing was received within the idle timeout.
    IdleTimeout = 17,
    /// The server is shutting down.
    ShuttingDown = 18,
    /// Another connection already uses this client id.
    ClientIdInUse = 19,
    /// Wrong credentials.
    AuthenticationFailed = 20,
    /// The user may not do this.
    NotAuthorized = 21,
    /// The transaction was rolled back (for instance by a failover); the application may retry it.
    TransactionRolledBack = 22,
    /// The request is not valid in the current state (e.g. an id already in use, a frame before Connect).
    IllegalState = 23,
    /// A fault inside the server; the message says which.
    Internal = 24,
    /// The store could not make the message durable (disk full, I/O error).
    StorageFailure = 25,
    /// The server has lost its lease (failover) and no longer serves.
    Fenced = 26,
    /// No durable subscription of that name (and client id) exists (JMS: InvalidDestination on
    /// `unsubscribe`).
    UnknownSubscription = 27,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnknownFrameType,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidDestination,
        ErrorCode::DestinationNotFound,
        ErrorCode::InvalidSelector,
        ErrorCode::DestinationFull,
        ErrorCode::MessageTooLarge,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownSession,
        ErrorCode::UnknownProducer,
        ErrorCode::UnknownConsumer,
        ErrorCode::UnknownDelivery,
        ErrorCode::NotImplemented,
        ErrorCode::ConnectionLimit,
        ErrorCode::IdleTimeout,
        ErrorCode::ShuttingDown,
        ErrorCode::ClientIdInUse,
        ErrorCode::AuthenticationFailed,
        ErrorCode::NotAuthorized,
        ErrorCode::TransactionRolledBack,
        ErrorCode::IllegalState,
        ErrorCode::Internal,
        ErrorCode::StorageFailure,
        ErrorCode::Fenced,
        ErrorCode::UnknownSubscription,
    ];

    /// The wire number.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a wire number; `None` for a number this version does not know (a newer peer).
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// A short stable name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed-frame",
            ErrorCode::UnknownFrameType => "unknown-frame-type",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::InvalidDestination => "invalid-destination",
            ErrorCode::DestinationNotFound => "destination-not-found",
            ErrorCode::InvalidSelector => "invalid-selector",
            ErrorCode::DestinationFull => "destination-full",
            ErrorCode::MessageTooLarge => "message-too-large",
            ErrorCode::InvalidMessage => "invalid-message",
            ErrorCode::UnknownSession => "unknown-session",
            ErrorCode::UnknownProducer => "unknown-producer",
            ErrorCode::UnknownConsumer => "unknown-consumer",
            ErrorCode::UnknownDelivery => "unknown-delivery",
            ErrorCode::NotImplemented => "not-implemented",
            ErrorCode::ConnectionLimit => "connection-limit",
            ErrorCode::IdleTimeout => "idle-timeout",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::ClientIdInUse => "client-id-in-use",
            ErrorCode::AuthenticationFailed => "authentication-failed",
            ErrorCode::NotAuthorized => "not-authorized",
            ErrorCode::TransactionRolledBack => "transaction-rolled-back",
            ErrorCode::IllegalState => "illegal-state",
            ErrorCode::Internal => "internal",
            ErrorCode::StorageFailure => "storage-failure",
            ErrorCode::Fenced => "fenced",
            ErrorCode::UnknownSubscription => "unknown-subscription",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_dense_and_round_trip() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.code(), i as u32 + 1, "{c:?} out of order");
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::from_code(9999), None);
        let names: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn numbers_never_change() {
        // The wire contract: these numbers are published. Changing one breaks deployed clients.
        assert_eq!(ErrorCode::MalformedFrame.code(), 1);
        assert_eq!(ErrorCode::InvalidDestination.code(), 5);
        assert_eq!(ErrorCode::DestinationFull.code(), 8);
        assert_eq!(ErrorCode::NotImplemented.code(), 15);
        assert_eq!(ErrorCode::Fenced.code(), 26);
        assert_eq!(ErrorCode::UnknownSubscription.code(), 27);
    }
}
