//! Token minting and hashing.
//!
//! A token is `latch_at_` or `latch_rt_` followed by 256 bits from the OS CSPRNG in unpadded
//! base64url. The prefix makes leaked tokens recognisable to people and secret scanners.
//! Storage only ever sees [`TokenHash`], the SHA-256 of the whole string: a token has enough
//! entropy that a fast hash is safe, and a stolen database yields nothing usable.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Whether a token is an access token or a refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A bearer access token.
    Access,
    /// A refresh token; it rotates on every use.
    Refresh,
}

impl TokenKind {
    /// The human-readable prefix of tokens of this kind.
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::Access => "latch_at_",
            TokenKind::Refresh => "latch_rt_",
        }
    }

    /// The RFC 7009 `token_type_hint` value naming this kind.
    pub const fn hint_name(self) -> &'static str {
        match self {
            TokenKind::Access => "access_token",
            TokenKind::Refresh => "refresh_token",
        }
    }

    /// Parses a `token_type_hint`. Unknown values are `None`: RFC 7009 §2.2 says an
    /// unknown hint must not influence the response.
    pub fn from_hint(hint: &str) -> Option<Self> {
        match hint {
            "access_token" => Some(TokenKind::Access),
            "refresh_token" => Some(TokenKind::Refresh),
            _ => None,
        }
    }
}

/// Random bytes from the OS CSPRNG, unpadded base64url.
pub(crate) fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(&buf)
}

/// Length of a well-formed token: prefix (9) + 43 base64url characters.
const TOKEN_LEN: usize = 9 + 43;

/// A freshly minted token in clear. It exists only on its way to the client: it is never
/// stored or logged, and its `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// Mints a new token of the given kind.
    pub fn mint(kind: TokenKind) -> Self {
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(kind.prefix());
        s.push_str(&random_b64(32));
        Self(s)
    }

    /// The token string, to be sent to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which this token is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// The SHA-256 of a token string: the only form in which a token is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a token string.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// A short public identifier for the token (RFC 7662 `jti`): the first 128 bits of
    /// the hash. It identifies the token without revealing it.
    pub fn jti(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0[..16])
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.jti())
    }
}

/// A token as presented by a client, classified without touching storage.
#[derive(Debug)]
pub struct PresentedToken {
    /// The kind its prefix claims; the stored kind is authoritative.
    pub kind: TokenKind,
    /// The hash to look up.
    pub hash: TokenHash,
}

impl PresentedToken {
    /// Classifies a presented token. Anything that cannot be a latch token (wrong prefix or
    /// length, so also every oversized input) is `None`: it is unknown without a lookup.
    pub fn parse(token: &str) -> Option<Self> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let kind = if token.starts_with(TokenKind::Access.prefix()) {
            TokenKind::Access
        } else if token.starts_with(TokenKind::Refresh.prefix()) {
            TokenKind::Refresh
        } else {
            return None;
        };
        Some(Self {
            kind,
            hash: TokenHash::of(token),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_have_prefix_length_and_entropy() {
        let a = TokenSecret::mint(TokenKind::Access);
        let b = TokenSecret::mint(TokenKind::Access);
        assert!(a.expose().starts_with("latch_at_"));
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert_ne!(a, b);
        let r = TokenSecret::mint(TokenKind::Refresh);
        assert!(r.expose().starts_with("latch_rt_"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let a = TokenSecret::mint(TokenKind::Access);
        assert!(!format!("{a:?}").contains(&a.expose()[9..]));
    }

    #[test]
    fn presented_tokens_are_classified_by_prefix() {
        let r = TokenSecret::mint(TokenKind::Refresh);
        let p = PresentedToken::parse(r.expose()).unwrap();
        assert_eq!(p.kind, TokenKind::Refresh);
        assert_eq!(p.hash, r.hash());
        assert!(PresentedToken::parse("garbage").is_none());
        assert!(PresentedToken::parse(&"x".repeat(1 << 20)).is_none());
        assert!(PresentedToken::parse(&format!("latch_xx_{}", "a".repeat(43))).is_none());
    }

    #[test]
    fn hints_parse_and_unknown_hints_are_ignored() {
        assert_eq!(
            TokenKind::from_hint("refresh_token"),
            Some(TokenKind::Refresh)
        );
        assert_eq!(
            TokenKind::from_hint("access_token"),
            Some(TokenKind::Access)
        );
        assert_eq!(TokenKind::from_hint("id_token"), None);
    }
}
