//! JMS message selectors (Jakarta Messaging 3.1 §3.8.1, the same language as JMS 2.0).
//!
//! A selector is parsed once into a type-checked AST ([`Selector::parse`]) and then evaluated
//! against each message through [`SelectorSource`], which answers "what is the value of this
//! header or property?". Evaluation uses SQL three-valued logic and allocates nothing; a message
//! is selected only when the selector is TRUE (FALSE and UNKNOWN both reject it).
//!
//! ```
//! use std::borrow::Cow;
//! use tandem_protocol::selector::{Selector, SelectorSource, SelectorValue};
//!
//! struct Msg {
//!     color: &'static str,
//!     weight: i64,
//! }
//!
//! impl SelectorSource for Msg {
//!     fn value(&self, identifier: &str) -> Option<SelectorValue<'_>> {
//!         match identifier {
//!             "color" => Some(SelectorValue::Str(Cow::Borrowed(self.color))),
//!             "weight" => Some(SelectorValue::Long(self.weight)),
//!             _ => None, // absent: NULL
//!         }
//!     }
//! }
//!
//! let s = Selector::parse("color IN ('red', 'blue') AND weight > 2500").unwrap();
//! assert!(s.matches(&Msg { color: "red", weight: 3000 }));
//! assert!(!s.matches(&Msg { color: "red", weight: 10 }));
//!
//! let err = Selector::parse("weight > ").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "expected an identifier, a literal or '(', found end of selector at column 10"
//! );
//! ```
//!
//! # Grammar
//!
//! Keywords are case-insensitive; identifiers are case-sensitive. Whitespace is space, tab,
//! form feed, CR and LF.
//!
//! ```text
//! selector       = [ or_expr ] EOF                  (empty or blank: matches every message)
//! or_expr        = and_expr { OR and_expr }
//! and_expr       = not_expr { AND not_expr }
//! not_expr       = NOT not_expr | predicate
//! predicate      = additive [ cmp_op additive
//!                           | [NOT] BETWEEN additive AND additive
//!                           | [NOT] IN '(' string { ',' string } ')'
//!                           | [NOT] LIKE string [ ESCAPE string ]
//!                           | IS [NOT] NULL ]
//! cmp_op         = '=' | '<>' | '<' | '>' | '<=' | '>='
//! additive       = multiplicative { ('+' | '-') multiplicative }
//! multiplicative = unary { ('*' | '/') unary }
//! unary          = ('+' | '-') unary | primary
//! primary        = '(' or_expr ')' | identifier | string | exact | approx | TRUE | FALSE
//!
//! identifier     = java_letter { java_letter_or_digit }, not a keyword
//! keyword        = NULL TRUE FALSE NOT AND OR BETWEEN LIKE IN IS ESCAPE
//! string         = "'" { any char except "'" | "''" } "'"
//! exact          = ( digit1-9 {digit} | '0' octal_digit {octal_digit} | '0'
//!                  | '0' ('x'|'X') hex_digit {hex_digit} ) [ 'L' | 'l' ]
//! approx         = ( digits '.' [digits] [exp] | '.' digits [exp] | digits exp ) [ f | F | d | D ]
//!                | digits ( f | F | d | D )
//! exp            = ('e' | 'E') ['+' | '-'] digits
//! ```
//!
//! Precedence, tightest first: unary `+ -`; `* /`; binary `+ -`; the comparisons and
//! `[NOT] BETWEEN`, `[NOT] IN`, `[NOT] LIKE`, `IS [NOT] NULL` (one per predicate, so `a = b = c`
//! is an error — parenthesize); `NOT`; `AND`; `OR`. Operators of equal precedence group left to
//! right.
//!
//! # Types and three-valued logic
//!
//! Values are NULL (an absent property or header), boolean, `long`, `double` or string. The
//! broker maps `byte`/`short`/`int`/`long` properties to [`SelectorValue::Long`] and
//! `float`/`double` to [`SelectorValue::Double`]; `char` properties do not exist in JMS.
//!
//! - `AND`, `OR` and `NOT` follow the SQL (Kleene) tables: FALSE AND x = FALSE,
//!   TRUE OR x = TRUE, NOT UNKNOWN = UNKNOWN, everything else involving UNKNOWN is UNKNOWN.
//! - A comparison, arithmetic operation, `BETWEEN`, `IN` or `LIKE` with a NULL operand is
//!   UNKNOWN (arithmetic yields NULL). `IS [NOT] NULL` is never UNKNOWN.
//! - Numbers: `long` with `long` stays `long`; with a `double` the `long` is widened to `double`
//!   (Java numeric promotion, so very large longs compare after rounding, as in Java). `double`
//!   comparisons follow IEEE (and Java): NaN is unequal to everything, `<>` with NaN is TRUE.
//! - Strings and booleans compare only with `=` and `<>`, against their own type. Strings are equal
//!   when their characters are; comparison is case-sensitive.
//! - An identifier or arithmetic expression used directly as a condition (`WHERE flag`) is TRUE or
//!   FALSE when its value is a boolean and UNKNOWN otherwise.
//! - `a BETWEEN b AND c` is `a >= b AND a <= c`; `a NOT BETWEEN b AND c` is `a < b OR a > c`
//!   (the spec's definitions; they differ from `NOT (a BETWEEN b AND c)` only for NaN).
//!
//! # Choices where the spec is silent or where we deliberately differ
//!
//! - **Comparing unlike types is FALSE**, as JMS 3.1 says ("the value of the operation is
//!   false"): a string with a number, a boolean with either, or ordering strings or booleans with
//!   `<`/`>`. There is never an implicit conversion. So with `s = 'x'`, `s = 5` is FALSE and
//!   `NOT (s = 5)` is TRUE (Artemis agrees on `=`, but makes `s <> 5` TRUE where the spec's rule
//!   makes it FALSE). `BETWEEN` is built from comparisons and follows the same rule. `IN` and `LIKE`
//!   on a non-string, and arithmetic on a non-number, are UNKNOWN (NULL for arithmetic).
//! - **Statically impossible expressions are parse errors.** When the types are visible in the
//!   text the selector is rejected rather than being always-UNKNOWN: `'a' > 1`, `1 = 'a'`,
//!   `5 LIKE 'a'`, `TRUE IN ('a')`, `x + 'a'`, `1 AND x`, `NOT 5`, a selector that is just `5` or
//!   `x + 1`, and `NULL` outside `IS [NOT] NULL` (so `x = NULL` is an error, as in Artemis).
//!   Identifiers are typed per message, so `x > 1` is fine whatever `x` turns out to be.
//! - **`LIKE`, `IN` and `IS NULL` accept any value expression** on their left, not only an
//!   identifier as the spec's grammar says (Artemis does the same); the type rules above still
//!   apply. `IN` lists are string literals only, at least one.
//! - **Integer literals** follow Java's syntax as Artemis does: decimal, hex `0x…` and octal `0…`
//!   (`08` and `09` are errors), each with an optional `L`/`l`. Hex and octal are two's
//!   complement (`0xFFFFFFFFFFFFFFFF` is -1). A decimal literal must fit a `long`;
//!   `-9223372036854775808` is accepted because the sign is folded into the literal. Binary
//!   literals, underscores and hex floating-point literals are not supported.
//! - **Approximate literals** parse as `double`; with an `F` suffix the value is first rounded to
//!   `float` precision, so `x = 1.1F` matches a `float` property 1.1 widened to `double`, as in
//!   Java. A literal that overflows to infinity is an error.
//! - **Arithmetic:** integer division truncates toward zero. Division by zero (integer or
//!   floating) is NULL, so the enclosing predicate is UNKNOWN; Java would throw or give an infinity.
//!   `long` overflow (including `-Long.MIN_VALUE` and `MIN / -1`) is NULL too, where Java wraps
//!   silently. `double` overflow gives an infinity, as in Java.
//! - **`LIKE`:** `_` is exactly one character (Unicode scalar value), `%` any run including the
//!   empty one. The `ESCAPE` string must be exactly one character. An escape character makes the
//!   next character literal whatever it is (SQL-92 would reject an escaped ordinary character;
//!   we accept it, like Artemis); a pattern ending in the escape character is an error.
//! - **Identifiers:** Java identifier characters are approximated as Unicode alphabetic, `_` and
//!   `$` to start, plus Unicode alphanumerics after that.
//! - **Tokens must be separated where Java's would be:** a number running straight into a word or
//!   another dot (`1OR`, `12abc`, `1.2.3`) is an invalid literal rather than two tokens.
//! - **Not supported Artemis extensions:** `--` and `/* */` comments (here `2--2` is `2 - -2`),
//!   the `%` modulo operator, `XPATH`/`XQUERY`, and the `convert_string_expressions:` and
//!   `hyphenated_props:` prefixes. Artemis also parses `NOT` tighter than comparisons, so its
//!   `NOT a = 1` is `(NOT a) = 1`; here it is `NOT (a = 1)`, as in SQL and the spec.
//! - **Headers:** see [`headers`]. `JMSDestination`, `JMSReplyTo` and `JMSRedelivered` are
//!   rejected at parse time: the spec restricts header references to `JMSDeliveryMode`,
//!   `JMSPriority`, `JMSMessageID`, `JMSTimestamp`, `JMSCorrelationID` and `JMSType`, and these
//!   three would otherwise silently never match. `JMSExpiration`, `JMSDeliveryTime` and the `JMSX…`
//!   properties are accepted (Artemis accepts the first and the JMSX ones are properties); the
//!   broker supplies their values. Any other name is a property looked up as written.
//! - **Empty selector:** an empty or blank text parses to a selector that matches everything
//!   ([`Selector::is_empty`] lets the broker skip it), as the spec says it is "no selector".
//! - **Bounds:** at most [`MAX_SELECTOR_LEN`] bytes of text, and at most [`MAX_DEPTH`] levels of
//!   nesting (parentheses, `NOT`, signs) and of tree height (left-deep arithmetic chains count;
//!   `AND`/`OR` chains are flattened and do not). Both are errors, never a stack overflow.

