//! A small, deterministic YAML emitter for JSON-shaped data (what a CloudFormation template is).
//!
//! Why hand-rolled: `serde_yaml` is deprecated, `serde_yml` is deprecated too (now a shim over another crate),
//! and the maintained forks (`serde_norway`, `serde_yaml_ng`) wrap a mechanical C-to-Rust port of libyaml whose
//! output details we would not control. A template only needs maps, sequences and scalars, so ~150 lines give
//! byte-stable output with no dependency. Correctness is checked the other way round: the tests parse every
//! rendered template with `serde_norway` (a YAML 1.1 parser, like CloudFormation's) and compare it with the JSON
//! value it came from.
//!
//! Rules: maps and sequences are block style (2-space indent); a string is written plain only when no YAML 1.1
//! reading could turn it into something else (no leading digit, no `yes`/`on`/`null`, no indicator characters);
//! multi-line strings without awkward whitespace become literal blocks (`|`, `|-`); everything else is
//! double-quoted with JSON escapes, which YAML's double-quoted style accepts.

use serde_json::Value;

/// Emits `entries` as a block map at `indent`, one entry per line, in the given order.
pub fn write_entries<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
    indent: usize,
) {
    for (k, v) in entries {
        pad(out, indent);
        write_entry(out, k, v, indent);
    }
}

