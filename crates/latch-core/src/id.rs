//! Identifiers. Each is a validated string newtype so that a client id can never be passed
//! where a subject is expected, and so that malformed input is rejected at the edge.

use std::fmt;

use crate::error::Error;

/// The longest identifier latch accepts (client ids, subjects). Longer input is a client error.
pub const MAX_ID_LEN: usize = 255;

fn check_printable(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::invalid_request(format!("{what} is empty")));
    }
    if s.len() > max {
        return Err(Error::invalid_request(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// Refuses, in an identifier being created, what makes it another identifier than the one
/// meant, or shows it as another: whitespace at either end (`"svc "` is not `"svc"`),
/// line and paragraph separators, and
/// invisible format characters (zero-width spaces and joiners, which make two ids that look
/// alike differ; bidirectional overrides, which show an id in an audit trail or a log as
/// another). An id is compared as given, byte for byte, as OAuth compares `client_id` and
/// `sub`: no normalisation makes two spellings one.
fn check_plain(what: &'static str, s: &str) -> Result<(), Error> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(Error::invalid_request(format!(
            "{what} starts or ends with whitespace"
        )));
    }
    let hidden_kind = |c: char| {
        matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    };
    let chars: Vec<char> = s.chars().collect();
    let hidden = chars.iter().enumerate().find_map(|(i, &c)| {
        // Zero-width non-joiner and joiner spell words in Persian and Indic scripts, and join
        // emoji: allowed between two letters, marks or symbols outside ASCII (a narrower
        // reading of PRECIS's contextual rules, which need joining types); never beside an
        // ASCII character, where they would make `al\u{200c}ice` pass for `alice`.
        let joining = matches!(c, '\u{200c}' | '\u{200d}')
            && i > 0
            && chars.get(i + 1).is_some_and(|&next| {
                let spelled = |x: char| {
                    !x.is_ascii()
                        && matches!(
                            x.general_category(),
                            GeneralCategory::UppercaseLetter
                                | GeneralCategory::LowercaseLetter
                                | GeneralCategory::TitlecaseLetter
                                | GeneralCategory::ModifierLetter
                                | GeneralCategory::OtherLetter
                                | GeneralCategory::NonspacingMark
                                | GeneralCategory::SpacingMark
                                | GeneralCategory::EnclosingMark
                                | GeneralCategory::OtherSymbol
                                | GeneralCategory::ModifierSymbol
                        )
                };
                spelled(chars[i - 1]) && spelled(next)
            });
        (hidden_kind(c) && !joining).then_some(c)
    });
    if let Some(c) = hidden {
        return Err(Error::invalid_request(format!(
            "{what} contains an invisible formatting character (U+{:04X})",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Refuses an id of dots alone. The admin API names clients and subjects in URL paths, where
/// HTTP clients resolve a `.` or `..` segment away (`DELETE …/clients/./grants` reaches
/// `…/clients/grants`, removing a client named `grants`): one so named could never be
/// managed, its secret rotated or its grants revoked.
fn check_not_dots(what: &'static str, s: &str) -> Result<(), Error> {
    if s.bytes().all(|b| b == b'.') {
        return Err(Error::invalid_request(format!(
            "{what} is dots alone, which a URL path cannot name"
        )));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A tenant (an "account" in the seed documents). Tokens and clients never cross tenants.
    TenantId
);
string_id!(
    /// An OAuth client identifier, unique within its tenant.
    ClientId
);
string_id!(
    /// The resource owner a grant was issued for (a user id, or the client itself for
    /// `client_credentials`).
    Subject
);
string_id!(
    /// The identifier of a grant: the family of tokens one authorization produced.
    GrantId
);

impl TenantId {
    /// The tenant that always exists and that the root OAuth paths serve.
    pub const DEFAULT: &'static str = "default";

    /// Parses a tenant id: 1 to 64 characters of `[A-Za-z0-9._-]`, not dots alone, so it is
    /// safe in a URL path (HTTP clients resolve a `..` or `.` segment of a tenant's issuer
    /// URL away: `/tenants/../oauth2/revoke` would reach the default tenant).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !s.bytes().all(|b| b == b'.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::invalid_request(
                "tenant id must be 1 to 64 characters of A-Z a-z 0-9 . _ -, not dots alone",
            ))
        }
    }

    /// The `default` tenant.
    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl ClientId {
    /// Parses a client id: 1 to 255 bytes, no control characters, not dots alone.
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_printable("client_id", s, MAX_ID_LEN)?;
        check_not_dots("client_id", s)?;
        Ok(Self(s.to_owned()))
    }

    /// Checks an id a client is being registered under: no whitespace at either end, no
    /// invisible formatting character ([`check_plain`]). Only new ids are checked, so that a
    /// client registered before can still be looked up and managed.
    pub fn check_new(&self) -> Result<(), Error> {
        check_plain("client_id", &self.0)
    }
}

impl Subject {
    /// Parses a subject: 1 to 255 bytes, no control characters, not dots alone.
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_printable("subject", s, MAX_ID_LEN)?;
        check_not_dots("subject", s)?;
        Ok(Self(s.to_owned()))
    }

    /// The subject of a `client_credentials` grant: the client itself, in a namespace of its
    /// own. It is stored as the client id behind [`CLIENT_SUBJECT_MARK`], which no parsed
    /// subject can contain, so a client named `alice` and a user named `alice` are different
    /// subjects: logging the user out everywhere leaves the client's machine tokens alone,
    /// and revoking "every grant of the subject" with the client's own token cannot reach the
    /// user's grants (RFC 9700 §4.15).
    pub fn of_client(client: &ClientId) -> Self {
        let mut stored = String::with_capacity(1 + client.0.len());
        stored.push(CLIENT_SUBJECT_MARK);
        stored.push_str(&client.0);
        Self(stored)
    }

    /// The client this subject is, if it is a client acting for itself.
    pub fn client(&self) -> Option<&str> {
        self.0.strip_prefix(CLIENT_SUBJECT_MARK)
    }

    /// The subject as the `sub` claim and the admin API show it: a user's id, or a client's
    /// id for a client acting for itself (RFC 9068 §2.2). [`as_str`](Self::as_str) is the
    /// stored form, which tells the two apart.
    pub fn claim(&self) -> &str {
        self.client().unwrap_or(&self.0)
    }
}

