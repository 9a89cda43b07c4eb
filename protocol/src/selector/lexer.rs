//! Selector tokens. The lexer works on the whole text up front (it is at most
//! [`super::MAX_SELECTOR_LEN`] bytes), so the parser can look ahead freely.

use std::borrow::Cow;

use super::error::{SelectorError, SelectorErrorKind as K};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok<'a> {
    Ident(&'a str),
    Str(Cow<'a, str>),
    /// An exact numeric literal before any sign is applied. Decimal literals keep their magnitude
    /// (up to 2^63, which only `-` can bring into range); hex and octal ones are already the
    /// two's-complement `long` Java would give them.
    Exact {
        magnitude: u64,
        decimal: bool,
    },
    Approx(f64),
    And,
    Or,
    Not,
    Between,
    Like,
    In,
    Is,
    Escape,
    Null,
    True,
    False,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

impl Tok<'_> {
    /// How the token reads in an error message ("found …").
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("identifier '{name}'"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Exact { .. } | Tok::Approx(_) => "a number".to_owned(),
            Tok::Eof => "end of selector".to_owned(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::And => "AND",
            Tok::Or => "OR",
            Tok::Not => "NOT",
            Tok::Between => "BETWEEN",
            Tok::Like => "LIKE",
            Tok::In => "IN",
            Tok::Is => "IS",
            Tok::Escape => "ESCAPE",
            Tok::Null => "NULL",
            Tok::True => "TRUE",
            Tok::False => "FALSE",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Eq => "=",
            Tok::Ne => "<>",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Ident(_) | Tok::Str(_) | Tok::Exact { .. } | Tok::Approx(_) | Tok::Eof => "",
        }
    }
}

/// A token and the byte offset where it starts.
pub(crate) type Spanned<'a> = (Tok<'a>, usize);

/// Java's `Character.isJavaIdentifierStart`, approximated with Unicode alphabetic characters
/// plus `_` and `$` (Java also admits other currency symbols and connector punctuation).
pub(crate) fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

/// Java's `Character.isJavaIdentifierPart`, approximated the same way.
pub(crate) fn is_ident_part(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn keyword(word: &str) -> Option<Tok<'static>> {
    const KEYWORDS: [(&str, Tok<'static>); 11] = [
        ("AND", Tok::And),
        ("OR", Tok::Or),
        ("NOT", Tok::Not),
        ("BETWEEN", Tok::Between),
        ("LIKE", Tok::Like),
        ("IN", Tok::In),
        ("IS", Tok::Is),
        ("ESCAPE", Tok::Escape),
        ("NULL", Tok::Null),
        ("TRUE", Tok::True),
        ("FALSE", Tok::False),
    ];
    KEYWORDS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .map(|(_, t)| t.clone())
}

pub(crate) fn tokenize(text: &str) -> Result<Vec<Spanned<'_>>, SelectorError> {
    Lexer {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    }
    .run()
}

struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, offset: usize, kind: K) -> SelectorError {
        SelectorError::at(self.text, offset, kind)
    }

    fn peek_byte(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn run(mut self) -> Result<Vec<Spanned<'a>>, SelectorError> {
        let mut out = Vec::new();
        loop {
            // Whitespace per the spec: space, horizontal tab, form feed and line terminators.
            while matches!(
                self.peek_byte(0),
                Some(b' ' | b'\t' | b'\x0C' | b'\n' | b'\r')
            ) {
                self.pos += 1;
            }
            let start = self.pos;
            let Some(c) = self.text[self.pos..].chars().next() else {
                out.push((Tok::Eof, start));
                return Ok(out);
            };
            let tok = match c {
                '(' => self.single(Tok::LParen),
                ')' => self.single(Tok::RParen),
                ',' => self.single(Tok::Comma),
                '+' => self.single(Tok::Plus),
                '-' => self.single(Tok::Minus),
                '*' => self.single(Tok::Star),
                '/' => self.single(Tok::Slash),
                '=' => self.single(Tok::Eq),
                '<' => match self.peek_byte(1) {
                    Some(b'>') => self.double(Tok::Ne),
                    Some(b'=') => self.double(Tok::Le),
                    _ => self.single(Tok::Lt),
                },
                '>' => match self.peek_byte(1) {
                    Some(b'=') => self.double(Tok::Ge),
                    _ => self.single(Tok::Gt),
                },
                '!' if self.peek_byte(1) == Some(b'=') => {
                    return Err(self.err(start, K::BangEquals));
                }
                '\'' => self.string()?,
                '0'..='9' => self.number()?,
                '.' if self.peek_byte(1).is_some_and(|b| b.is_ascii_digit()) => self.number()?,
                c if is_ident_start(c) => self.word(),
                c => return Err(self.err(start, K::UnexpectedChar(c))),
            };
            out.push((tok, start));
        }
    }

    fn single(&mut self, tok: Tok<'a>) -> Tok<'a> {
        self.pos += 1;
        tok
    }

    fn double(&mut self, tok: Tok<'a>) -> Tok<'a> {
        self.pos += 2;
        tok
    }

    fn word(&mut self) -> Tok<'a> {
        let start = self.pos;
        let end = self.text[start..]
            .char_indices()
            .find(|&(_, c)| !is_ident_part(c))
            .map_or(self.text.len(), |(i, _)| start + i);
        self.pos = end;
        let word = &self.text[start..end];
        keyword(word).unwrap_or(Tok::Ident(word))
    }

    /// `'…'` with `''` standing for one quote. Borrows the text unless it has to unescape.
    fn string(&mut self) -> Result<Tok<'a>, SelectorError> {
        let start = self.pos;
        let body = start + 1;
        let mut i = body;
        let mut owned: Option<String> = None;
        let mut run_start = body;
        loop {
            match self.bytes.get(i) {
                None => return Err(self.err(start, K::UnterminatedString)),
                Some(b'\'') if self.bytes.get(i + 1) == Some(&b'\'') => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&self.text[run_start..=i]);
                    i += 2;
                    run_start = i;
                }
                Some(b'\'') => {
                    self.pos = i + 1;
                    let value = match owned {
                        Some(mut s) => {
                            s.push_str(&self.text[run_start..i]);
                            Cow::Owned(s)
                        }
                        None => Cow::Borrowed(&self.text[body..i]),
                    };
                    return Ok(Tok::Str(value));
                }
                // Quotes are ASCII, so stepping bytewise never splits a char we care about.
                Some(_) => i += 1,
            }
        }
    }

    fn scan_digits(&mut self, radix: u32) -> usize {
        let start = self.pos;
        while self
            .peek_byte(0)
            .is_some_and(|b| (b as char).is_digit(radix))
        {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Numeric literals, in Java's literal syntax as far as the spec asks for it:
    /// decimal, hex (`0x1F`) and octal (`017`) `long`s with an optional `L`; and `double`s with a
    /// fraction and/or exponent and an optional `F`/`D` suffix (`7.`, `.5`, `6.E3`, `1e-5`, `2f`).
    fn number(&mut self) -> Result<Tok<'a>, SelectorError> {
        let start = self.pos;
        let tok = if self.peek_byte(0) == Some(b'0')
            && matches!(self.peek_byte(1), Some(b'x' | b'X'))
        {
            self.pos += 2;
            let digits_start = self.pos;
            if self.scan_digits(16) == 0 {
                return Err(self.invalid_number(start));
            }
            let digits = &self.text[digits_start..self.pos];
            let value = u64::from_str_radix(digits, 16).map_err(|_| self.out_of_range(start))?;
            self.eat_long_suffix();
            Tok::Exact {
                magnitude: value,
                decimal: false,
            }
        } else {
            let int_digits = self.scan_digits(10);
            let mut approx = false;
            if self.peek_byte(0) == Some(b'.') {
                self.pos += 1;
                let frac = self.scan_digits(10);
                if int_digits == 0 && frac == 0 {
                    return Err(self.invalid_number(start));
                }
                approx = true;
            }
            if matches!(self.peek_byte(0), Some(b'e' | b'E')) {
                self.pos += 1;
                if matches!(self.peek_byte(0), Some(b'+' | b'-')) {
                    self.pos += 1;
                }
                if self.scan_digits(10) == 0 {
                    return Err(self.invalid_number(start));
                }
                approx = true;
            }
            let body_end = self.pos;
            let float_suffix = match self.peek_byte(0) {
                Some(b'f' | b'F') => Some(true),
                Some(b'd' | b'D') => Some(false),
                _ => None,
            };
            if let Some(is_float) = float_suffix {
                self.pos += 1;
                let value: f64 = self.text[start..body_end]
                    .parse()
                    .map_err(|_| self.invalid_number(start))?;
                // A Java `float` literal has float precision; round through f32 so that
                // `x = 1.1F` matches a float property widened to double, as in Java.
                let value = if is_float {
                    let narrowed = value as f32;
                    if narrowed.is_infinite() {
                        return Err(self.out_of_range(start));
                    }
                    f64::from(narrowed)
                } else {
                    value
                };
                self.check_finite(start, value)?;
                Tok::Approx(value)
            } else if approx {
                let value: f64 = self.text[start..body_end]
                    .parse()
                    .map_err(|_| self.invalid_number(start))?;
                self.check_finite(start, value)?;
                Tok::Approx(value)
            } else {
                let digits = &self.text[start..body_end];
                let tok = if digits.len() > 1 && digits.starts_with('0') {
                    // Java octal: a leading zero; 08 and 09 are errors, as in Java.
                    let value = u64::from_str_radix(&digits[1..], 8).map_err(|_| {
                        if digits.bytes().any(|b| b > b'7') {
                            self.invalid_number(start)
                        } else {
                            self.out_of_range(start)
                        }
                    })?;
                    Tok::Exact {
                        magnitude: value,
                        decimal: false,
                    }
                } else {
                    let value: u64 = digits.parse().map_err(|_| self.out_of_range(start))?;
                    if value > 1u64 << 63 {
                        return Err(self.out_of_range(start));
                    }
                    Tok::Exact {
                        magnitude: value,
                        decimal: true,
                    }
                };
                self.eat_long_suffix();
                tok
            }
        };
        // `12abc`, `1.5.2`, `0x1G`: a number must not run straight into a word or another number.
        if let Some(c) = self.text[self.pos..].chars().next()
            && (is_ident_part(c) || c == '.')
        {
            let end = self.text[self.pos..]
                .char_indices()
                .find(|&(_, c)| !(is_ident_part(c) || c == '.'))
                .map_or(self.text.len(), |(i, _)| self.pos + i);
            self.pos = end;
            return Err(self.invalid_number(start));
        }
        Ok(tok)
    }

    fn eat_long_suffix(&mut self) {
        if matches!(self.peek_byte(0), Some(b'l' | b'L')) {
            self.pos += 1;
        }
    }

    fn check_finite(&self, start: usize, value: f64) -> Result<(), SelectorError> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(self.out_of_range(start))
        }
    }

    fn invalid_number(&self, start: usize) -> SelectorError {
        let end = self.pos.max(start);
        self.err(start, K::InvalidNumber(self.text[start..end].to_owned()))
    }

    fn out_of_range(&self, start: usize) -> SelectorError {
        let end = self.pos.max(start);
        self.err(start, K::NumberOutOfRange(self.text[start..end].to_owned()))
    }
}
