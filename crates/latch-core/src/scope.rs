//! Scopes (RFC 6749 §3.3): a space-delimited set of case-sensitive tokens.

use std::fmt;

use crate::error::Error;

/// A set of scope tokens, held as its canonical string: the tokens sorted, each once, one
/// space apart. Tokens read back from storage (where that string is kept) cost no parsing
/// and no allocation beyond the string itself; set operations walk two sorted lists.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scope(String);

impl Scope {
    /// Parses a `scope` parameter. Empty or whitespace-only input is the empty scope.
    ///
    /// Each token must be `%x21 / %x23-5B / %x5D-7E` (RFC 6749 §3.3).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let valid = s.bytes().all(|b| {
            b == b' ' || b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
        });
        if !valid {
            return Err(Error::InvalidScope(
                "scope contains a character RFC 6749 section 3.3 does not allow".into(),
            ));
        }
        Ok(Self::canonical(s))
    }

    /// Parses a scope a client or operator *requests* for a token: like [`parse`](Self::parse),
    /// but it must name at least one token. RFC 6749 §3.3's `scope` is one or more tokens;
    /// a value of spaces only (`scope=+++`) is malformed, not a request for nothing, and
    /// answering it with a scope-less token would hide the client's mistake. (An empty value
    /// never gets here: RFC 6749 §3.1 treats it as the parameter left out.)
    pub fn parse_requested(s: &str) -> Result<Self, Error> {
        let scope = Self::parse(s)?;
        if scope.is_empty() {
            return Err(Error::InvalidScope("scope names no scope token".into()));
        }
        Ok(scope)
    }

    /// Wraps a scope string read back from storage, where it was validated on the way in
    /// and written in canonical form (a string that is not is put in that form).
    pub fn from_stored(s: impl Into<String>) -> Self {
        let s = s.into();
        if is_canonical(&s) {
            Self(s)
        } else {
            Self::canonical(&s)
        }
    }

    /// The tokens of `s`, sorted, each once, one space apart.
    fn canonical(s: &str) -> Self {
        let mut tokens: Vec<&str> = s.split(' ').filter(|t| !t.is_empty()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        Self(tokens.join(" "))
    }

    /// True when every token of `self` is in `other`.
    pub fn is_subset_of(&self, other: &Scope) -> bool {
        // Both lists are sorted: one pass over `other`.
        let mut theirs = other.iter();
        self.iter()
            .all(|mine| theirs.by_ref().find(|t| *t >= mine) == Some(mine))
    }

    /// The tokens in both `self` and `other`.
    pub fn intersection(&self, other: &Scope) -> Scope {
        let theirs: Vec<&str> = other.iter().collect();
        // Both sorted and deduplicated: the common tokens come out sorted, as `parse` keeps them.
        Self(
            self.iter()
                .filter(|t| theirs.binary_search(t).is_ok())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    /// True when the scope has no token.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Narrows a grant's scope to what was requested: no request means the whole grant;
    /// a request beyond the grant is `invalid_scope` (RFC 6749 §3.3, §6).
    pub fn narrow(granted: &Scope, requested: Option<&Scope>) -> Result<Scope, Error> {
        match requested {
            None => Ok(granted.clone()),
            Some(req) if req.is_subset_of(granted) => Ok(req.clone()),
            Some(_) => Err(Error::InvalidScope(
                "the requested scope exceeds what was granted".into(),
            )),
        }
    }

    /// The scope tokens, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(' ').filter(|t| !t.is_empty())
    }

    /// The canonical string, as RFC 6749 responses and storage carry it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `s` is tokens in strictly increasing order, one space apart.
fn is_canonical(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let mut tokens = s.split(' ');
    let mut previous = tokens.next().unwrap_or_default();
    !previous.is_empty()
        && tokens.all(|t| {
            let increasing = !t.is_empty() && t > previous;
            previous = t;
            increasing
        })
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises() {
        let s = Scope::parse("write  read read").unwrap();
        assert_eq!(s.to_string(), "read write");
        assert!(Scope::parse("").unwrap().is_empty());
        assert!(Scope::parse("   ").unwrap().is_empty());
        assert_eq!(Scope::parse_requested(" read ").unwrap().as_str(), "read");
        for nothing in ["", "   "] {
            assert!(matches!(
                Scope::parse_requested(nothing),
                Err(Error::InvalidScope(_))
            ));
        }
        assert_eq!(
            Scope::parse("b a c").unwrap().iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_stored_scope_is_taken_as_it_is_or_put_in_canonical_form() {
        assert_eq!(
            Scope::from_stored("read write"),
            Scope::parse("write read").unwrap()
        );
        assert_eq!(Scope::from_stored(""), Scope::default());
        for odd in [
            "write read",
            "read  write",
            " read write",
            "read write ",
            "read read write",
        ] {
            assert_eq!(Scope::from_stored(odd).as_str(), "read write", "{odd:?}");
        }
    }

    #[test]
    fn subsets() {
        let set = |s| Scope::parse(s).unwrap();
        assert!(set("b d").is_subset_of(&set("a b c d")));
        assert!(set("").is_subset_of(&set("a")));
        assert!(set("").is_subset_of(&set("")));
        assert!(set("a b c d").is_subset_of(&set("a b c d")));
        assert!(!set("a").is_subset_of(&set("")));
        assert!(!set("b e").is_subset_of(&set("a b c d")));
        assert!(!set("0").is_subset_of(&set("a b")));
        assert!(!set("b a0").is_subset_of(&set("a b")));
        assert!(!set("ab").is_subset_of(&set("a b")));
    }

    #[test]
    fn intersections() {
        let set = |s| Scope::parse(s).unwrap();
        assert_eq!(set("a b c d").intersection(&set("d b e")), set("b d"));
        assert_eq!(set("a b").intersection(&set("ab")), set(""));
        assert_eq!(set("").intersection(&set("a")), set(""));
        assert_eq!(set("a b").intersection(&set("a b")), set("a b"));
    }

    #[test]
    fn rejects_characters_outside_the_rfc_grammar() {
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("a\\b").is_err());
        assert!(Scope::parse("caf\u{e9}").is_err());
        assert!(Scope::parse("a\tb").is_err());
    }

    #[test]
    fn narrowing_never_widens() {
        let granted = Scope::parse("read write").unwrap();
        let read = Scope::parse("read").unwrap();
        assert_eq!(Scope::narrow(&granted, Some(&read)).unwrap(), read);
        assert_eq!(Scope::narrow(&granted, None).unwrap(), granted);
        let admin = Scope::parse("read admin").unwrap();
        assert!(matches!(
            Scope::narrow(&granted, Some(&admin)),
            Err(Error::InvalidScope(_))
        ));
    }
}