/// Opens the stored form of a client's own subject ([`Subject::of_client`]). A control
/// character, so no user subject ([`Subject::parse`]) can begin with it; not NUL, which
/// PostgreSQL's `text` cannot hold.
pub const CLIENT_SUBJECT_MARK: char = '\u{1}';

/// Length of a generated grant id: `g_`, 14 hex digits and 16 base64url characters.
const GRANT_ID_LEN: usize = 2 + 14 + 16;

impl GrantId {
    /// A fresh grant id: `g_`, the creation time in microseconds as 14 hex digits, and 96
    /// random bits. Ids sort by creation time, so new grants (and the index entries of their
    /// tokens) land at the right edge of the database's B-trees instead of on a random page
    /// each: a write touches a few hot pages rather than one cold page per index.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let micros = crate::token::micros_now();
        // Written out rather than `format!("g_{micros:014x}…")`, whose formatting machinery
        // was about 1% of an issuance's request handling. The low 56 bits (14 digits) hold
        // the time until the year 4253.
        let mut id = String::with_capacity(GRANT_ID_LEN);
        id.push_str("g_");
        id.extend((0..14).rev().map(|digit| {
            let nibble = (micros >> (4 * digit)) & 0xf;
            char::from(HEX[nibble as usize])
        }));
        crate::token::push_random_b64::<12>(&mut id);
        Self(id)
    }

    /// Parses a grant id given by an operator (admin API). Unknown ids simply match nothing.
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_printable("grant_id", s, 64)?;
        Ok(Self(s.to_owned()))
    }

    /// Wraps an id read back from storage.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

