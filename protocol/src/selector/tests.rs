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
    (r#"n > 3"#, &[("n", S(r#"5"#))], U),
    (r#"n = '5'"#, &[("n", L(5))], U),
    (r#"n = 5"#, &[("n", B(true))], U),
    (r#"NOT (n = 5)"#, &[("n", S(r#"5"#))], U),
    (r#"n <> 5"#, &[("n", S(r#"5"#))], U),
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
    (r#"flag = TRUE"#, &[("flag", S(r#"TRUE"#))], U),
    (r#"f1 < f2"#, &[("f1", B(true)), ("f2", B(false))], U),
    (r#"s1 > s2"#, &[("s1", S(r#"b"#)), ("s2", S(r#"a"#))], U),
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
    (r#"n BETWEEN 1 AND 2"#, &[("n", S(r#"1"#))], U),
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
            failures.push(format!("row {i}: {text:?} with {props:?}: expected {expected:?}, got {got:?}"));
        }
        if selector.matches(&source) != (*expected == Truth::True) {
            failures.push(format!("row {i}: {text:?}: matches() disagrees with evaluate()"));
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
                failures.push(format!("row {i}: NOT ({text}): expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
