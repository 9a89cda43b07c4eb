//! Header escaping (STOMP 1.1+): `\r` `\n` `\c` `\\` stand for CR, LF, `:` and `\`.
//!
//! Decoding rejects any other escape (the spec makes `\t` and friends a fatal error), including a
//! backslash at the very end of a name or value. Escapes are ASCII, so unescaping valid UTF-8
//! yields valid UTF-8.

use bytes::{BufMut, BytesMut};

use super::error::StompError;

/// Unescapes one header name or value.
pub(crate) fn unescape(raw: &str) -> Result<String, StompError> {
    if !raw.contains('\\') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                return Err(StompError::InvalidEscape {
                    sequence: format!("\\{other}"),
                });
            }
            None => {
                return Err(StompError::InvalidEscape {
                    sequence: "\\".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Writes `s` escaped. NUL cannot be escaped; callers reject it first.
pub(crate) fn escape_into(s: &str, dst: &mut BytesMut) {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\r' | b'\n' | b':'))
    {
        dst.put_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => dst.put_slice(b"\\\\"),
            b'\r' => dst.put_slice(b"\\r"),
            b'\n' => dst.put_slice(b"\\n"),
            b':' => dst.put_slice(b"\\c"),
            other => dst.put_u8(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut b = BytesMut::new();
        escape_into(s, &mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn escapes_exactly_the_four_octets() {
        assert_eq!(esc("plain"), "plain");
        assert_eq!(esc("a:b\\c\r\nd"), "a\\cb\\\\c\\r\\nd");
        assert_eq!(esc("é:ü"), "é\\cü");
    }

    #[test]
    fn unescape_inverts_escape() {
        for s in ["", "plain", "a:b", "\\", "\\\\c", "\r\n:\\", "é\\n"] {
            assert_eq!(unescape(&esc(s)).unwrap(), s);
        }
    }

    #[test]
    fn undefined_escapes_are_errors() {
        for bad in ["\\t", "a\\", "\\C", "\\x41", "\\é"] {
            assert!(
                matches!(unescape(bad), Err(StompError::InvalidEscape { .. })),
                "{bad:?}"
            );
        }
        match unescape("ab\\t") {
            Err(StompError::InvalidEscape { sequence }) => assert_eq!(sequence, "\\t"),
            other => panic!("{other:?}"),
        }
    }
}
