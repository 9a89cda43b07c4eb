//! The JMS message model (Jakarta Messaging 3.1): destinations, typed values, messages.
//!
//! These are the types applications and the broker's edges use. Their invariants are checked where
//! they are built (setters, `from_wire`), so a value of these types is always valid: priority 0-9,
//! property names that are JMS identifiers, destination names within the naming rules.

mod destination;
mod message;
mod value;

pub use destination::{Destination, DestinationKind, MAX_DESTINATION_NAME_LEN};
pub use message::{Body, DEFAULT_PRIORITY, DeliveryMode, Message};
pub use value::{PropertyValue, Value, validate_property_name};

/// A violation of the model's rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A destination name that breaks the naming rules.
    #[error("invalid destination name {name:?}: {reason}")]
    InvalidDestination {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A property name that is not a JMS identifier, or is reserved.
    #[error("invalid property name {name:?}: {reason}")]
    InvalidPropertyName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// JMSPriority outside 0-9.
    #[error("priority {0} is outside 0-9")]
    InvalidPriority(u32),
    /// A value that does not fit its declared type (e.g. a byte property of 300).
    #[error("invalid value for {field}: {reason}")]
    InvalidValue {
        /// The field or property.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A type conversion JMS does not allow (MessageFormatException).
    #[error("cannot read {from} as {to}")]
    Conversion {
        /// The stored type.
        from: &'static str,
        /// The requested type.
        to: &'static str,
    },
    /// The bytes are not an encoded message.
    #[error("malformed message: {0}")]
    Malformed(String),
}