/// Conversions used by storage back-ends for values they wrote themselves.
macro_rules! from_stored {
    ($($name:ident),*) => {$(
        impl $name {
            /// Wraps a value read back from storage, where it was validated on the way in.
            pub fn from_stored(s: String) -> Self {
                Self(s)
            }
        }
    )*};
}
from_stored!(TenantId, ClientId, Subject);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_url_safe() {
        assert!(TenantId::parse("acme-prod_1.eu").is_ok());
        assert!(TenantId::parse("..a").is_ok());
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(65), ".", "..", "..."] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn client_ids_reject_control_characters_and_huge_input() {
        assert!(ClientId::parse("d51186e9-e1a1-421e-8b1d-161ade532012").is_ok());
        assert!(ClientId::parse("has space and ü").is_ok());
        assert!(ClientId::parse("a\nb").is_err());
        assert!(ClientId::parse("\0").is_err());
        assert!(ClientId::parse(&"c".repeat(256)).is_err());
        assert!(ClientId::parse("").is_err());
        // Dots alone cannot be named in a URL path; dots among other characters can.
        for dots in [".", "..", "..."] {
            assert!(ClientId::parse(dots).is_err(), "{dots}");
            assert!(Subject::parse(dots).is_err(), "{dots}");
        }
        assert!(ClientId::parse("..a").is_ok() && Subject::parse("a.").is_ok());
    }

    #[test]
    fn new_client_ids_refuse_whitespace_at_their_ends_and_invisible_formatting() {
        for good in [
            "alice",
            "alice smith",
            "ü@example.com",
            "d51186e9-e1a1",
            "日本 語",
            "می\u{200c}خواهم",
            "क्\u{200d}ष",
            "👨\u{200d}👩",
        ] {
            assert!(
                ClientId::parse(good).unwrap().check_new().is_ok(),
                "{good:?}"
            );
        }
        for bad in [
            " alice",
            "alice ",
            " ",
            "alice\u{a0}",
            "\u{3000}alice",
            "al\u{200b}ice",
            "alice\u{200d}",
            "\u{200c}alice",
            "a\u{200c}\u{200c}b",
            "al\u{200c}ice",
            "ad\u{200d}min",
            "日\u{200d}a",
            "evil\u{202e}gpj",
            "\u{2066}a",
            "\u{feff}alice",
            "soft\u{ad}hyphen",
            "line\u{2028}two",
            "para\u{2029}two",
            "tag\u{e0041}",
        ] {
            // Still parsed, so that one stored before can be looked up...
            let client = ClientId::parse(bad).unwrap();
            // ...but never registered.
            assert!(client.check_new().is_err(), "{bad:?}");
        }
        let message = ClientId::parse("a\u{202e}b")
            .unwrap()
            .check_new()
            .unwrap_err();
        assert!(message.to_string().contains("U+202E"), "{message}");
    }

    #[test]
    fn a_clients_own_subject_is_never_a_users() {
        let client = ClientId::parse("alice").unwrap();
        let machine = Subject::of_client(&client);
        let user = Subject::parse("alice").unwrap();
        assert_ne!(machine, user);
        assert_eq!(machine.claim(), "alice");
        assert_eq!(machine.client(), Some("alice"));
        assert_eq!(user.claim(), "alice");
        assert_eq!(user.client(), None);
        // No subject an admin can name is a client's own.
        assert!(Subject::parse(machine.as_str()).is_err());
        assert_eq!(Subject::from_stored(machine.as_str().to_owned()), machine);
    }

    #[test]
    fn grant_ids_are_unique_and_sort_by_creation() {
        let a = GrantId::generate();
        let b = GrantId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("g_"));
        assert_eq!(a.as_str().len(), GRANT_ID_LEN);
        // The time part is the clock's microseconds in hex, as `{:014x}` writes them.
        let before = crate::token::micros_now();
        let d = GrantId::generate();
        let after = crate::token::micros_now();
        let micros = u64::from_str_radix(&d.as_str()[2..16], 16).unwrap();
        assert!(
            (before..=after).contains(&micros),
            "{before} <= {micros} <= {after}"
        );
        assert_eq!(d.as_str()[2..16], format!("{micros:014x}"));
        // Microsecond resolution: wait for the clock to move, then compare.
        let mut c = GrantId::generate();
        while c.as_str()[..16] == a.as_str()[..16] {
            c = GrantId::generate();
        }
        assert!(a < c, "{a} < {c}");
    }
}
