//! Recursive-descent parser: tokens in, a type-checked [`Expr`] out.
//!
//! One function per precedence level (see the grammar in the module docs of `selector`).
//! Two separate bounds keep hostile input from exhausting the stack: `nesting` counts the
//! recursive descents (parentheses, `NOT`, unary signs) before any node exists, and every node
//! carries the depth of the tree below it, which also bounds left-deep chains such as
//! `a + a + a + …` (AND and OR chains are flattened and stay shallow).

use super::error::{SelectorError, SelectorErrorKind as K};
use super::eval::{ArithOp, CmpOp, Expr, Literal};
use super::lexer::{Spanned, Tok, tokenize};
use super::like::{LikeMatcher, PatternError};
use super::{FORBIDDEN_HEADERS, MAX_DEPTH, MAX_SELECTOR_LEN};

/// What the parser can tell about an expression's type without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Num,
    Str,
    /// An identifier (or arithmetic-free expression over one): only known per message.
    Any,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Num => "a number",
            Kind::Str => "a string",
            Kind::Any => "a value",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Kind::Num | Kind::Any)
    }

    fn condition(self) -> bool {
        matches!(self, Kind::Bool | Kind::Any)
    }

    fn stringy(self) -> bool {
        matches!(self, Kind::Str | Kind::Any)
    }
}

struct Node {
    expr: Expr,
    kind: Kind,
    /// Height of the tree rooted here (a leaf is 1).
    depth: usize,
    /// Byte offset of the node's first token, for type errors.
    start: usize,
}

pub(crate) struct Parsed {
    pub(crate) expr: Expr,
    pub(crate) identifiers: Vec<Box<str>>,
}