mod error;
mod eval;
mod lexer;
mod like;
mod parser;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

pub use error::{SelectorError, SelectorErrorKind};
pub use eval::Truth;

/// Maximum selector length in bytes. Generous enough for an `IN` list of a few hundred IDs.
pub const MAX_SELECTOR_LEN: usize = 16 * 1024;

/// Maximum nesting depth and expression tree height.
pub const MAX_DEPTH: usize = 64;

/// Header identifiers the spec forbids in selectors.
const FORBIDDEN_HEADERS: [&str; 3] = ["JMSDestination", "JMSReplyTo", "JMSRedelivered"];

/// The header and JMS-defined property identifiers a selector may use, and the value a
/// [`SelectorSource`] must give for each. All other identifiers are application properties.
pub mod headers {
    /// String: [`PERSISTENT`] or [`NON_PERSISTENT`] (so `JMSDeliveryMode = 'PERSISTENT'` works).
    pub const JMS_DELIVERY_MODE: &str = "JMSDeliveryMode";
    /// Long, 0–9.
    pub const JMS_PRIORITY: &str = "JMSPriority";
    /// String (`ID:…`), NULL when the producer disabled message IDs.
    pub const JMS_MESSAGE_ID: &str = "JMSMessageID";
    /// Long, milliseconds since the epoch; 0 when the producer disabled timestamps.
    pub const JMS_TIMESTAMP: &str = "JMSTimestamp";
    /// String, NULL when unset.
    pub const JMS_CORRELATION_ID: &str = "JMSCorrelationID";
    /// String, NULL when unset.
    pub const JMS_TYPE: &str = "JMSType";
    /// Long, milliseconds since the epoch; 0 means never (extension, as in Artemis).
    pub const JMS_EXPIRATION: &str = "JMSExpiration";
    /// Long, milliseconds since the epoch (extension).
    pub const JMS_DELIVERY_TIME: &str = "JMSDeliveryTime";
    /// Long, 1 on first delivery (JMS-defined property).
    pub const JMSX_DELIVERY_COUNT: &str = "JMSXDeliveryCount";
    /// String, NULL when the message is in no group (JMS-defined property).
    pub const JMSX_GROUP_ID: &str = "JMSXGroupID";
    /// Long (JMS-defined property).
    pub const JMSX_GROUP_SEQ: &str = "JMSXGroupSeq";
    /// String (JMS-defined property).
    pub const JMSX_USER_ID: &str = "JMSXUserID";

