//! `LIKE` patterns, compiled once when the selector is parsed.
//!
//! The common shapes (`'abc'`, `'abc%'`, `'%abc'`, `'%abc%'`, `'%'`) become plain `str`
//! comparisons; anything else runs a small wildcard matcher that backtracks only to the most
//! recent `%`, so it is O(len(pattern) × len(value)) in the worst case and never exponential.
//! `_` matches exactly one character (a Unicode scalar value), `%` any run of characters,
//! including none.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(char),
    One,
    Many,
}

#[derive(Debug, Clone)]
pub(crate) enum LikeMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    /// `%` alone: every string matches.
    Everything,
    General(Box<[Piece]>),
}

/// Why a pattern was rejected; the parser turns it into a positioned error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PatternError {
    /// The pattern ends with the escape character, which then escapes nothing.
    TrailingEscape,
}

impl LikeMatcher {
    pub(crate) fn compile(pattern: &str, escape: Option<char>) -> Result<Self, PatternError> {
        let mut pieces: Vec<Piece> = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let piece = if Some(c) == escape {
                // The escaped character stands for itself, whatever it is: `_`, `%`, the escape
                // character, or (leniently, as Artemis does) any other character.
                Piece::Lit(chars.next().ok_or(PatternError::TrailingEscape)?)
            } else {
                match c {
                    '_' => Piece::One,
                    '%' => Piece::Many,
                    c => Piece::Lit(c),
                }
            };
            // `%%` means the same as `%`; collapsing keeps the matcher's backtracking simple.
            if piece == Piece::Many && pieces.last() == Some(&Piece::Many) {
                continue;
            }
            pieces.push(piece);
        }
        Ok(Self::classify(pieces))
    }

    fn classify(pieces: Vec<Piece>) -> Self {
        let literal = |ps: &[Piece]| -> Option<Box<str>> {
            ps.iter()
                .map(|p| match p {
                    Piece::Lit(c) => Some(*c),
                    Piece::One | Piece::Many => None,
                })
                .collect::<Option<String>>()
                .map(String::into_boxed_str)
        };
        let starts = pieces.first() == Some(&Piece::Many);
        let ends = pieces.last() == Some(&Piece::Many);
        if pieces == [Piece::Many] {
            return LikeMatcher::Everything;
        }
        let inner_from = usize::from(starts);
        let inner_to = pieces.len() - usize::from(ends && pieces.len() > inner_from);
        if let Some(lit) = literal(&pieces[inner_from..inner_to]) {
            return match (starts, ends) {
                (false, false) => LikeMatcher::Exact(lit),
                (false, true) => LikeMatcher::Prefix(lit),
                (true, false) => LikeMatcher::Suffix(lit),
                (true, true) => LikeMatcher::Contains(lit),
            };
        }
        LikeMatcher::General(pieces.into_boxed_slice())
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            LikeMatcher::Exact(lit) => value == &**lit,
            LikeMatcher::Prefix(lit) => value.starts_with(&**lit),
            LikeMatcher::Suffix(lit) => value.ends_with(&**lit),
            LikeMatcher::Contains(lit) => value.contains(&**lit),
            LikeMatcher::Everything => true,
            LikeMatcher::General(pieces) => wildcard(pieces, value),
        }
    }
}

/// Greedy wildcard match: on a mismatch, retry from the last `%` with one more character
/// swallowed by it. Backtracking further is never needed because a later `%` can absorb anything
/// an earlier one could.
fn wildcard(pattern: &[Piece], value: &str) -> bool {
    let mut p = 0;
    let mut i = 0;
    // (pattern index after the last `%`, value index that `%` currently stops at)
    let mut resume: Option<(usize, usize)> = None;
    while let Some(c) = value[i..].chars().next() {
        match pattern.get(p) {
            Some(Piece::Lit(l)) if *l == c => {
                p += 1;
                i += c.len_utf8();
            }
            Some(Piece::One) => {
                p += 1;
                i += c.len_utf8();
            }
            Some(Piece::Many) => {
                p += 1;
                resume = Some((p, i));
            }
            _ => match resume {
                Some((rp, ri)) => {
                    let skipped = value[ri..].chars().next().map_or(1, char::len_utf8);
                    resume = Some((rp, ri + skipped));
                    p = rp;
                    i = ri + skipped;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|piece| *piece == Piece::Many)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(pattern: &str, value: &str) -> bool {
        LikeMatcher::compile(pattern, Some('\\'))
            .unwrap()
            .matches(value)
    }

    #[test]
    fn shapes_are_classified() {
        let kind = |p: &str| match LikeMatcher::compile(p, Some('!')).unwrap() {
            LikeMatcher::Exact(_) => "exact",
            LikeMatcher::Prefix(_) => "prefix",
            LikeMatcher::Suffix(_) => "suffix",
            LikeMatcher::Contains(_) => "contains",
            LikeMatcher::Everything => "everything",
            LikeMatcher::General(_) => "general",
        };
        assert_eq!(kind("abc"), "exact");
        assert_eq!(kind(""), "exact");
        assert_eq!(kind("ab%"), "prefix");
        assert_eq!(kind("%ab"), "suffix");
        assert_eq!(kind("%ab%"), "contains");
        assert_eq!(kind("%%"), "everything");
        assert_eq!(kind("%"), "everything");
        assert_eq!(kind("a!%%"), "prefix");
        assert_eq!(kind("a_c"), "general");
        assert_eq!(kind("a%c"), "general");
        assert_eq!(kind("_"), "general");
    }

    #[test]
    fn wildcards() {
        assert!(like("a%c", "abc"));
        assert!(like("a%c", "ac"));
        assert!(like("a%c", "abcbc"));
        assert!(!like("a%c", "abcb"));
        assert!(like("%a%b%c%", "xxaxxbxxcxx"));
        assert!(!like("%a%b%c%", "xxcxxbxxaxx"));
        assert!(like("_é_", "aéb"));
        assert!(like("__", "😀é"));
        assert!(!like("___", "😀é"));
        assert!(like("a\\%b", "a%b"));
        assert!(!like("a\\%b", "axb"));
        assert!(like("a\\_%", "a_xyz"));
        assert!(!like("a\\_%", "abxyz"));
        assert!(like("a\\\\b", "a\\b"));
        assert!(like("%aab", "aaab"));
        assert!(like("%_", "x"));
        assert!(!like("%_", ""));
    }

    #[test]
    fn pathological_pattern_is_not_exponential() {
        let value = "a".repeat(5_000);
        let pattern = format!("{}b", "%a".repeat(50));
        assert!(!like(&pattern, &value));
    }

    #[test]
    fn trailing_escape_is_rejected() {
        assert_eq!(
            LikeMatcher::compile("ab\\", Some('\\')).unwrap_err(),
            PatternError::TrailingEscape
        );
    }
}
