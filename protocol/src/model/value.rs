use bytes::Bytes;

use super::ModelError;
use crate::wire;

/// A JMS property value: the eight types `Message.setXxxProperty` accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    /// `boolean`
    Bool(bool),
    /// `byte`
    Byte(i8),
    /// `short`
    Short(i16),
    /// `int`
    Int(i32),
    /// `long`
    Long(i64),
    /// `float`
    Float(f32),
    /// `double`
    Double(f64),
    /// `String`
    String(String),
}

/// A value in a map or stream body: the property types plus `char` and `byte[]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `boolean`
    Bool(bool),
    /// `byte`
    Byte(i8),
    /// `short`
    Short(i16),
    /// `char` (a UTF-16 code unit, as Java has it)
    Char(u16),
    /// `int`
    Int(i32),
    /// `long`
    Long(i64),
    /// `float`
    Float(f32),
    /// `double`
    Double(f64),
    /// `String`
    String(String),
    /// `byte[]`
    Bytes(Bytes),
}

impl PropertyValue {
    /// The JMS type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PropertyValue::Bool(_) => "boolean",
            PropertyValue::Byte(_) => "byte",
            PropertyValue::Short(_) => "short",
            PropertyValue::Int(_) => "int",
            PropertyValue::Long(_) => "long",
            PropertyValue::Float(_) => "float",
            PropertyValue::Double(_) => "double",
            PropertyValue::String(_) => "String",
        }
    }

    /// `getBooleanProperty`: a boolean, or a String parsed as Java's `Boolean.valueOf` does.
    pub fn to_bool(&self) -> Result<bool, ModelError> {
        match self {
            PropertyValue::Bool(b) => Ok(*b),
            PropertyValue::String(s) => Ok(s.eq_ignore_ascii_case("true")),
            other => Err(conv(other.type_name(), "boolean")),
        }
    }

    /// `getLongProperty`: byte, short, int, long, or a String that parses as a long.
    pub fn to_long(&self) -> Result<i64, ModelError> {
        match self {
            PropertyValue::Byte(v) => Ok(i64::from(*v)),
            PropertyValue::Short(v) => Ok(i64::from(*v)),
            PropertyValue::Int(v) => Ok(i64::from(*v)),
            PropertyValue::Long(v) => Ok(*v),
            PropertyValue::String(s) => s.trim().parse().map_err(|_| conv("String", "long")),
            other => Err(conv(other.type_name(), "long")),
        }
    }

    /// `getIntProperty`: byte, short, int, or a String that parses as an int.
    pub fn to_int(&self) -> Result<i32, ModelError> {
        match self {
            PropertyValue::Byte(v) => Ok(i32::from(*v)),
            PropertyValue::Short(v) => Ok(i32::from(*v)),
            PropertyValue::Int(v) => Ok(*v),
            PropertyValue::String(s) => s.trim().parse().map_err(|_| conv("String", "int")),
            other => Err(conv(other.type_name(), "int")),
        }
    }

    /// `getDoubleProperty`: float, double, or a String that parses as a double.
    pub fn to_double(&self) -> Result<f64, ModelError> {
        match self {
            PropertyValue::Float(v) => Ok(f64::from(*v)),
            PropertyValue::Double(v) => Ok(*v),
            PropertyValue::String(s) => s.trim().parse().map_err(|_| conv("String", "double")),
            other => Err(conv(other.type_name(), "double")),
        }
    }

    /// `getStringProperty`: every type converts to its string form.
    pub fn to_string_value(&self) -> String {
        match self {
            PropertyValue::Bool(v) => v.to_string(),
            PropertyValue::Byte(v) => v.to_string(),
            PropertyValue::Short(v) => v.to_string(),
            PropertyValue::Int(v) => v.to_string(),
            PropertyValue::Long(v) => v.to_string(),
            PropertyValue::Float(v) => v.to_string(),
            PropertyValue::Double(v) => v.to_string(),
            PropertyValue::String(v) => v.clone(),
        }
    }

    /// The protobuf form.
    pub fn to_wire(&self) -> wire::Value {
        use wire::value::Kind;
        let kind = match self {
            PropertyValue::Bool(v) => Kind::Bool(*v),
            PropertyValue::Byte(v) => Kind::Byte(i32::from(*v)),
            PropertyValue::Short(v) => Kind::Short(i32::from(*v)),
            PropertyValue::Int(v) => Kind::Int(*v),
            PropertyValue::Long(v) => Kind::Long(*v),
            PropertyValue::Float(v) => Kind::Float(*v),
            PropertyValue::Double(v) => Kind::Double(*v),
            PropertyValue::String(v) => Kind::String(v.clone()),
        };
        wire::Value { kind: Some(kind) }
    }

    /// From the protobuf form; `field` names the property in errors.
    pub fn from_wire(w: &wire::Value, field: &str) -> Result<PropertyValue, ModelError> {
        match Value::from_wire(w, field)? {
            Value::Bool(v) => Ok(PropertyValue::Bool(v)),
            Value::Byte(v) => Ok(PropertyValue::Byte(v)),
            Value::Short(v) => Ok(PropertyValue::Short(v)),
            Value::Int(v) => Ok(PropertyValue::Int(v)),
            Value::Long(v) => Ok(PropertyValue::Long(v)),
            Value::Float(v) => Ok(PropertyValue::Float(v)),
            Value::Double(v) => Ok(PropertyValue::Double(v)),
            Value::String(v) => Ok(PropertyValue::String(v)),
            Value::Char(_) | Value::Bytes(_) => Err(ModelError::InvalidValue {
                field: field.to_string(),
                reason: "char and byte[] are not property types".into(),
            }),
        }
    }
}