pub(crate) fn parse(text: &str) -> Result<Parsed, SelectorError> {
    if text.len() > MAX_SELECTOR_LEN {
        return Err(SelectorError::at(
            text,
            MAX_SELECTOR_LEN,
            K::TooLong {
                len: text.len(),
                max: MAX_SELECTOR_LEN,
            },
        ));
    }
    let tokens = tokenize(text)?;
    let mut p = Parser {
        text,
        tokens,
        pos: 0,
        nesting: 0,
        identifiers: Vec::new(),
    };
    if p.peek() == &Tok::Eof {
        // The spec treats an empty selector as no selector at all: everything matches.
        return Ok(Parsed {
            expr: Expr::Literal(Literal::Bool(true)),
            identifiers: Vec::new(),
        });
    }
    let node = p.or()?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected("AND, OR or end of selector"));
    }
    p.condition(&node, "a selector")?;
    let mut identifiers = p.identifiers;
    identifiers.sort_unstable();
    identifiers.dedup();
    Ok(Parsed {
        expr: node.expr,
        identifiers,
    })
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Spanned<'a>>,
    pos: usize,
    nesting: usize,
    identifiers: Vec<Box<str>>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok<'a> {
        // The token list always ends with Eof and `pos` never moves past it.
        &self.tokens[self.pos].0
    }

    fn peek_at(&self, ahead: usize) -> &Tok<'a> {
        let i = (self.pos + ahead).min(self.tokens.len() - 1);
        &self.tokens[i].0
    }

    fn offset(&self) -> usize {
        self.tokens[self.pos].1
    }

    fn bump(&mut self) -> Tok<'a> {
        let tok = self.tokens[self.pos].0.clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        tok
    }

    fn eat(&mut self, tok: &Tok<'_>) -> bool {
        if self.peek() == tok {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok<'_>, expected: &'static str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn error(&self, offset: usize, kind: K) -> SelectorError {
        SelectorError::at(self.text, offset, kind)
    }

    fn unexpected(&self, expected: &'static str) -> SelectorError {
        self.error(
            self.offset(),
            K::Expected {
                expected,
                found: self.peek().describe(),
            },
        )
    }

    fn enter(&mut self) -> Result<(), SelectorError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.error(self.offset(), K::TooDeep { max: MAX_DEPTH }));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    fn node(
        &self,
        expr: Expr,
        kind: Kind,
        children: &[usize],
        start: usize,
    ) -> Result<Node, SelectorError> {
        let depth = children.iter().copied().max().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(self.error(start, K::TooDeep { max: MAX_DEPTH }));
        }
        Ok(Node {
            expr,
            kind,
            depth,
            start,
        })
    }

    fn leaf(&self, expr: Expr, kind: Kind, start: usize) -> Node {
        Node {
            expr,
            kind,
            depth: 1,
            start,
        }
    }

    fn type_error(&self, node: &Node, message: String) -> SelectorError {
        self.error(node.start, K::Type(message))
    }

    fn condition(&self, node: &Node, context: &str) -> Result<(), SelectorError> {
        if node.kind.condition() {
            Ok(())
        } else {
            Err(self.type_error(
                node,
                format!(
                    "{context} must be a boolean expression, found {}",
                    node.kind.name()
                ),
            ))
        }
    }

    fn numeric(&self, node: &Node, op: &str) -> Result<(), SelectorError> {
        if node.kind.numeric() {
            Ok(())
        } else {
            Err(self.type_error(
                node,
                format!("'{op}' works on numbers only, found {}", node.kind.name()),
            ))
        }
    }

    fn stringy(&self, node: &Node, op: &str) -> Result<(), SelectorError> {
        if node.kind.stringy() {
            Ok(())
        } else {
            Err(self.type_error(
                node,
                format!("{op} works on strings only, found {}", node.kind.name()),
            ))
        }
    }

    /// `or_expr = and_expr { OR and_expr }`
    fn or(&mut self) -> Result<Node, SelectorError> {
        self.chain(Tok::Or, "OR", Self::and, |terms| {
            Expr::Or(terms.into_boxed_slice())
        })
    }

    /// `and_expr = not_expr { AND not_expr }`
    fn and(&mut self) -> Result<Node, SelectorError> {
        self.chain(Tok::And, "AND", Self::not, |terms| {
            Expr::And(terms.into_boxed_slice())
        })
    }

    fn chain(
        &mut self,
        op: Tok<'static>,
        name: &str,
        mut operand: impl FnMut(&mut Self) -> Result<Node, SelectorError>,
        build: impl FnOnce(Vec<Expr>) -> Expr,
    ) -> Result<Node, SelectorError> {
        let first = operand(self)?;
        if self.peek() != &op {
            return Ok(first);
        }
        let start = first.start;
        let context = format!("an operand of {name}");
        self.condition(&first, &context)?;
        let mut depth = first.depth;
        let mut terms = vec![first.expr];
        while self.eat(&op) {
            let next = operand(self)?;
            self.condition(&next, &context)?;
            depth = depth.max(next.depth);
            terms.push(next.expr);
        }
        self.node(build(terms), Kind::Bool, &[depth], start)
    }

    /// `not_expr = NOT not_expr | predicate`
    fn not(&mut self) -> Result<Node, SelectorError> {
        if self.peek() != &Tok::Not {
            return self.predicate();
        }
        let start = self.offset();
        self.bump();
        self.enter()?;
        let inner = self.not()?;
        self.leave();
        self.condition(&inner, "the operand of NOT")?;
        let depth = inner.depth;
        self.node(Expr::Not(Box::new(inner.expr)), Kind::Bool, &[depth], start)
    }

    /// `predicate = additive [ comparison | [NOT] BETWEEN … | [NOT] IN … | [NOT] LIKE … | IS [NOT] NULL ]`
    fn predicate(&mut self) -> Result<Node, SelectorError> {
        let left = self.additive()?;
        let start = left.start;
        let op = match self.peek() {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            let symbol = match op {
                CmpOp::Eq => "=",
                CmpOp::Ne => "<>",
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
            };
            self.bump();
            let right = self.additive()?;
            if matches!(op, CmpOp::Eq | CmpOp::Ne) {
                if left.kind != Kind::Any && right.kind != Kind::Any && left.kind != right.kind {
                    return Err(self.type_error(
                        &left,
                        format!(
                            "cannot compare {} with {}",
                            left.kind.name(),
                            right.kind.name()
                        ),
                    ));
                }
            } else {
                self.numeric(&left, symbol)?;
                self.numeric(&right, symbol)?;
            }
            let depth = [left.depth, right.depth];
            return self.node(
                Expr::Cmp(op, Box::new(left.expr), Box::new(right.expr)),
                Kind::Bool,
                &depth,
                start,
            );
        }

        let negated = if self.peek() == &Tok::Not
            && matches!(self.peek_at(1), Tok::Between | Tok::In | Tok::Like)
        {
            self.bump();
            true
        } else if self.peek() == &Tok::Not {
            self.bump();
            return Err(self.unexpected("BETWEEN, IN or LIKE after NOT"));
        } else {
            false
        };

        match self.peek() {
            Tok::Between => {
                self.bump();
                self.numeric(&left, "BETWEEN")?;
                let low = self.additive()?;
                self.numeric(&low, "BETWEEN")?;
                self.expect(&Tok::And, "AND in BETWEEN … AND …")?;
                let high = self.additive()?;
                self.numeric(&high, "BETWEEN")?;
                let depth = [left.depth, low.depth, high.depth];
                self.node(
                    Expr::Between {
                        negated,
                        value: Box::new(left.expr),
                        low: Box::new(low.expr),
                        high: Box::new(high.expr),
                    },
                    Kind::Bool,
                    &depth,
                    start,
                )
            }
            Tok::In => {
                self.bump();
                self.stringy(&left, "IN")?;
                self.expect(&Tok::LParen, "'(' after IN")?;
                let mut list: Vec<Box<str>> = Vec::new();
                loop {
                    let Tok::Str(s) = self.peek() else {
                        return Err(self.unexpected("a string literal in the IN list"));
                    };
                    list.push(s.as_ref().into());
                    self.bump();
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.expect(&Tok::RParen, "',' or ')' in the IN list")?;
                list.sort_unstable();
                list.dedup();
                let depth = left.depth;
                self.node(
                    Expr::In {
                        negated,
                        value: Box::new(left.expr),
                        list: list.into_boxed_slice(),
                    },
                    Kind::Bool,
                    &[depth],
                    start,
                )
            }
            Tok::Like => {
                self.bump();
                self.stringy(&left, "LIKE")?;
                let pattern_at = self.offset();
                let pattern = match self.peek() {
                    Tok::Str(s) => s.clone(),
                    _ => return Err(self.unexpected("a string literal pattern after LIKE")),
                };
                self.bump();
                let escape = if self.eat(&Tok::Escape) {
                    let escape_at = self.offset();
                    let Tok::Str(s) = self.peek().clone() else {
                        return Err(self.unexpected("a string literal after ESCAPE"));
                    };
                    self.bump();
                    let mut chars = s.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => Some(c),
                        _ => {
                            return Err(self.error(
                                escape_at,
                                K::Escape(format!(
                                    "ESCAPE must be a single character, found '{s}'"
                                )),
                            ));
                        }
                    }
                } else {
                    None
                };
                let matcher = LikeMatcher::compile(&pattern, escape).map_err(|e| match e {
                    PatternError::TrailingEscape => self.error(
                        pattern_at,
                        K::Escape("LIKE pattern ends with its escape character".to_owned()),
                    ),
                })?;
                let depth = left.depth;
                self.node(
                    Expr::Like {
                        negated,
                        value: Box::new(left.expr),
                        matcher,
                    },
                    Kind::Bool,
                    &[depth],
                    start,
                )
            }
            Tok::Is => {
                self.bump();
                let negated = self.eat(&Tok::Not);
                self.expect(&Tok::Null, "NULL after IS")?;
                let depth = left.depth;
                self.node(
                    Expr::IsNull {
                        negated,
                        value: Box::new(left.expr),
                    },
                    Kind::Bool,
                    &[depth],
                    start,
                )
            }
            _ => Ok(left),
        }
    }

    /// `additive = multiplicative { ('+' | '-') multiplicative }`
    fn additive(&mut self) -> Result<Node, SelectorError> {
        let mut left = self.multiplicative()?;
        loop {
            let (op, symbol) = match self.peek() {
                Tok::Plus => (ArithOp::Add, "+"),
                Tok::Minus => (ArithOp::Sub, "-"),
                _ => return Ok(left),
            };
            self.bump();
            let right = self.multiplicative()?;
            left = self.arith(op, symbol, left, right)?;
        }
    }

    /// `multiplicative = unary { ('*' | '/') unary }`
    fn multiplicative(&mut self) -> Result<Node, SelectorError> {
        let mut left = self.unary()?;
        loop {
            let (op, symbol) = match self.peek() {
                Tok::Star => (ArithOp::Mul, "*"),
                Tok::Slash => (ArithOp::Div, "/"),
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            left = self.arith(op, symbol, left, right)?;
        }
    }

    fn arith(
        &self,
        op: ArithOp,
        symbol: &str,
        left: Node,
        right: Node,
    ) -> Result<Node, SelectorError> {
        self.numeric(&left, symbol)?;
        self.numeric(&right, symbol)?;
        let start = left.start;
        let depth = [left.depth, right.depth];
        self.node(
            Expr::Arith(op, Box::new(left.expr), Box::new(right.expr)),
            Kind::Num,
            &depth,
            start,
        )
    }

    /// `unary = ('+' | '-') unary | primary`
    fn unary(&mut self) -> Result<Node, SelectorError> {
        let negate = match self.peek() {
            Tok::Plus => false,
            Tok::Minus => true,
            _ => return self.primary(),
        };
        let start = self.offset();
        self.bump();
        // A sign directly on a literal folds into it; this is also the only way to write
        // -9223372036854775808, whose magnitude is not itself a valid long.
        match *self.peek() {
            Tok::Exact { magnitude, decimal } => {
                self.bump();
                let value = if !negate {
                    self.exact(magnitude, decimal, start)?
                } else if decimal && magnitude == 1 << 63 {
                    i64::MIN
                } else {
                    // Decimal magnitudes here are below 2^63, so this is exact; for hex and
                    // octal it wraps, as Java's `-0x8000000000000000L` does.
                    (magnitude as i64).wrapping_neg()
                };
                return Ok(self.leaf(Expr::Literal(Literal::Long(value)), Kind::Num, start));
            }
            Tok::Approx(d) => {
                self.bump();
                let value = if negate { -d } else { d };
                return Ok(self.leaf(Expr::Literal(Literal::Double(value)), Kind::Num, start));
            }
            _ => {}
        }
        self.enter()?;
        let operand = self.unary()?;
        self.leave();
        self.numeric(&operand, if negate { "-" } else { "+" })?;
        let depth = operand.depth;
        self.node(
            Expr::Sign {
                negate,
                operand: Box::new(operand.expr),
            },
            Kind::Num,
            &[depth],
            start,
        )
    }

    fn exact(&self, magnitude: u64, decimal: bool, start: usize) -> Result<i64, SelectorError> {
        if decimal && magnitude > i64::MAX as u64 {
            // Only reachable as 9223372036854775808 without a leading minus.
            return Err(self.error(start, K::NumberOutOfRange(magnitude.to_string())));
        }
        // Hex and octal literals are two's complement, as in Java (0xFFFFFFFFFFFFFFFFL is -1).
        Ok(magnitude as i64)
    }

    /// `primary = literal | identifier | '(' or_expr ')'`
    fn primary(&mut self) -> Result<Node, SelectorError> {
        let start = self.offset();
        let (expr, kind) = match self.peek().clone() {
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let mut inner = self.or()?;
                self.leave();
                self.expect(&Tok::RParen, "')'")?;
                inner.start = start;
                return Ok(inner);
            }
            Tok::Exact { magnitude, decimal } => {
                let value = self.exact(magnitude, decimal, start)?;
                (Expr::Literal(Literal::Long(value)), Kind::Num)
            }
            Tok::Approx(d) => (Expr::Literal(Literal::Double(d)), Kind::Num),
            Tok::Str(s) => (
                Expr::Literal(Literal::Str(s.into_owned().into_boxed_str())),
                Kind::Str,
            ),
            Tok::True => (Expr::Literal(Literal::Bool(true)), Kind::Bool),
            Tok::False => (Expr::Literal(Literal::Bool(false)), Kind::Bool),
            Tok::Null => return Err(self.error(start, K::NullLiteral)),
            Tok::Ident(name) => {
                if FORBIDDEN_HEADERS.contains(&name) {
                    return Err(self.error(start, K::ForbiddenHeader(name.to_owned())));
                }
                let name: Box<str> = name.into();
                self.identifiers.push(name.clone());
                (Expr::Ident(name), Kind::Any)
            }
            _ => return Err(self.unexpected("an identifier, a literal or '('")),
        };
        self.bump();
        Ok(self.leaf(expr, kind, start))
    }
}
