//! Selector tests: a table of selectors × messages × expected truth value, invalid selectors,
//! limits, and a seeded fuzz loop that feeds the parser garbage and token soup.

use std::borrow::Cow;

use super::*;

/// A property value in the table (`'static` so rows can be constants).
#[derive(Debug, Clone, Copy)]
enum V {
    B(bool),
    L(i64),
    D(f64),
    S(&'static str),
}
use V::{B, D, L, S};

const T: Truth = Truth::True;
const F: Truth = Truth::False;
const U: Truth = Truth::Unknown;

/// A message: a list of (identifier, value); anything not listed is NULL.
struct Props<'a>(&'a [(&'a str, V)]);

impl SelectorSource for Props<'_> {
    fn value(&self, identifier: &str) -> Option<SelectorValue<'_>> {
        self.0
            .iter()
            .find(|(name, _)| *name == identifier)
            .map(|(_, v)| match *v {
                B(b) => SelectorValue::Bool(b),
                L(n) => SelectorValue::Long(n),
                D(d) => SelectorValue::Double(d),
                S(s) => SelectorValue::Str(Cow::Borrowed(s)),
            })
    }
}

type Row = (&'static str, &'static [(&'static str, V)], Truth);

/// (selector, message properties, expected result). `matches` must be true exactly for `T`.
#[rustfmt::skip]
const ROWS: &[Row] = &[
    (r#"color = 'red'"#, &[("color", S(r#"red"#))], T),
    (r#"color = 'red'"#, &[("color", S(r#"blue"#))], F),
    (r#"color = 'red'"#, &[], U),
    (r#"color <> 'red'"#, &[("color", S(r#"blue"#))], T),
    (r#"color <> 'red'"#, &[("color", S(r#"red"#))], F),
    (r#"color <> 'red'"#, &[], U),
    (r#"color = 'Red'"#, &[("color", S(r#"red"#))], F),
    (r#"'red' = color"#, &[("color", S(r#"red"#))], T),
    (r#"name = 'O''Brien'"#, &[("name", S(r#"O'Brien"#))], T),
    (r#"name = ''''"#, &[("name", S(r#"'"#))], T),
    (r#"name = ''"#, &[("name", S(r#""#))], T),
    (r#"name = 'é😀'"#, &[("name", S(r#"é😀"#))], T),
    (r#"a = b"#, &[("a", S(r#"x"#)), ("b", S(r#"x"#))], T),
    (r#"a = b"#, &[("a", S(r#"x"#)), ("b", S(r#"y"#))], F),
    (r#"a = b"#, &[("a", S(r#"x"#))], U),
    (r#"a <> b"#, &[("a", L(1)), ("b", L(1))], F),
    (r#"n = 5"#, &[("n", L(5))], T),
    (r#"n = 5"#, &[("n", L(6))], F),
    (r#"n = 5.0"#, &[("n", L(5))], T),
    (r#"n = 5"#, &[("n", D(5.0))], T),
    (r#"n > 4"#, &[("n", D(4.5))], T),
    (r#"n < 4"#, &[("n", L(4))], F),
    (r#"n <= 4"#, &[("n", L(4))], T),
    (r#"n >= 4.5"#, &[("n", L(4))], F),
    (r#"n > -1"#, &[("n", L(0))], T),
    (r#"n = -957"#, &[("n", L(-957))], T),
    (r#"n = +62"#, &[("n", L(62))], T),
    (r#"n = 0x1F"#, &[("n", L(31))], T),
    (r#"n = 0X1fL"#, &[("n", L(31))], T),
    (r#"n = 017"#, &[("n", L(15))], T),
    (r#"n = 0"#, &[("n", L(0))], T),
    (r#"n = 57L"#, &[("n", L(57))], T),
    (r#"n = 57l"#, &[("n", L(57))], T),
    (r#"n = 9223372036854775807"#, &[("n", L(i64::MAX))], T),
    (r#"n = -9223372036854775808"#, &[("n", L(i64::MIN))], T),
    (r#"n = 0xFFFFFFFFFFFFFFFF"#, &[("n", L(-1))], T),
    (r#"n = 7."#, &[("n", D(7.0))], T),
    (r#"n = -95.7"#, &[("n", D(-95.7))], T),
    (r#"n = 6.E3"#, &[("n", D(6000.0))], T),
    (r#"n = 1e-5"#, &[("n", D(0.00001))], T),
    (r#"n = 7E3"#, &[("n", L(7000))], T),
    (r#"n = -57.9E2"#, &[("n", D(-5790.0))], T),
    (r#"n = .5"#, &[("n", D(0.5))], T),
    (r#"n = 2.5f"#, &[("n", D(2.5))], T),
    (r#"n = 1.1F"#, &[("n", D(1.1f32 as f64))], T),
    (r#"n = 1.1F"#, &[("n", D(1.1))], F),
    (r#"n = 1.1D"#, &[("n", D(1.1))], T),
    (r#"n = 3d"#, &[("n", D(3.0))], T),
    (r#"n = 1e+2"#, &[("n", L(100))], T),
    (r#"n = 9007199254740993"#, &[("n", D(9007199254740992.0))], T),
    (r#"n > 3"#, &[("n", S(r#"5"#))], F),
    (r#"n = '5'"#, &[("n", L(5))], F),
    (r#"n = 5"#, &[("n", B(true))], F),
    (r#"NOT (n = 5)"#, &[("n", S(r#"5"#))], T),
    (r#"n <> 5"#, &[("n", S(r#"5"#))], F),
    (r#"n < 5"#, &[("n", D(f64::NAN))], F),
    (r#"n <> 5"#, &[("n", D(f64::NAN))], T),
    (r#"n = n"#, &[("n", D(f64::NAN))], F),
    (r#"flag"#, &[("flag", B(true))], T),
    (r#"flag"#, &[("flag", B(false))], F),
    (r#"flag"#, &[], U),
    (r#"flag"#, &[("flag", S(r#"true"#))], U),
    (r#"flag = TRUE"#, &[("flag", B(true))], T),
    (r#"flag = true"#, &[("flag", B(false))], F),
    (r#"flag <> FALSE"#, &[("flag", B(true))], T),
    (r#"NOT flag"#, &[("flag", B(false))], T),
    (r#"TRUE"#, &[], T),
    (r#"FALSE"#, &[], F),
    (r#"flag = TRUE"#, &[("flag", S(r#"TRUE"#))], F),
    (r#"f1 < f2"#, &[("f1", B(true)), ("f2", B(false))], F),
    (r#"s1 > s2"#, &[("s1", S(r#"b"#)), ("s2", S(r#"a"#))], F),
    (r#"(n > 1) = TRUE"#, &[("n", L(2))], T),
    (r#"(n > 1) = (m > 1)"#, &[("n", L(0)), ("m", L(0))], T),
    (r#"(n > 1) = TRUE"#, &[], U),
    (r#"flag AND n = 1"#, &[("flag", B(true)), ("n", L(1))], T),
    (r#"n + 1 = 6"#, &[("n", L(5))], T),
    (r#"n - 1 = 4"#, &[("n", L(5))], T),
    (r#"n * 2 = 10"#, &[("n", L(5))], T),
    (r#"n / 2 = 2"#, &[("n", L(5))], T),
    (r#"n / 2 = 2.5"#, &[("n", D(5.0))], T),
    (r#"n / 2.0 = 2.5"#, &[("n", L(5))], T),
    (r#"-n = -5"#, &[("n", L(5))], T),
    (r#"- -n = 5"#, &[("n", L(5))], T),
    (r#"+n = 5"#, &[("n", L(5))], T),
    (r#"n / 0 = 1"#, &[("n", L(5))], U),
    (r#"NOT (n / 0 = 1)"#, &[("n", L(5))], U),
    (r#"n / 0.0 > 0"#, &[("n", D(5.0))], U),
    (r#"n + 1 > 0"#, &[("n", L(i64::MAX))], U),
    (r#"n * 2 < 0"#, &[("n", L(i64::MAX))], U),
    (r#"-n > 0"#, &[("n", L(i64::MIN))], U),
    (r#"n / -1 > 0"#, &[("n", L(i64::MIN))], U),
    (r#"n - 1 < 0"#, &[("n", L(i64::MIN))], U),
    (r#"n + 1 = 1"#, &[], U),
    (r#"n + m = 3"#, &[("n", L(1)), ("m", D(2.0))], T),
    (r#"n + 0.5 = 1.5"#, &[("n", L(1))], T),
    (r#"n - 3 < 0"#, &[("n", L(1))], T),
    (r#"s + 1 = 2"#, &[("s", S(r#"1"#))], U),
    (r#"b + 1 = 2"#, &[("b", B(true))], U),
    (r#"-s = 1"#, &[("s", S(r#"x"#))], U),
    (r#"n * 1e308 * 10 > 0"#, &[("n", D(10.0))], T),
    (r#"n / 3 = 0"#, &[("n", L(-2))], T),
    (r#"n / 2 = -2"#, &[("n", L(-5))], T),
    (r#"1 + 2 * 3 = 7"#, &[], T),
    (r#"(1 + 2) * 3 = 9"#, &[], T),
    (r#"10 - 4 - 3 = 3"#, &[], T),
    (r#"24 / 4 / 2 = 3"#, &[], T),
    (r#"-2 * 3 = -6"#, &[], T),
    (r#"2 - -2 = 4"#, &[], T),
    (r#"2--2 = 4"#, &[], T),
    (r#"a = 1 OR b = 1 AND c = 1"#, &[("a", L(1)), ("b", L(0)), ("c", L(0))], T),
    (r#"(a = 1 OR b = 1) AND c = 1"#, &[("a", L(1)), ("b", L(0)), ("c", L(0))], F),
    (r#"NOT a = 1 AND b = 1"#, &[("a", L(2)), ("b", L(1))], T),
    (r#"NOT (a = 1 AND b = 1)"#, &[("a", L(1)), ("b", L(2))], T),
    (r#"a = 1 OR NOT b = 1"#, &[("a", L(0)), ("b", L(0))], T),
    (r#"NOT NOT flag"#, &[("flag", B(true))], T),
    (r#"n + 1 BETWEEN 2 AND 3"#, &[("n", L(1))], T),
    (r#"n BETWEEN 1 AND 2 AND m = 1"#, &[("n", L(1)), ("m", L(1))], T),
    (r#"n BETWEEN 1 AND 2 OR m = 1"#, &[("n", L(5)), ("m", L(1))], T),
    (r#"a = 1 AND b = 1 AND c = 1 AND d = 1"#, &[("a", L(1)), ("b", L(1)), ("c", L(1)), ("d", L(1))], T),
    (r#"a = 1 AND b = 1 AND c = 1 AND d = 1"#, &[("a", L(1)), ("b", L(1)), ("c", L(1)), ("d", L(0))], F),
    (r#"a = 1 or b = 1"#, &[("a", L(1))], T),
    (r#"a = 1 AnD b = 2"#, &[("a", L(1)), ("b", L(2))], T),
    (r#"not a = 1"#, &[("a", L(2))], T),
    (r#"NOT (x > 1)"#, &[], U),
    (r#"x > 1 AND y = 1"#, &[("y", L(2))], F),
    (r#"x > 1 AND y = 1"#, &[("y", L(1))], U),
    (r#"x > 1 OR y = 1"#, &[("y", L(1))], T),
    (r#"x > 1 OR y = 1"#, &[("y", L(2))], U),
    (r#"y = 1 OR x > 1"#, &[("y", L(1))], T),
    (r#"y = 2 AND x > 1"#, &[("y", L(1))], F),
    (r#"NOT (x > 1 OR y = 1)"#, &[("y", L(2))], U),
    (r#"NOT (x > 1 AND y = 1)"#, &[("y", L(2))], T),
    (r#"x = 1 OR x <> 1"#, &[], U),
    (r#"x IS NULL"#, &[], T),
    (r#"x IS NULL"#, &[("x", L(1))], F),
    (r#"x IS NOT NULL"#, &[("x", S(r#""#))], T),
    (r#"x IS NOT NULL"#, &[], F),
    (r#"x is null"#, &[], T),
    (r#"NOT x IS NULL"#, &[("x", L(1))], T),
    (r#"x + 1 IS NULL"#, &[], T),
    (r#"x / 0 IS NULL"#, &[("x", L(1))], T),
    (r#"(x > 1) IS NULL"#, &[], T),
    (r#"(x > 1) IS NOT NULL"#, &[("x", L(0))], T),
    (r#"JMSType IS NULL"#, &[], T),
    (r#"JMSCorrelationID IS NOT NULL"#, &[("JMSCorrelationID", S(r#"abc"#))], T),
    (r#"n BETWEEN 1 AND 2"#, &[("n", L(1))], T),
    (r#"n BETWEEN 1 AND 2"#, &[("n", L(2))], T),
    (r#"n BETWEEN 1 AND 2"#, &[("n", L(3))], F),
    (r#"n BETWEEN 1 AND 2"#, &[("n", L(0))], F),
    (r#"n BETWEEN 1 AND 2"#, &[("n", D(1.5))], T),
    (r#"n BETWEEN 1 AND 2"#, &[], U),
    (r#"n NOT BETWEEN 1 AND 2"#, &[("n", L(3))], T),
    (r#"n NOT BETWEEN 1 AND 2"#, &[("n", L(1))], F),
    (r#"n NOT BETWEEN 1 AND 2"#, &[], U),
    (r#"n BETWEEN lo AND 2"#, &[("n", L(1))], U),
    (r#"n BETWEEN lo AND 2"#, &[("n", L(3))], F),
    (r#"n NOT BETWEEN lo AND 2"#, &[("n", L(3))], T),
    (r#"n NOT BETWEEN lo AND 2"#, &[("n", L(1))], U),
    (r#"n BETWEEN 2 AND 1"#, &[("n", L(1))], F),
    (r#"n BETWEEN 1.5 AND 2.5"#, &[("n", L(2))], T),
    (r#"n BETWEEN 1 AND 2"#, &[("n", S(r#"1"#))], F),
    (r#"n NOT BETWEEN 1 AND 2"#, &[("n", D(f64::NAN))], F),
    (r#"NOT (n BETWEEN 1 AND 2)"#, &[("n", D(f64::NAN))], T),
    (r#"n BETWEEN -5 AND -1"#, &[("n", L(-3))], T),
    (r#"n between 1 and 2"#, &[("n", L(1))], T),
    (r#"c IN ('a', 'b')"#, &[("c", S(r#"a"#))], T),
    (r#"c IN ('a', 'b')"#, &[("c", S(r#"z"#))], F),
    (r#"c IN ('a')"#, &[], U),
    (r#"c NOT IN ('a', 'b')"#, &[("c", S(r#"z"#))], T),
    (r#"c NOT IN ('a', 'b')"#, &[("c", S(r#"a"#))], F),
    (r#"c NOT IN ('a')"#, &[], U),
    (r#"c IN ('1')"#, &[("c", L(1))], U),
    (r#"c IN ('it''s')"#, &[("c", S(r#"it's"#))], T),
    (r#"c IN ('b','a','b','c')"#, &[("c", S(r#"c"#))], T),
    (r#"c IN ('b','a','b','c')"#, &[("c", S(r#"d"#))], F),
    (r#"c in ('A')"#, &[("c", S(r#"a"#))], F),
    (r#"NOT c IN ('a')"#, &[("c", S(r#"b"#))], T),
    (r#"c IN ('')"#, &[("c", S(r#""#))], T),
    (r#"s LIKE 'ab%'"#, &[("s", S(r#"abc"#))], T),
    (r#"s LIKE 'ab%'"#, &[("s", S(r#"xab"#))], F),
    (r#"s LIKE '%ab'"#, &[("s", S(r#"xab"#))], T),
    (r#"s LIKE '%b%'"#, &[("s", S(r#"abc"#))], T),
    (r#"s LIKE '%b%'"#, &[("s", S(r#"acd"#))], F),
    (r#"s LIKE 'a_c'"#, &[("s", S(r#"abc"#))], T),
    (r#"s LIKE 'a_c'"#, &[("s", S(r#"abbc"#))], F),
    (r#"s LIKE 'a%c'"#, &[("s", S(r#"ac"#))], T),
    (r#"s LIKE 'a%c'"#, &[("s", S(r#"abcd"#))], F),
    (r#"s LIKE '%'"#, &[("s", S(r#""#))], T),
    (r#"s LIKE '_'"#, &[("s", S(r#""#))], F),
    (r#"s LIKE 'abc'"#, &[("s", S(r#"abc"#))], T),
    (r#"s LIKE 'abc'"#, &[("s", S(r#"ABC"#))], F),
    (r#"s LIKE '\_%' ESCAPE '\'"#, &[("s", S(r#"_foo"#))], T),
    (r#"s LIKE '\_%' ESCAPE '\'"#, &[("s", S(r#"foo"#))], F),
    (r#"s LIKE '100!%' ESCAPE '!'"#, &[("s", S(r#"100%"#))], T),
    (r#"s LIKE '100!%' ESCAPE '!'"#, &[("s", S(r#"1000"#))], F),
    (r#"s LIKE 'a!!b' ESCAPE '!'"#, &[("s", S(r#"a!b"#))], T),
    (r#"s LIKE 'a!xb' ESCAPE '!'"#, &[("s", S(r#"axb"#))], T),
    (r#"s LIKE '%!_' ESCAPE '!'"#, &[("s", S(r#"a_"#))], T),
    (r#"s LIKE '%!_' ESCAPE '!'"#, &[("s", S(r#"ab"#))], F),
    (r#"s LIKE 'it''s%'"#, &[("s", S(r#"it's ok"#))], T),
    (r#"s NOT LIKE 'ab%'"#, &[("s", S(r#"abc"#))], F),
    (r#"s NOT LIKE 'ab%'"#, &[("s", S(r#"xyz"#))], T),
    (r#"s LIKE 'ab%'"#, &[], U),
    (r#"s NOT LIKE 'ab%'"#, &[], U),
    (r#"s LIKE '1%'"#, &[("s", L(12))], U),
    (r#"s LIKE '_é%'"#, &[("s", S(r#"xéz"#))], T),
    (r#"s LIKE '%.%'"#, &[("s", S(r#"a.b"#))], T),
    (r#"s LIKE '%.%'"#, &[("s", S(r#"ab"#))], F),
    (r#"s LIKE '[a]*'"#, &[("s", S(r#"[a]*"#))], T),
    (r#"s LIKE 'a%b%c'"#, &[("s", S(r#"abxbc"#))], T),
    (r#"s like 'A%'"#, &[("s", S(r#"Abc"#))], T),
    (r#"JMSDeliveryMode = 'PERSISTENT'"#, &[("JMSDeliveryMode", S(r#"PERSISTENT"#))], T),
    (r#"JMSDeliveryMode = 'NON_PERSISTENT'"#, &[("JMSDeliveryMode", S(r#"PERSISTENT"#))], F),
    (r#"JMSDeliveryMode = 'NON_PERSISTENT'"#, &[("JMSDeliveryMode", S(r#"NON_PERSISTENT"#))], T),
    (r#"JMSPriority > 4"#, &[("JMSPriority", L(7))], T),
    (r#"JMSPriority BETWEEN 0 AND 4"#, &[("JMSPriority", L(7))], F),
    (r#"JMSMessageID = 'ID:1'"#, &[("JMSMessageID", S(r#"ID:1"#))], T),
    (r#"JMSTimestamp > 1000"#, &[("JMSTimestamp", L(2000))], T),
    (r#"JMSCorrelationID = 'abc'"#, &[], U),
    (r#"JMSType = 'car' AND color = 'blue' AND weight > 2500"#, &[("JMSType", S(r#"car"#)), ("color", S(r#"blue"#)), ("weight", L(3000))], T),
    (r#"JMSType = 'car' AND color = 'blue' AND weight > 2500"#, &[("JMSType", S(r#"car"#)), ("color", S(r#"blue"#))], U),
    (r#"JMSExpiration = 0"#, &[("JMSExpiration", L(0))], T),
    (r#"JMSXDeliveryCount > 1"#, &[("JMSXDeliveryCount", L(2))], T),
    (r#"JMSXGroupID = 'g1'"#, &[("JMSXGroupID", S(r#"g1"#))], T),
    (r#"JMS_Vendor = 1"#, &[("JMS_Vendor", L(1))], T),
    (r#"JMSDeliveryTime <= JMSTimestamp"#, &[("JMSDeliveryTime", L(5)), ("JMSTimestamp", L(5))], T),
    (r#"$price > 1"#, &[("$price", L(2))], T),
    (r#"_x = 1"#, &[("_x", L(1))], T),
    (r#"größe = 1"#, &[("größe", L(1))], T),
    (r#"a1b2 = 1"#, &[("a1b2", L(1))], T),
    (r#"ANDY = 1"#, &[("ANDY", L(1))], T),
    (r#"Color = 'red'"#, &[("color", S(r#"red"#))], U),
    (r#"nullable IS NULL"#, &[], T),
    (r#"(((color = 'red')))"#, &[("color", S(r#"red"#))], T),
    (r#""#, &[], T),
    (r#"(a = 1 OR b = 2) AND (c LIKE 'x%' OR d IN ('p','q')) AND e BETWEEN 1 AND 10"#, &[("a", L(1)), ("c", S(r#"xy"#)), ("e", L(5))], T),
    (r#"(a = 1 OR b = 2) AND (c LIKE 'x%' OR d IN ('p','q')) AND e BETWEEN 1 AND 10"#, &[("a", L(1)), ("c", S(r#"yy"#)), ("d", S(r#"q"#)), ("e", L(11))], F),
    (r#"(a = 1 OR b = 2) AND (c LIKE 'x%' OR d IN ('p','q')) AND e BETWEEN 1 AND 10"#, &[("b", L(2)), ("d", S(r#"q"#)), ("e", L(1))], T),
    ("  color\t=\n'red'\r\n", &[("color", S("red"))], T),
    ("\t \n", &[("color", S("red"))], T),
    ("color='red'AND(n>1)", &[("color", S("red")), ("n", L(2))], T),
];

#[test]
fn table() {
    assert!(ROWS.len() >= 150, "only {} rows", ROWS.len());
    let mut failures = Vec::new();
    for (i, (text, props, expected)) in ROWS.iter().enumerate() {
        let selector = match Selector::parse(text) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("row {i}: {text:?} failed to parse: {e}"));
                continue;
            }
        };
        let source = Props(props);
        let got = selector.evaluate(&source);
        if got != *expected {
            failures.push(format!(
                "row {i}: {text:?} with {props:?}: expected {expected:?}, got {got:?}"
            ));
        }
        if selector.matches(&source) != (*expected == Truth::True) {
            failures.push(format!(
                "row {i}: {text:?}: matches() disagrees with evaluate()"
            ));
        }
        // NOT must invert TRUE and FALSE and keep UNKNOWN, whatever the selector is.
        if !text.trim().is_empty() {
            let negated = Selector::parse(&format!("NOT ({text})")).unwrap();
            let want = match expected {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Unknown => Truth::Unknown,
            };
            let got = negated.evaluate(&source);
            if got != want {
                failures.push(format!(
                    "row {i}: NOT ({text}): expected {want:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Invalid selectors: each must give an error (never a panic), and the listed ones a specific
/// message and column.
#[test]
fn invalid_selectors_are_rejected() {
    let invalid: &[&str] = &[
        "color = ",
        "(color = 'red'",
        "color = 'red",
        "color == 'red'",
        "color != 'red'",
        "color = \"red\"",
        "a = 1 AND",
        "AND a = 1",
        "a = 1 b = 2",
        "a = 1)",
        "()",
        "a = b = c",
        "a # b",
        "a BETWEEN 1",
        "a BETWEEN 1 OR 2",
        "a BETWEEN 'x' AND 'y'",
        "a NOT 5",
        "a IN ()",
        "a IN ('x',)",
        "a IN (1, 2)",
        "a IN 'x'",
        "a IN ('x'",
        "a LIKE b",
        "a LIKE 'x' ESCAPE",
        "a LIKE 'x' ESCAPE 'ab'",
        "a LIKE 'x' ESCAPE ''",
        "a LIKE 'x!' ESCAPE '!'",
        "a IS 5",
        "a IS NOT",
        "a NOT NULL",
        "a NOT IS NULL",
        "x = NULL",
        "NULL IS NULL",
        "'a' > 1",
        "1 = 'a'",
        "TRUE = 1",
        "a < TRUE",
        "x + 'a' = 1",
        "-'a' = 1",
        "1 AND x",
        "x OR 'a'",
        "NOT 5",
        "5",
        "x + 1",
        "'abc'",
        "5 LIKE 'a'",
        "TRUE IN ('a')",
        "a = 9223372036854775808",
        "a = 99999999999999999999",
        "a = 1e999",
        "a = 1e999f",
        "a = 0x",
        "a = 0xG",
        "a = 1e",
        "a = 1e+",
        "a = 09",
        "a = 12abc",
        "a = 1.2.3",
        "n=1OR n=2",
        "a = 0xFFFFFFFFFFFFFFFFF",
        "a = .",
        "JMSDestination = 'q'",
        "JMSReplyTo IS NULL",
        "JMSRedelivered = TRUE",
        "and = 1",
        "a = 1 AND OR b = 2",
        "a = -",
        "a *",
        "(",
        ")",
        ",",
        "'",
        "a LIKE 'x' ESCAPE 'y' ESCAPE 'z'",
    ];
    assert!(invalid.len() >= 25);
    for text in invalid {
        let result = Selector::parse(text);
        assert!(
            result.is_err(),
            "{text:?} should be rejected, parsed as {result:?}"
        );
    }

    let message = |text: &str| Selector::parse(text).unwrap_err().to_string();
    assert_eq!(
        message("(color = 'red'"),
        "expected ')', found end of selector at column 15"
    );
    assert_eq!(
        message("color = 'red"),
        "unterminated string literal at column 9"
    );
    assert_eq!(
        message("color != 'red'"),
        "'!=' is not a selector operator, use '<>' at column 7"
    );
    assert_eq!(
        message("a = 1 b = 2"),
        "expected AND, OR or end of selector, found identifier 'b' at column 7"
    );
    assert_eq!(
        message("'a' > 1"),
        "'>' works on numbers only, found a string at column 1"
    );
    assert_eq!(
        message("x = NULL"),
        "NULL can only be used in IS NULL or IS NOT NULL at column 5"
    );
    assert_eq!(
        message("a = 12abc"),
        "invalid numeric literal '12abc' at column 5"
    );
    assert_eq!(
        message("a = 09"),
        "invalid numeric literal '09' at column 5"
    );
    assert_eq!(
        message("a = 9223372036854775808"),
        "numeric literal '9223372036854775808' is out of range at column 5"
    );
    assert_eq!(
        message("JMSReplyTo IS NULL"),
        "header JMSReplyTo cannot be used in a selector at column 1"
    );
    assert_eq!(
        message("1 AND x"),
        "an operand of AND must be a boolean expression, found a number at column 1"
    );
    assert_eq!(
        message("x + 1"),
        "a selector must be a boolean expression, found a number at column 1"
    );
    assert_eq!(
        message("a LIKE 'x' ESCAPE 'ab'"),
        "ESCAPE must be a single character, found 'ab' at column 19"
    );
    assert_eq!(
        message("a IN ()"),
        "expected a string literal in the IN list, found ')' at column 7"
    );
    assert_eq!(
        message("a NOT 5"),
        "expected BETWEEN, IN or LIKE after NOT, found a number at column 7"
    );
    // Columns count characters, not bytes.
    assert_eq!(
        message("größe = 'ü"),
        "unterminated string literal at column 9"
    );
    assert_eq!(message("é # 1"), "unexpected character '#' at column 3");

    let err = Selector::parse("a = 1 AND b = ").unwrap_err();
    assert_eq!((err.column, err.offset), (15, 14));
    assert!(matches!(err.kind, SelectorErrorKind::Expected { .. }));
}

#[test]
fn limits() {
    // Nesting: parentheses, NOT and signs, each up to just under the limit and just over it.
    let parens = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Selector::parse(&parens(MAX_DEPTH - 1)).is_ok());
    let err = Selector::parse(&parens(100_000.min(MAX_SELECTOR_LEN / 2 - 4))).unwrap_err();
    assert_eq!(err.kind, SelectorErrorKind::TooDeep { max: MAX_DEPTH });
    assert!(Selector::parse(&format!("{}a", "NOT ".repeat(MAX_DEPTH - 1))).is_ok());
    assert!(Selector::parse(&format!("{}a", "NOT ".repeat(MAX_DEPTH + 1))).is_err());
    assert!(Selector::parse(&format!("{}a > 1", "-".repeat(MAX_DEPTH + 1))).is_err());
    assert!(Selector::parse(&format!("{}a > 1", "- ".repeat(MAX_DEPTH - 2))).is_ok());

    // Tree height: a left-deep arithmetic chain is bounded even without parentheses…
    let chain = |n: usize| format!("a{} > 1", " + a".repeat(n));
    assert!(Selector::parse(&chain(MAX_DEPTH - 3)).is_ok());
    let err = Selector::parse(&chain(2_000)).unwrap_err();
    assert_eq!(err.kind, SelectorErrorKind::TooDeep { max: MAX_DEPTH });
    // …while AND/OR chains are flattened, so a long conjunction is fine.
    let terms: Vec<String> = (0..1_000).map(|i| format!("p{i} = {i}")).collect();
    let conjunction = Selector::parse(&terms.join(" AND ")).unwrap();
    let props: Vec<(String, V)> = (0..1_000).map(|i| (format!("p{i}"), L(i))).collect();
    let props: Vec<(&str, V)> = props.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert!(conjunction.matches(&Props(&props)));
    assert_eq!(conjunction.identifiers().count(), 1_000);

    // A long IN list.
    let ids: Vec<String> = (0..500).map(|i| format!("'ID:{i:05}'")).collect();
    let in_list = Selector::parse(&format!("JMSMessageID IN ({})", ids.join(", "))).unwrap();
    assert!(in_list.matches(&Props(&[("JMSMessageID", S("ID:00499"))])));
    assert!(!in_list.matches(&Props(&[("JMSMessageID", S("ID:00500"))])));

    // Length.
    let long = format!("a = '{}'", "x".repeat(MAX_SELECTOR_LEN));
    let err = Selector::parse(&long).unwrap_err();
    assert!(
        matches!(err.kind, SelectorErrorKind::TooLong { .. }),
        "{err}"
    );
    let just_fits = format!("a = '{}'", "x".repeat(MAX_SELECTOR_LEN - 6));
    assert!(Selector::parse(&just_fits).is_ok());
}

#[test]
fn accessors_and_traits() {
    fn assert_traits<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
    assert_traits::<Selector>();
    assert_traits::<SelectorError>();

    let s = Selector::parse("b = 1 AND a LIKE 'x%' OR b IS NULL").unwrap();
    assert_eq!(s.text(), "b = 1 AND a LIKE 'x%' OR b IS NULL");
    assert_eq!(s.to_string(), s.text());
    assert_eq!(s.identifiers().collect::<Vec<_>>(), ["a", "b"]);
    assert!(!s.is_empty());
    let copy = s.clone();
    assert!(copy.matches(&Props(&[])));

    let empty: Selector = "  ".parse().unwrap();
    assert!(empty.is_empty());
    assert!(empty.matches(&Props(&[])));
    assert_eq!(empty.identifiers().count(), 0);

    // A source that hands out owned strings works too (e.g. a computed JMSDeliveryMode).
    struct Owned;
    impl SelectorSource for Owned {
        fn value(&self, identifier: &str) -> Option<SelectorValue<'_>> {
            (identifier == headers::JMS_DELIVERY_MODE)
                .then(|| SelectorValue::Str(Cow::Owned(headers::PERSISTENT.to_owned())))
        }
    }
    let s = Selector::parse("JMSDeliveryMode = 'PERSISTENT'").unwrap();
    assert!(s.matches(&Owned));
}

/// xorshift64*: deterministic, dependency-free randomness for the fuzz loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that like to break arithmetic and comparisons.
fn random_value(rng: &mut Rng) -> Option<V> {
    const VALUES: [V; 14] = [
        L(0),
        L(1),
        L(-1),
        L(i64::MAX),
        L(i64::MIN),
        D(0.0),
        D(-0.0),
        D(1.5),
        D(f64::NAN),
        D(f64::INFINITY),
        S(""),
        S("a%_"),
        B(true),
        B(false),
    ];
    let i = rng.below(VALUES.len() + 2);
    VALUES.get(i).copied()
}

fn check_no_panic(text: &str, rng: &mut Rng) {
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let names = ["a", "b", "c", "JMSPriority"];
    let values: Vec<(&str, V)> = names
        .iter()
        .filter_map(|name| random_value(rng).map(|v| (*name, v)))
        .collect();
    let source = Props(&values);
    let truth = selector.evaluate(&source);
    assert_eq!(selector.matches(&source), truth == Truth::True);
    // Whatever parsed must also parse negated, and NOT must behave.
    if !selector.is_empty() {
        let negated = Selector::parse(&format!("NOT ({text})"));
        if let Ok(negated) = negated {
            let want = match truth {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Unknown => Truth::Unknown,
            };
            assert_eq!(negated.evaluate(&source), want, "NOT ({text})");
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5EED_0000_0000_0001);
    for _ in 0..20_000 {
        let len = rng.below(48);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // Mostly selector-ish ASCII, sometimes anything (including invalid UTF-8).
                if rng.below(8) == 0 {
                    rng.next() as u8
                } else {
                    b" ()'=<>!+-*/.,_%$0123456789abcxeEfFLlAND"[rng.below(40)]
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        check_no_panic(&text, &mut rng);
    }
}

#[test]
fn random_token_soup_never_panics() {
    const WORDS: &[&str] = &[
        "a",
        "b",
        "c",
        "JMSPriority",
        "JMSReplyTo",
        "AND",
        "OR",
        "NOT",
        "BETWEEN",
        "LIKE",
        "IN",
        "IS",
        "NULL",
        "ESCAPE",
        "TRUE",
        "FALSE",
        "(",
        ")",
        "(",
        ")",
        ",",
        "=",
        "<>",
        "<",
        ">",
        "<=",
        ">=",
        "+",
        "-",
        "*",
        "/",
        "0",
        "1",
        "-1",
        "9223372036854775807",
        "9223372036854775808",
        "0x7FFFFFFFFFFFFFFF",
        "1.5",
        "1e308",
        "2.5f",
        "0.0",
        "'x'",
        "'a%'",
        "'_'",
        "'!'",
        "''''",
        "'",
        "!=",
        "#",
    ];
    let mut rng = Rng(0xC0FF_EE00_1234_5678);
    let mut parsed = 0;
    for _ in 0..60_000 {
        let n = 1 + rng.below(12);
        let text: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len())]).collect();
        let text = text.join(" ");
        if Selector::parse(&text).is_ok() {
            parsed += 1;
        }
        check_no_panic(&text, &mut rng);
    }
    // The soup must actually reach the evaluator, not only the error paths.
    assert!(parsed > 300, "only {parsed} soups parsed");
}

/// A random well-formed selector, so the evaluator gets real work; `mangle` then breaks some of
/// them at a random point to probe the parser's error paths near valid input.
fn gen_condition(rng: &mut Rng, depth: usize, out: &mut String) {
    let leaf = depth == 0 || rng.below(3) == 0;
    if leaf {
        match rng.below(9) {
            0 => {
                gen_value(rng, depth.saturating_sub(1), out);
                out.push_str([" = ", " <> ", " < ", " >= "][rng.below(4)]);
                gen_value(rng, depth.saturating_sub(1), out);
            }
            1 => {
                gen_value(rng, depth.saturating_sub(1), out);
                out.push_str([" BETWEEN ", " NOT BETWEEN "][rng.below(2)]);
                gen_value(rng, 0, out);
                out.push_str(" AND ");
                gen_value(rng, 0, out);
            }
            2 => out.push_str(
                ["a IN ('a%_', '')", "b NOT IN ('x')", "c in ('a%_','y','')"][rng.below(3)],
            ),
            3 => out.push_str(
                ["a LIKE 'a%'", "b NOT LIKE '%!_' ESCAPE '!'", "c LIKE '_%_'"][rng.below(3)],
            ),
            4 => out.push_str(["a IS NULL", "b IS NOT NULL", "(a + 1) IS NULL"][rng.below(3)]),
            5 => out.push_str(["a", "b", "TRUE", "FALSE"][rng.below(4)]),
            6 => out.push_str(["a = 'a%_'", "b <> ''", "c = TRUE", "a = b"][rng.below(4)]),
            _ => {
                gen_value(rng, 1, out);
                out.push_str(" > ");
                gen_value(rng, 1, out);
            }
        }
        return;
    }
    match rng.below(4) {
        0 => {
            out.push_str("NOT ");
            gen_condition(rng, depth - 1, out);
        }
        1 => {
            out.push('(');
            gen_condition(rng, depth - 1, out);
            out.push(')');
        }
        _ => {
            gen_condition(rng, depth - 1, out);
            out.push_str([" AND ", " OR "][rng.below(2)]);
            gen_condition(rng, depth - 1, out);
        }
    }
}

fn gen_value(rng: &mut Rng, depth: usize, out: &mut String) {
    if depth == 0 || rng.below(2) == 0 {
        out.push_str(
            [
                "a",
                "b",
                "c",
                "JMSPriority",
                "0",
                "1",
                "-1",
                "2.5",
                "-9223372036854775808",
                "0x7FFFFFFFFFFFFFFF",
                "1e308",
                "0.0",
            ][rng.below(12)],
        );
        return;
    }
    match rng.below(3) {
        0 => {
            out.push_str(["-", "+", "- "][rng.below(3)]);
            gen_value(rng, depth - 1, out);
        }
        1 => {
            out.push('(');
            gen_value(rng, depth - 1, out);
            out.push(')');
        }
        _ => {
            gen_value(rng, depth - 1, out);
            out.push_str([" + ", " - ", " * ", " / "][rng.below(4)]);
            gen_value(rng, depth - 1, out);
        }
    }
}

#[test]
fn random_valid_selectors_evaluate_without_panicking() {
    let mut rng = Rng(0xA11C_E5EE_D000_0007);
    for _ in 0..20_000 {
        let mut text = String::new();
        gen_condition(&mut rng, 5, &mut text);
        let parsed = Selector::parse(&text);
        assert!(parsed.is_ok(), "{text:?}: {:?}", parsed.err());
        check_no_panic(&text, &mut rng);
        // Cut it short or splice in a stray character: must still never panic.
        let cut = rng.below(text.len() + 1);
        if let Some(prefix) = text.get(..cut) {
            check_no_panic(prefix, &mut rng);
            let stray = ["(", ")", "'", "NOT", "1", ",", "AND"][rng.below(7)];
            check_no_panic(&format!("{prefix}{stray}{}", &text[cut..]), &mut rng);
        }
    }
}

#[test]
fn deep_random_nesting_never_overflows_the_stack() {
    let mut rng = Rng(42);
    for _ in 0..200 {
        let n = rng.below(5_000);
        let opener = ["(", "NOT ", "-", "+", "( NOT "][rng.below(5)];
        let text = format!("{}a{}", opener.repeat(n), ")".repeat(n));
        let _ = Selector::parse(&text);
    }
}
