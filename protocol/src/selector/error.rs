//! The error returned for an invalid selector: what is wrong and where.

/// Why a selector was rejected. Rendered after "… at column N" by [`SelectorError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorErrorKind {
    /// The selector text is longer than [`super::MAX_SELECTOR_LEN`] bytes.
    #[error("selector is {len} bytes long, the maximum is {max}")]
    TooLong { len: usize, max: usize },
    /// Parentheses, `NOT`, unary signs or operator chains nest deeper than [`super::MAX_DEPTH`].
    #[error("selector nests deeper than {max} levels")]
    TooDeep { max: usize },
    /// A character that starts no token (e.g. `#`, `"`, `!`).
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    /// `!=` is not selector syntax; the spec spells it `<>`.
    #[error("'!=' is not a selector operator, use '<>'")]
    BangEquals,
    /// A string literal without its closing quote.
    #[error("unterminated string literal")]
    UnterminatedString,
    /// A malformed numeric literal (`0x`, `1e`, `09`, `12abc`, …).
    #[error("invalid numeric literal '{0}'")]
    InvalidNumber(String),
    /// A numeric literal outside the range of `long` or `double`.
    #[error("numeric literal '{0}' is out of range")]
    NumberOutOfRange(String),
    /// The parser wanted one thing and found another.
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
    },
    /// Operands whose types can never fit the operator (e.g. `'a' > 1`, `1 AND x`).
    #[error("{0}")]
    Type(String),
    /// `NULL` used anywhere but in `IS [NOT] NULL`.
    #[error("NULL can only be used in IS NULL or IS NOT NULL")]
    NullLiteral,
    /// A header the spec does not allow in selectors (`JMSDestination`, `JMSReplyTo`, `JMSRedelivered`).
    #[error("header {0} cannot be used in a selector")]
    ForbiddenHeader(String),
    /// A bad `ESCAPE` clause or escape sequence in a `LIKE` pattern.
    #[error("{0}")]
    Escape(String),
}

/// An invalid selector: the reason and the position (1-based column, counted in characters, and
/// the byte offset) of the token where parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at column {column}")]
pub struct SelectorError {
    pub kind: SelectorErrorKind,
    /// 1-based column in characters (what a person counts in an editor).
    pub column: usize,
    /// Byte offset into the selector text.
    pub offset: usize,
}

impl SelectorError {
    pub(crate) fn at(text: &str, offset: usize, kind: SelectorErrorKind) -> Self {
        let offset = offset.min(text.len());
        // `offset` is always a char boundary produced by the lexer, but stay total on any input.
        let column = text
            .get(..offset)
            .map_or(offset, |prefix| prefix.chars().count())
            + 1;
        SelectorError {
            kind,
            column,
            offset,
        }
    }
}
