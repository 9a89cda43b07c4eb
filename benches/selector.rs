//! Selector hot paths: evaluating a parsed selector against one message, and parsing.
//!
//! Run: `cargo bench --bench selector`. The message is looked up the way a broker would: a few
//! headers by name, then a linear scan over a small property list.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_protocol::selector::{Selector, SelectorSource, SelectorValue};

const SIMPLE: &str = "color = 'red'";
const COMPLEX: &str = "(JMSPriority BETWEEN 4 AND 9 OR urgent = TRUE) \
    AND region IN ('eu-west', 'eu-central', 'us-east') \
    AND customer LIKE 'acme%' AND amount * 1.2 > 100 AND color <> 'blue'";

struct Message {
    priority: i64,
    properties: Vec<(&'static str, SelectorValue<'static>)>,
}

impl SelectorSource for Message {
    fn value(&self, identifier: &str) -> Option<SelectorValue<'_>> {
        if identifier == "JMSPriority" {
            return Some(SelectorValue::Long(self.priority));
        }
        self.properties
            .iter()
            .find(|(name, _)| *name == identifier)
            .map(|(_, v)| v.clone())
    }
}

fn message() -> Message {
    Message {
        priority: 2,
        properties: vec![
            ("urgent", SelectorValue::Bool(true)),
            ("region", SelectorValue::Str(Cow::Borrowed("us-east"))),
            (
                "customer",
                SelectorValue::Str(Cow::Borrowed("acme-widgets")),
            ),
            ("amount", SelectorValue::Long(250)),
            ("color", SelectorValue::Str(Cow::Borrowed("red"))),
        ],
    }
}

fn bench(c: &mut Criterion) {
    let msg = message();
    let simple = Selector::parse(SIMPLE).unwrap();
    let complex = Selector::parse(COMPLEX).unwrap();
    assert!(simple.matches(&msg));
    assert!(complex.matches(&msg));

    c.bench_function("selector/eval_simple", |b| {
        b.iter(|| black_box(&simple).matches(black_box(&msg)))
    });
    c.bench_function("selector/eval_complex", |b| {
        b.iter(|| black_box(&complex).matches(black_box(&msg)))
    });
    c.bench_function("selector/parse_simple", |b| {
        b.iter(|| Selector::parse(black_box(SIMPLE)).unwrap())
    });
    c.bench_function("selector/parse_complex", |b| {
        b.iter(|| Selector::parse(black_box(COMPLEX)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
