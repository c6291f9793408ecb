//! Scopes (RFC 6749 §3.3): a space-delimited set of case-sensitive tokens.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::Error;

/// A set of scope tokens, kept sorted so that its string form is canonical.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scope(BTreeSet<String>);

impl Scope {
    /// Parses a `scope` parameter. Empty or whitespace-only input is the empty scope.
    ///
    /// Each token must be `%x21 / %x23-5B / %x5D-7E` (RFC 6749 §3.3).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut set = BTreeSet::new();
        for token in s.split(' ').filter(|t| !t.is_empty()) {
            let valid = token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
            if !valid {
                return Err(Error::InvalidScope(
                    "scope contains a character RFC 6749 §3.3 does not allow".into(),
                ));
            }
            set.insert(token.to_owned());
        }
        Ok(Self(set))
    }

    /// Wraps a scope string read back from storage, where it was validated on the way in.
    pub fn from_stored(s: &str) -> Self {
        Self(
            s.split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// True when every token of `self` is in `other`.
    pub fn is_subset_of(&self, other: &Scope) -> bool {
        self.0.is_subset(&other.0)
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
        self.0.iter().map(String::as_str)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(t)?;
        }
        Ok(())
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