impl Value {
    /// The protobuf form.
    pub fn to_wire(&self) -> wire::Value {
        use wire::value::Kind;
        let kind = match self {
            Value::Bool(v) => Kind::Bool(*v),
            Value::Byte(v) => Kind::Byte(i32::from(*v)),
            Value::Short(v) => Kind::Short(i32::from(*v)),
            Value::Char(v) => Kind::Char(u32::from(*v)),
            Value::Int(v) => Kind::Int(*v),
            Value::Long(v) => Kind::Long(*v),
            Value::Float(v) => Kind::Float(*v),
            Value::Double(v) => Kind::Double(*v),
            Value::String(v) => Kind::String(v.clone()),
            Value::Bytes(v) => Kind::Bytes(v.clone()),
        };
        wire::Value { kind: Some(kind) }
    }

    /// From the protobuf form, checking that narrow types are in range; `field` names it in errors.
    pub fn from_wire(w: &wire::Value, field: &str) -> Result<Value, ModelError> {
        use wire::value::Kind;
        let range = |what: &str| ModelError::InvalidValue {
            field: field.to_string(),
            reason: format!("out of range for {what}"),
        };
        Ok(match &w.kind {
            None => {
                return Err(ModelError::InvalidValue {
                    field: field.to_string(),
                    reason: "no value".into(),
                });
            }
            Some(Kind::Bool(v)) => Value::Bool(*v),
            Some(Kind::Byte(v)) => Value::Byte(i8::try_from(*v).map_err(|_| range("byte"))?),
            Some(Kind::Short(v)) => Value::Short(i16::try_from(*v).map_err(|_| range("short"))?),
            Some(Kind::Char(v)) => Value::Char(u16::try_from(*v).map_err(|_| range("char"))?),
            Some(Kind::Int(v)) => Value::Int(*v),
            Some(Kind::Long(v)) => Value::Long(*v),
            Some(Kind::Float(v)) => Value::Float(*v),
            Some(Kind::Double(v)) => Value::Double(*v),
            Some(Kind::String(v)) => Value::String(v.clone()),
            Some(Kind::Bytes(v)) => Value::Bytes(v.clone()),
        })
    }
}

fn conv(from: &'static str, to: &'static str) -> ModelError {
    ModelError::Conversion { from, to }
}