    /// Value of `JMSDeliveryMode` for persistent messages.
    pub const PERSISTENT: &str = "PERSISTENT";
    /// Value of `JMSDeliveryMode` for non-persistent messages.
    pub const NON_PERSISTENT: &str = "NON_PERSISTENT";
}

/// A typed header or property value. Integral properties (`byte`, `short`, `int`, `long`) are
/// given as `Long`, floating ones (`float`, `double`) as `Double`.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectorValue<'a> {
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(Cow<'a, str>),
}

/// Where a selector reads a message's headers and properties.
pub trait SelectorSource {
    /// Value of a header or property identifier, None when absent (NULL).
    fn value(&self, identifier: &str) -> Option<SelectorValue<'_>>;
}

/// A parsed message selector. Cheap to evaluate, immutable, shareable across threads.
#[derive(Debug, Clone)]
pub struct Selector {
    text: Box<str>,
    expr: eval::Expr,
    identifiers: Box<[Box<str>]>,
    empty: bool,
}

impl Selector {
    /// Parses and type-checks `text`. An empty or blank text is a selector that matches every
    /// message.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let parsed = parser::parse(text)?;
        Ok(Selector {
            text: text.into(),
            expr: parsed.expr,
            empty: text
                .trim_matches([' ', '\t', '\x0C', '\n', '\r'])
                .is_empty(),
            identifiers: parsed.identifiers.into_boxed_slice(),
        })
    }

    /// True when the selector evaluates to TRUE for this message; FALSE and UNKNOWN don't match.
    pub fn matches(&self, source: &dyn SelectorSource) -> bool {
        self.evaluate(source) == Truth::True
    }

    /// The full three-valued result, for diagnostics and tests.
    pub fn evaluate(&self, source: &dyn SelectorSource) -> Truth {
        self.expr.truth(source)
    }

    /// The text the selector was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True for the empty (or blank) selector, which matches everything.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The distinct identifiers the selector reads, sorted. Lets the broker know, for example,
    /// whether a selector needs any property at all.
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        self.identifiers.iter().map(|s| &**s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Selector::parse(text)
    }
}