/// A whole document for a value (maps in key order, as `serde_json::Map` keeps them sorted).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => {
            write_entries(&mut out, m.iter().map(|(k, v)| (k.as_str(), v)), 0)
        }
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&inline(other, 0));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// `key: value` where the cursor is already indented; `indent` is the key's column.
fn write_entry(out: &mut String, key: &str, value: &Value, indent: usize) {
    // Keys never become literal blocks: a block scalar cannot be an implicit key.
    out.push_str(&if is_plain_safe(key) {
        key.to_owned()
    } else {
        quoted(key)
    });
    out.push(':');
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_entries(out, m.iter().map(|(k, v)| (k.as_str(), v)), indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other, indent + 2));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                // The first entry shares the dash's line; the rest line up under it.
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        pad(out, indent + 2);
                    }
                    write_entry(out, k, v, indent + 2);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                write_seq(out, a, indent + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&inline(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection on one line (a literal block may continue on following lines).
fn inline(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_str(s, indent),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// A string as a plain scalar, a literal block, or a double-quoted scalar.
fn scalar_str(s: &str, indent: usize) -> String {
    if is_plain_safe(s) {
        return s.to_owned();
    }
    if let Some(block) = literal_block(s, indent) {
        return block;
    }
    quoted(s)
}

fn quoted(s: &str) -> String {
    let mut q = serde_json::to_string(s).expect("serializing a str cannot fail");
    // JSON leaves these raw, but YAML treats them as line breaks or a byte-order mark.
    for (c, esc) in [
        ('\u{85}', "\\u0085"),
        ('\u{2028}', "\\u2028"),
        ('\u{2029}', "\\u2029"),
        ('\u{feff}', "\\ufeff"),
    ] {
        if q.contains(c) {
            q = q.replace(c, esc);
        }
    }
    q
}

const KEYWORDS: [&str; 9] = ["y", "n", "yes", "no", "true", "false", "on", "off", "null"];

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '/')
        && !s.ends_with([' ', ':'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " -_./:()+=".contains(c))
        && !s.contains(": ")
        && !s.contains(" #")
        && !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(s))
}

/// `|` / `|-` block for multi-line text whose lines survive a literal block unchanged.
fn literal_block(s: &str, indent: usize) -> Option<String> {
    if !s.contains('\n') || s.ends_with("\n\n") {
        return None;
    }
    let body = s.strip_suffix('\n');
    let (header, text) = match body {
        Some(b) => ("|", b),
        None => ("|-", s),
    };
    let ok = text.split('\n').all(|l| {
        !l.ends_with([' ', '\t'])
            && l.chars().all(|c| {
                c == '\t'
                    || (!c.is_control()
                        && !matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'))
            })
    }) && !text.starts_with([' ', '\t'])
        && !text.split('\n').next().unwrap_or_default().is_empty();
    if !ok {
        return None;
    }
    let mut out = String::from(header);
    for line in text.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            pad(&mut out, indent);
            out.push_str(line);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(v: &Value) {
        let y = to_string(v);
        let back: Value = serde_norway::from_str(&y).unwrap_or_else(|e| panic!("{e}\n{y}"));
        assert_eq!(&back, v, "\n{y}");
    }

    #[test]
    fn layout() {
        let v = json!({"A": {"B": [1, {"C": "x", "D": [true]}], "E": {}}, "F": []});
        assert_eq!(
            to_string(&v),
            "A:\n  B:\n    - 1\n    - C: x\n      D:\n        - true\n  E: {}\nF: []\n"
        );
        roundtrip(&v);
    }

    #[test]
    fn risky_strings_are_quoted_and_survive() {
        let strings = [
            "",
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "null",
            "~",
            "true",
            "1",
            "0.5",
            "2010-09-09",
            "8161",
            "1:20",
            ".inf",
            "0.0.0.0/0",
            "- a",
            "a: b",
            "a #b",
            "#c",
            "&x",
            "*x",
            "!Ref x",
            "{a}",
            "[a]",
            "a,b",
            "'q'",
            "\"q\"",
            "%x",
            "@x",
            "`x`",
            "a:",
            " lead",
            "trail ",
            "tab\there",
            "nul\u{0}",
            "line\u{2028}sep",
            "ü",
            "Ref",
            "<<",
            "?x",
            "|x",
            ">x",
        ];
        for s in strings {
            roundtrip(&json!({ "k": s, s: 1 }));
            roundtrip(&json!([s]));
        }
    }

    #[test]
    fn plain_when_safe() {
        assert_eq!(
            to_string(&json!({"Type": "AWS::EC2::VPC"})),
            "Type: AWS::EC2::VPC\n"
        );
        assert_eq!(to_string(&json!({"P": "/health"})), "P: /health\n");
        assert_eq!(
            to_string(&json!({"C": "10.0.0.0/16"})),
            "C: \"10.0.0.0/16\"\n"
        );
    }

    #[test]
    fn literal_blocks() {
        let v = json!({"U": {"S": "#!/bin/bash\nset -eu\n\n  indented\nend\n"}});
        let y = to_string(&v);
        assert!(y.contains("S: |\n    #!/bin/bash\n"), "{y}");
        roundtrip(&v);
        for s in [
            "a\nb", "a\n", "a\n\n", "\na", " a\nb", "a \nb", "a\n\tb", "a\r\nb",
        ] {
            roundtrip(&json!({ "k": s }));
            roundtrip(&json!([{ "k": s }]));
            roundtrip(&json!([s, [s]]));
        }
    }

    /// Seeded random strings over an alphabet of YAML-significant characters: every one must survive.
    #[test]
    fn random_strings_survive() {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', '9', ' ', '\n', '\t', ':', '#', '-', '?', '&', '*', '!', '|', '>', '\'',
            '"', '%', '@', '`', '{', '}', '[', ']', ',', '.', '/', '\\', '~', '=', '+', '_', 'é',
            '\u{2028}', '\r',
        ];
        let seed: u64 = 0x7a6e_6465_6d00_0001;
        let mut state = seed;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure is replayable from the printed seed.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for case in 0..3000 {
            let len = (next() % 12) as usize;
            let s: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let v = json!({ "k": s, "l": [s, {"m": s}], s.clone(): 1 });
            let y = to_string(&v);
            let back: Value = serde_norway::from_str(&y)
                .unwrap_or_else(|e| panic!("seed {seed:#x} case {case}: {s:?}: {e}\n{y}"));
            assert_eq!(back, v, "seed {seed:#x} case {case}: {s:?}\n{y}");
        }
    }
}
