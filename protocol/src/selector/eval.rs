//! The selector AST and its evaluation under SQL three-valued logic.
//!
//! Evaluation borrows everything: string literals from the AST, property strings from the
//! [`SelectorSource`]; nothing is allocated unless the source itself hands out owned strings.
//! Recursion depth is bounded by the parser ([`super::MAX_DEPTH`]).

use std::borrow::Cow;
use std::cmp::Ordering;

use super::like::LikeMatcher;
use super::{SelectorSource, SelectorValue};

/// SQL truth value: a selector matches only when it evaluates to `True`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    False,
    True,
    Unknown,
}

impl Truth {
    fn from_bool(b: bool) -> Self {
        if b { Truth::True } else { Truth::False }
    }

    fn not(self) -> Self {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    /// `NOT` applied when `negate` is set (for `NOT LIKE`, `NOT IN`, …).
    fn negate_if(self, negate: bool) -> Self {
        if negate { self.not() } else { self }
    }

    fn into_value(self) -> Option<SelectorValue<'static>> {
        match self {
            Truth::True => Some(SelectorValue::Bool(true)),
            Truth::False => Some(SelectorValue::Bool(false)),
            Truth::Unknown => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn is_equality(self) -> bool {
        matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
        }
    }

    /// IEEE semantics, as Java's `double` comparisons: any comparison with NaN is false, except
    /// `<>`, which is true.
    fn holds_f64(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
pub(crate) enum Literal {
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(Box<str>),
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Literal(Literal),
    Ident(Box<str>),
    /// Unary `-` (`negate`) or `+`; both yield NULL for a non-numeric operand.
    Sign {
        negate: bool,
        operand: Box<Expr>,
    },
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Between {
        negated: bool,
        value: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
    },
    /// `list` is sorted and deduplicated so membership is a binary search.
    In {
        negated: bool,
        value: Box<Expr>,
        list: Box<[Box<str>]>,
    },
    Like {
        negated: bool,
        value: Box<Expr>,
        matcher: LikeMatcher,
    },
    IsNull {
        negated: bool,
        value: Box<Expr>,
    },
    Not(Box<Expr>),
    /// n-ary so that long `a AND b AND c …` chains stay shallow.
    And(Box<[Expr]>),
    Or(Box<[Expr]>),
}

type Value<'e> = Option<SelectorValue<'e>>;

impl Expr {
    /// The expression in a condition (`WHERE`) position.
    pub(crate) fn truth(&self, src: &dyn SelectorSource) -> Truth {
        match self {
            Expr::Cmp(op, l, r) => compare(*op, &l.value(src), &r.value(src)),
            Expr::Between {
                negated,
                value,
                low,
                high,
            } => {
                let v = value.value(src);
                if v.is_none() {
                    return Truth::Unknown;
                }
                let (low, high) = (low.value(src), high.value(src));
                if *negated {
                    // The spec defines NOT BETWEEN as `v < low OR v > high` (not as the negation
                    // of BETWEEN); the two differ only for NaN, where this form is FALSE like Java.
                    or2(compare(CmpOp::Lt, &v, &low), || {
                        compare(CmpOp::Gt, &v, &high)
                    })
                } else {
                    and2(compare(CmpOp::Ge, &v, &low), || {
                        compare(CmpOp::Le, &v, &high)
                    })
                }
            }
            Expr::In {
                negated,
                value,
                list,
            } => match value.value(src) {
                Some(SelectorValue::Str(s)) => {
                    let found = list.binary_search_by(|item| (**item).cmp(&*s)).is_ok();
                    Truth::from_bool(found).negate_if(*negated)
                }
                // NULL, or a non-string: no implicit conversion, so the answer is unknown.
                _ => Truth::Unknown,
            },
            Expr::Like {
                negated,
                value,
                matcher,
            } => match value.value(src) {
                Some(SelectorValue::Str(s)) => {
                    Truth::from_bool(matcher.matches(&s)).negate_if(*negated)
                }
                _ => Truth::Unknown,
            },
            Expr::IsNull { negated, value } => {
                Truth::from_bool(value.value(src).is_none()).negate_if(*negated)
            }
            Expr::Not(inner) => inner.truth(src).not(),
            Expr::And(terms) => {
                let mut acc = Truth::True;
                for term in terms.iter() {
                    match term.truth(src) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                acc
            }
            Expr::Or(terms) => {
                let mut acc = Truth::False;
                for term in terms.iter() {
                    match term.truth(src) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                acc
            }
            // A value used as a condition: only a boolean can be TRUE or FALSE.
            Expr::Literal(_) | Expr::Ident(_) | Expr::Sign { .. } | Expr::Arith(..) => {
                match self.value(src) {
                    Some(SelectorValue::Bool(b)) => Truth::from_bool(b),
                    _ => Truth::Unknown,
                }
            }
        }
    }

    /// The expression in a value position. `None` is SQL NULL.
    pub(crate) fn value<'e>(&'e self, src: &'e dyn SelectorSource) -> Value<'e> {
        match self {
            Expr::Literal(lit) => Some(match lit {
                Literal::Bool(b) => SelectorValue::Bool(*b),
                Literal::Long(n) => SelectorValue::Long(*n),
                Literal::Double(d) => SelectorValue::Double(*d),
                Literal::Str(s) => SelectorValue::Str(Cow::Borrowed(s)),
            }),
            Expr::Ident(name) => src.value(name),
            Expr::Sign { negate, operand } => match operand.value(src)? {
                SelectorValue::Long(n) if *negate => n.checked_neg().map(SelectorValue::Long),
                SelectorValue::Double(d) if *negate => Some(SelectorValue::Double(-d)),
                v @ (SelectorValue::Long(_) | SelectorValue::Double(_)) => Some(v),
                SelectorValue::Bool(_) | SelectorValue::Str(_) => None,
            },
            Expr::Arith(op, l, r) => {
                let l = l.value(src)?;
                let r = r.value(src)?;
                arith(*op, &l, &r)
            }
            Expr::Cmp(..)
            | Expr::Between { .. }
            | Expr::In { .. }
            | Expr::Like { .. }
            | Expr::IsNull { .. }
            | Expr::Not(_)
            | Expr::And(_)
            | Expr::Or(_) => self.truth(src).into_value(),
        }
    }
}

fn and2(first: Truth, second: impl FnOnce() -> Truth) -> Truth {
    match first {
        Truth::False => Truth::False,
        Truth::True => second(),
        Truth::Unknown => match second() {
            Truth::False => Truth::False,
            _ => Truth::Unknown,
        },
    }
}

fn or2(first: Truth, second: impl FnOnce() -> Truth) -> Truth {
    match first {
        Truth::True => Truth::True,
        Truth::False => second(),
        Truth::Unknown => match second() {
            Truth::True => Truth::True,
            _ => Truth::Unknown,
        },
    }
}

/// Comparison with Java numeric promotion (a `long` meeting a `double` is widened to `double`).
/// NULL on either side is UNKNOWN; so is any pair of unlike types, and `<`/`>`/`<=`/`>=` on
/// strings or booleans (see the module docs for why UNKNOWN rather than the spec's FALSE).
fn compare(op: CmpOp, l: &Value<'_>, r: &Value<'_>) -> Truth {
    use SelectorValue as V;
    let (Some(l), Some(r)) = (l, r) else {
        return Truth::Unknown;
    };
    match (l, r) {
        (V::Long(a), V::Long(b)) => Truth::from_bool(op.holds(a.cmp(b))),
        (V::Long(a), V::Double(b)) => Truth::from_bool(op.holds_f64(*a as f64, *b)),
        (V::Double(a), V::Long(b)) => Truth::from_bool(op.holds_f64(*a, *b as f64)),
        (V::Double(a), V::Double(b)) => Truth::from_bool(op.holds_f64(*a, *b)),
        (V::Str(a), V::Str(b)) if op.is_equality() => {
            Truth::from_bool((a == b) == (op == CmpOp::Eq))
        }
        (V::Bool(a), V::Bool(b)) if op.is_equality() => {
            Truth::from_bool((a == b) == (op == CmpOp::Eq))
        }
        // JMS 3.1 §3.8.1.2: "If the comparison of non-like type values is attempted, the value of
        // the operation is false" -- so `NOT (s = 5)` is TRUE for a string s. Ordering strings or
        // booleans is outside the allowed comparisons and is false the same way.
        _ => Truth::False,
    }
}

/// Arithmetic with Java numeric promotion. Where Java would throw (integer division by zero) or
/// silently wrap (`long` overflow), the result is NULL instead, so the enclosing comparison is
/// UNKNOWN; a `double` division by zero is NULL too rather than an infinity or NaN.
fn arith(op: ArithOp, l: &SelectorValue<'_>, r: &SelectorValue<'_>) -> Value<'static> {
    use SelectorValue as V;
    match (l, r) {
        (V::Long(a), V::Long(b)) => {
            let (a, b) = (*a, *b);
            match op {
                ArithOp::Add => a.checked_add(b),
                ArithOp::Sub => a.checked_sub(b),
                ArithOp::Mul => a.checked_mul(b),
                // Truncates toward zero like Java; None for b == 0 and for MIN / -1.
                ArithOp::Div => a.checked_div(b),
            }
            .map(V::Long)
        }
        (V::Long(a), V::Double(b)) => arith_f64(op, *a as f64, *b),
        (V::Double(a), V::Long(b)) => arith_f64(op, *a, *b as f64),
        (V::Double(a), V::Double(b)) => arith_f64(op, *a, *b),
        _ => None,
    }
}

fn arith_f64(op: ArithOp, a: f64, b: f64) -> Value<'static> {
    let v = match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div if b == 0.0 => return None,
        ArithOp::Div => a / b,
    };
    Some(SelectorValue::Double(v))
}
