//! Token minting and hashing.
//!
//! A token is `latch_at_` or `latch_rt_` followed, in unpadded base64url, by a 64-bit
//! *locator* (its minting time in microseconds, big-endian) and 256 bits from the OS CSPRNG.
//! The prefix makes leaked tokens recognisable to people and secret scanners.
//!
//! Storage only ever sees [`TokenHash`]: the locator followed by the SHA-256 of the whole
//! string. A token has enough entropy that a fast hash is safe, and a stolen database yields
//! nothing usable. The locator is there for the database: keys of new tokens sort by minting
//! time, so an issuance appends to the tokens' primary-key B-tree instead of dirtying a
//! random page of it (the same reason grant ids are time-ordered), and recent tokens, the
//! ones applications present, share pages.
//!
//! Tokens minted before the locator existed (`latch_at_` + 43 characters: 256 random bits)
//! are still recognised; their key is the SHA-256 alone.

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

/// `N` random bytes from the OS CSPRNG, unpadded base64url.
pub(crate) fn random_b64<const N: usize>() -> String {
    let mut out = String::with_capacity((4 * N).div_ceil(3));
    push_random_b64::<N>(&mut out);
    out
}

/// Appends `N` random bytes from the OS CSPRNG to `out`, unpadded base64url.
pub(crate) fn push_random_b64<const N: usize>(out: &mut String) {
    let mut buf = [0u8; N];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode_string(buf, out);
}

/// Microseconds since the Unix epoch, by the system clock: the sort order of time-ordered
/// identifiers (grant ids, token locators). Only locality depends on it, never correctness.
pub(crate) fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Bytes of a token's locator.
const LOCATOR: usize = 8;
/// Bytes of a token's random part.
const SECRET: usize = 32;
/// Length of the token's prefix (`latch_at_`).
const PREFIX_LEN: usize = 9;
/// Length of a token: the prefix + base64url of locator and secret (40 bytes → 54 chars).
const TOKEN_LEN: usize = PREFIX_LEN + (8 * (LOCATOR + SECRET)).div_ceil(6);
/// Length of a token minted before locators: the prefix + base64url of 32 random bytes.
const LEGACY_TOKEN_LEN: usize = PREFIX_LEN + (8 * SECRET).div_ceil(6);

/// A freshly minted token in clear. It exists only on its way to the client: it is never
/// stored or logged, and its `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// Mints a new token of the given kind, located at the current time.
    pub fn mint(kind: TokenKind) -> Self {
        Self::mint_at(kind, micros_now())
    }

    /// Mints a token with the given locator (microseconds since the Unix epoch): only the
    /// sort order of the stored keys depends on it.
    fn mint_at(kind: TokenKind, locator: u64) -> Self {
        let mut raw = [0u8; LOCATOR + SECRET];
        raw[..LOCATOR].copy_from_slice(&locator.to_be_bytes());
        OsRng.fill_bytes(&mut raw[LOCATOR..]);
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(kind.prefix());
        URL_SAFE_NO_PAD.encode_string(raw, &mut s);
        Self(s)
    }

    /// The token string, to be sent to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key under which this token is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// The key under which a token is stored, the only form in which a token reaches storage:
/// its locator followed by the SHA-256 of the whole token string (40 bytes), or the SHA-256
/// alone for a token minted before locators (and for any string that is not a token).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash {
    key: [u8; LOCATOR + 32],
    len: u8,
}

impl TokenHash {
    /// The key of a token string.
    pub fn of(token: &str) -> Self {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut key = [0u8; LOCATOR + 32];
        match locator(token) {
            Some(locator) => {
                key[..LOCATOR].copy_from_slice(&locator);
                key[LOCATOR..].copy_from_slice(&digest);
                Self {
                    key,
                    len: (LOCATOR + 32) as u8,
                }
            }
            None => {
                key[..32].copy_from_slice(&digest);
                Self { key, len: 32 }
            }
        }
    }

    /// The stored key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.key[..usize::from(self.len)]
    }

    /// A key read back from storage ([`as_bytes`](Self::as_bytes)); `None` if `bytes` has
    /// the length of neither form.
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 && bytes.len() != LOCATOR + 32 {
            return None;
        }
        let mut key = [0u8; LOCATOR + 32];
        key[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            key,
            len: bytes.len() as u8,
        })
    }

    /// A short public identifier for the token (RFC 7662 `jti`): the first 128 bits of
    /// its SHA-256. It identifies the token without revealing it.
    pub fn jti(&self) -> String {
        let digest = &self.as_bytes()[usize::from(self.len) - 32..];
        URL_SAFE_NO_PAD.encode(&digest[..16])
    }
}

/// The locator of a well-formed token (the prefix is not checked here), or `None` for a token
/// minted before locators and for anything else.
fn locator(token: &str) -> Option<[u8; LOCATOR]> {
    if token.len() != TOKEN_LEN {
        return None;
    }
    let mut raw = [0u8; LOCATOR + SECRET];
    match URL_SAFE_NO_PAD.decode_slice(&token.as_bytes()[PREFIX_LEN..], &mut raw) {
        Ok(n) if n == raw.len() => raw[..LOCATOR].try_into().ok(),
        _ => None,
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
        if token.len() != TOKEN_LEN && token.len() != LEGACY_TOKEN_LEN {
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
    fn a_stored_key_reads_back_as_the_same_hash() {
        for hash in [
            TokenSecret::mint(TokenKind::Access).hash(),
            TokenHash::of("minted before locators"),
        ] {
            assert_eq!(TokenHash::from_stored(hash.as_bytes()), Some(hash));
        }
        assert_eq!(TokenHash::from_stored(&[0; 31]), None);
        assert_eq!(TokenHash::from_stored(&[0; 41]), None);
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
    fn keys_of_new_tokens_sort_by_minting_time() {
        let early = TokenSecret::mint_at(TokenKind::Access, 1_700_000_000_000_000);
        let late = TokenSecret::mint_at(TokenKind::Refresh, 1_700_000_000_000_001);
        let (early, late) = (early.hash(), late.hash());
        assert_eq!(early.as_bytes().len(), 40);
        assert_eq!(
            early.as_bytes()[..8],
            1_700_000_000_000_000u64.to_be_bytes()
        );
        assert!(early.as_bytes() < late.as_bytes());
        // The locator is not secret, but the key's remainder is the SHA-256 of the whole token.
        let t = TokenSecret::mint(TokenKind::Access);
        let digest = Sha256::digest(t.expose().as_bytes());
        assert_eq!(t.hash().as_bytes()[8..], digest[..]);
        assert_eq!(t.hash().jti(), URL_SAFE_NO_PAD.encode(&digest[..16]));
    }

    #[test]
    fn tokens_minted_before_locators_are_still_recognised() {
        let legacy = format!("latch_rt_{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(legacy.len(), LEGACY_TOKEN_LEN);
        let p = PresentedToken::parse(&legacy).unwrap();
        assert_eq!(p.kind, TokenKind::Refresh);
        assert_eq!(p.hash.as_bytes(), &Sha256::digest(legacy.as_bytes())[..]);
        // A string of the new length that is not base64url has no locator; it is looked up
        // (and found unknown) like any other string.
        let odd = format!("latch_at_{}", "!".repeat(TOKEN_LEN - PREFIX_LEN));
        assert_eq!(
            PresentedToken::parse(&odd).unwrap().hash.as_bytes().len(),
            32
        );
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