macro_rules! from_impls {
    ($t:ident: $($rust:ty => $variant:ident),*) => {
        $(impl From<$rust> for $t {
            fn from(v: $rust) -> $t {
                $t::$variant(v.into())
            }
        })*
    };
}
from_impls!(PropertyValue: bool => Bool, i8 => Byte, i16 => Short, i32 => Int, i64 => Long,
    f32 => Float, f64 => Double, String => String, &str => String);
from_impls!(Value: bool => Bool, i8 => Byte, i16 => Short, i32 => Int, i64 => Long,
    f32 => Float, f64 => Double, String => String, &str => String, Bytes => Bytes);

/// Words a property name may not be (selector keywords), compared without case.
const RESERVED: [&str; 11] = [
    "NULL", "TRUE", "FALSE", "NOT", "AND", "OR", "BETWEEN", "LIKE", "IN", "IS", "ESCAPE",
];

/// Checks the JMS rules for property names: a Java identifier (a letter, `_` or `$`, then letters,
/// digits, `_` or `$`), not a selector keyword, and not in the `JMS` namespace except the `JMSX`
/// properties the specification defines and the `JMS_` vendor prefix.
pub fn validate_property_name(name: &str) -> Result<(), ModelError> {
    let bad = |reason| {
        Err(ModelError::InvalidPropertyName {
            name: name.to_string(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("empty"),
        Some(c) if c.is_alphabetic() || c == '_' || c == '$' => {}
        Some(_) => return bad("must start with a letter, '_' or '$'"),
    }
    if !chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$') {
        return bad("only letters, digits, '_' and '$' are allowed");
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return bad("a selector keyword");
    }
    if name.starts_with("JMS") && !name.starts_with("JMSX") && !name.starts_with("JMS_") {
        return bad("the JMS prefix is reserved for header fields");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_names() {
        for ok in [
            "a",
            "_x",
            "$y",
            "order_id",
            "Größe",
            "JMSXGroupID",
            "JMS_acme_x",
            "nulls",
        ] {
            assert!(validate_property_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "NULL",
            "and",
            "Between",
            "JMSPriority",
            "JMSfoo",
        ] {
            assert!(validate_property_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jms_conversion_table() {
        assert_eq!(PropertyValue::Byte(-3).to_long().unwrap(), -3);
        assert_eq!(PropertyValue::Short(7).to_int().unwrap(), 7);
        assert!(
            PropertyValue::Long(7).to_int().is_err(),
            "long does not narrow to int"
        );
        assert!(
            PropertyValue::Int(1).to_double().is_err(),
            "int does not read as double"
        );
        assert_eq!(PropertyValue::Float(1.5).to_double().unwrap(), 1.5);
        assert_eq!(PropertyValue::String(" 42 ".into()).to_long().unwrap(), 42);
        assert!(PropertyValue::String("4x".into()).to_long().is_err());
        assert!(
            PropertyValue::String("yes".into())
                .to_bool()
                .is_ok_and(|b| !b)
        );
        assert!(PropertyValue::Int(1).to_bool().is_err());
        assert_eq!(PropertyValue::Double(2.5).to_string_value(), "2.5");
    }

    #[test]
    fn wire_range_checks() {
        use wire::value::Kind;
        let w = |k| wire::Value { kind: Some(k) };
        assert!(Value::from_wire(&w(Kind::Byte(300)), "b").is_err());
        assert!(Value::from_wire(&w(Kind::Short(70_000)), "s").is_err());
        assert!(Value::from_wire(&w(Kind::Char(0x1_0000)), "c").is_err());
        assert!(Value::from_wire(&wire::Value { kind: None }, "n").is_err());
        assert!(PropertyValue::from_wire(&w(Kind::Bytes(Bytes::new())), "p").is_err());
        for v in [
            Value::Byte(-128),
            Value::Short(i16::MAX),
            Value::Char(0xffff),
            Value::Bytes(Bytes::from_static(b"x")),
        ] {
            assert_eq!(Value::from_wire(&v.to_wire(), "v").unwrap(), v);
        }
    }
}
