//! OAuth clients: how they authenticate and what they may do.

use std::fmt;

use crate::clock::UnixTime;
use crate::error::Error;
use crate::id::{ClientId, TenantId};
use crate::scope::Scope;

/// How a client authenticates at the token, revocation and introspection endpoints
/// (RFC 7591 §2 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with the RFC 6749 §2.3.1 form-encoded id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client: identified by `client_id`, proves nothing.
    None,
}

impl AuthMethod {
    /// The RFC 7591 name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::None => "none",
        }
    }

    /// Parses an RFC 7591 name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "client_secret_basic" => Ok(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Ok(AuthMethod::ClientSecretPost),
            "none" => Ok(AuthMethod::None),
            _ => Err(Error::invalid_request(
                "token_endpoint_auth_method must be client_secret_basic, client_secret_post or none",
            )),
        }
    }

    /// True for methods that prove the client's identity with a secret.
    pub const fn is_confidential(self) -> bool {
        !matches!(self, AuthMethod::None)
    }
}

/// A grant type a client may use at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantType {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 6749 §6.
    RefreshToken,
}

impl GrantType {
    /// Every grant type latch implements, for metadata.
    pub const ALL: [GrantType; 2] = [GrantType::ClientCredentials, GrantType::RefreshToken];

    /// The RFC 6749 name.
    pub const fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
        }
    }

    /// Parses an RFC 6749 name; unknown names are `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_credentials" => Some(GrantType::ClientCredentials),
            "refresh_token" => Some(GrantType::RefreshToken),
            _ => None,
        }
    }

    /// A client's grant types when its registration names none: `client_credentials` for a
    /// confidential client, `refresh_token` for a public one, which has no secret to
    /// authenticate that grant with (RFC 6749 §4.4: confidential clients only).
    pub fn defaults_for(auth_method: AuthMethod) -> Vec<Self> {
        if auth_method.is_confidential() {
            vec![GrantType::ClientCredentials]
        } else {
            vec![GrantType::RefreshToken]
        }
    }

    /// Parses a client's list of grant types; an unknown name is `invalid_request`.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Vec<Self>, Error> {
        names
            .iter()
            .map(|n| {
                Self::parse(n.as_ref()).ok_or_else(|| {
                    Error::invalid_request(format!("unsupported grant type {:?}", n.as_ref()))
                })
            })
            .collect()
    }
}

/// What revoking an access token kills. RFC 7009 §2.1 allows either; the default is the
/// narrowest, so that revoking one access token never signs a user out as a side effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessTokenRevocation {
    /// Only the presented access token.
    #[default]
    Token,
    /// The presented token's whole grant, refresh token included.
    Grant,
}

impl AccessTokenRevocation {
    /// The configuration name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessTokenRevocation::Token => "token",
            AccessTokenRevocation::Grant => "grant",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "token" => Ok(AccessTokenRevocation::Token),
            "grant" => Ok(AccessTokenRevocation::Grant),
            _ => Err(Error::invalid_request(
                "access_token_revocation must be token or grant",
            )),
        }
    }
}

/// Which tokens a confidential client may introspect (RFC 7662 §4: the server decides which
/// protected resources may learn about which tokens). A resource server needs to read the
/// tokens every client of its tenant presents to it; an application that is not one has no
/// business reading other clients' tokens (their subjects and scopes), nor refresh tokens
/// only their own client uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Introspects {
    /// Every token of its tenant: a resource server (the default, as RFC 7662 and most
    /// servers have it).
    #[default]
    Any,
    /// Only the tokens issued to itself: any other token reads `active: false`.
    Own,
}

impl Introspects {
    /// The configuration name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Introspects::Any => "any",
            Introspects::Own => "own",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "any" => Ok(Introspects::Any),
            "own" => Ok(Introspects::Own),
            _ => Err(Error::invalid_request("introspects must be any or own")),
        }
    }
}

/// An argon2id hash of a client secret, as a PHC string.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

/// The most memory (KiB), passes and lanes a given hash may ask of each verification. argon2
/// allocates its memory at once, so a configured hash asking for gigabytes would abort the
/// process at the first request naming its client, and one asking for thousands of passes
/// would hold a verification slot for minutes. latch's own hashes use argon2's defaults
/// (19 MiB, 2 passes, 1 lane).
const MAX_SECRET_HASH_COST: (u32, u32, u32) = (256 * 1024, 16, 16);

impl SecretHash {
    /// Wraps a PHC string, checking that it is an argon2id hash with its salt and output,
    /// whose cost stays within [`MAX_SECRET_HASH_COST`].
    pub fn parse(phc: &str) -> Result<Self, Error> {
        let hash = argon2::PasswordHash::new(phc)
            .ok()
            .filter(|h| h.algorithm.as_str() == "argon2id" && h.salt.is_some() && h.hash.is_some())
            .ok_or_else(|| {
                Error::invalid_request(
                    "client secret hash must be an argon2id PHC string with its salt and hash",
                )
            })?;
        let params = argon2::Params::try_from(&hash).map_err(|_| {
            Error::invalid_request("client secret hash has invalid argon2 parameters")
        })?;
        let (memory, passes, lanes) = MAX_SECRET_HASH_COST;
        if params.m_cost() > memory || params.t_cost() > passes || params.p_cost() > lanes {
            return Err(Error::invalid_request(format!(
                "client secret hash asks too much of each verification: at most m={memory} \
                 (KiB), t={passes} and p={lanes}"
            )));
        }
        Ok(Self(phc.to_owned()))
    }

    /// Wraps a PHC string read back from storage, where [`SecretHash::parse`] checked it
    /// when it was written; parsing it again would cost every authenticated request. A
    /// stored value that is somehow not a valid hash simply never verifies.
    pub fn from_stored(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<argon2id>)")
    }
}

/// Token lifetimes and the default policies for new clients.
pub mod defaults {
    /// Access token lifetime: one hour.
    pub const ACCESS_TOKEN_TTL: u32 = 3600;
    /// Refresh token lifetime: thirty days.
    pub const REFRESH_TOKEN_TTL: u32 = 30 * 24 * 3600;
    /// Refresh rotation grace: none (strict rotation, RFC 9700 §4.14.2).
    pub const ROTATION_GRACE: u32 = 0;
    /// The longest rotation grace a client may have: five minutes, as Ory Hydra allows.
    /// The grace exists for a client retrying a refresh whose answer it lost; a longer one
    /// would only widen the window in which a stolen retired refresh token is exchanged
    /// without its theft being detected.
    pub const MAX_ROTATION_GRACE: u32 = 300;
}

/// A registered client.
#[derive(Clone, Debug)]
pub struct Client {
    /// The tenant the client belongs to.
    pub tenant: TenantId,
    /// The client id, unique within the tenant.
    pub id: ClientId,
    /// The secret's hash; `None` for public clients.
    pub secret: Option<SecretHash>,
    /// How the client authenticates.
    pub auth_method: AuthMethod,
    /// Grant types it may use at the token endpoint.
    pub grant_types: Vec<GrantType>,
    /// The widest scope it may obtain.
    pub scope: Scope,
    /// Registered redirect URIs (kept for authorization-code support; unused by the
    /// grants latch serves today).
    pub redirect_uris: Vec<String>,
    /// Access token lifetime in seconds.
    pub access_token_ttl: u32,
    /// Refresh token lifetime in seconds.
    pub refresh_token_ttl: u32,
    /// Seconds after a rotation during which the previous refresh token is accepted once
    /// more. 0 is strict rotation.
    pub rotation_grace: u32,
    /// What revoking one of its access tokens kills.
    pub access_token_revocation: AccessTokenRevocation,
    /// Which tokens it may introspect.
    pub introspects: Introspects,
    /// When the client was registered.
    pub created_at: UnixTime,
    /// Declared in the configuration file, which alone changes or removes it: it is written
    /// again from the file at every start, so a change made through the admin API or the
    /// CLI (a rotated secret) would silently be undone then, and is refused instead.
    pub declared: bool,
}

impl Client {
    /// True when the client may use the grant type.
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// True for confidential clients.
    pub fn is_confidential(&self) -> bool {
        self.auth_method.is_confidential()
    }

    /// The lifetime of an access token issued beside a refresh token: never past the refresh
    /// token's. Revoking the refresh token is how a client ends the session (RFC 7009 §2.1:
    /// it takes the grant's access tokens with it), and a refresh token expired past the
    /// clocks' allowance no longer can (its row may be gone): an access token outliving it
    /// would outlive every sign-out its client can make.
    pub fn access_token_ttl_beside_refresh(&self) -> u32 {
        self.access_token_ttl.min(self.refresh_token_ttl)
    }

    /// Checks internal consistency: redirect URIs storable as given; tokens live at least a
    /// second; a rotation grace of at most [`defaults::MAX_ROTATION_GRACE`]; a confidential
    /// client has a secret, a public one has none, nor the `client_credentials` grant (RFC
    /// 6749 §4.4: registered, it could never use it, every request `unauthorized_client`).
    pub fn validate(&self) -> Result<(), Error> {
        // Stored space-separated: an empty one or one with whitespace would come back
        // changed; and no back-end stores a NUL the same way (PostgreSQL refuses it in text),
        // nor may any control character reach a log or a header.
        if (self.redirect_uris.iter())
            .any(|u| u.is_empty() || u.contains(|c: char| c.is_whitespace() || c.is_control()))
        {
            return Err(Error::invalid_request(
                "redirect_uris must be non-empty and contain no whitespace or control characters",
            ));
        }
        for (name, ttl) in [
            ("access_token_ttl", self.access_token_ttl),
            ("refresh_token_ttl", self.refresh_token_ttl),
        ] {
            if ttl == 0 {
                return Err(Error::invalid_request(format!(
                    "{name} must be at least 1 second"
                )));
            }
        }
        if self.rotation_grace > defaults::MAX_ROTATION_GRACE {
            return Err(Error::invalid_request(format!(
                "rotation_grace_period must be at most {} seconds",
                defaults::MAX_ROTATION_GRACE
            )));
        }
        match (self.auth_method.is_confidential(), self.secret.is_some()) {
            (true, false) => Err(Error::invalid_request(
                "a confidential client needs a secret",
            )),
            (false, true) => Err(Error::invalid_request(
                "a public client (token_endpoint_auth_method none) cannot have a secret",
            )),
            (false, false) if self.allows(GrantType::ClientCredentials) => {
                Err(Error::invalid_request(
                    "a public client (token_endpoint_auth_method none) cannot use the \
                     client_credentials grant: it has no secret to authenticate with",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A public client `app` of the default tenant, with no grant type and tokens living 60 s,
/// for unit tests to adjust.
#[cfg(test)]
pub(crate) fn sample_client() -> Client {
    Client {
        tenant: TenantId::default_tenant(),
        id: ClientId::parse("app").unwrap(),
        secret: None,
        auth_method: AuthMethod::None,
        grant_types: vec![],
        scope: Scope::default(),
        redirect_uris: vec![],
        access_token_ttl: 60,
        refresh_token_ttl: 60,
        rotation_grace: 0,
        access_token_revocation: AccessTokenRevocation::Token,
        introspects: Introspects::Any,
        created_at: 0,
        declared: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_hash_must_be_a_whole_argon2id_hash_of_bounded_cost() {
        let salt_and_hash = "c29tZXNhbHRzb21lc2FsdA$SGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        let ok = format!("$argon2id$v=19$m=19456,t=2,p=1${salt_and_hash}");
        assert!(SecretHash::parse(&ok).is_ok());
        let heaviest = format!("$argon2id$v=19$m=262144,t=16,p=16${salt_and_hash}");
        assert!(SecretHash::parse(&heaviest).is_ok());
        for bad in [
            format!("$argon2i$v=19$m=19456,t=2,p=1${salt_and_hash}"),
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA".to_owned(),
            "$argon2id$v=19$m=19456,t=2,p=1".to_owned(),
            format!("$argon2id$v=19$m=4294967295,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=262145,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=100000,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=2,p=17${salt_and_hash}"),
            "not a hash".to_owned(),
        ] {
            assert!(
                matches!(SecretHash::parse(&bad), Err(Error::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_rotation_grace_is_at_most_five_minutes() {
        let client = |rotation_grace| Client {
            grant_types: vec![GrantType::RefreshToken],
            rotation_grace,
            ..sample_client()
        };
        assert!(client(0).validate().is_ok());
        assert!(client(defaults::MAX_ROTATION_GRACE).validate().is_ok());
        assert!(matches!(
            client(defaults::MAX_ROTATION_GRACE + 1).validate(),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn a_public_client_has_no_client_credentials_grant_not_even_by_default() {
        let public = |grant_types| Client {
            grant_types,
            ..sample_client()
        };
        assert!(public(vec![GrantType::RefreshToken]).validate().is_ok());
        for grants in [GrantType::ALL.to_vec(), vec![GrantType::ClientCredentials]] {
            assert!(matches!(
                public(grants).validate(),
                Err(Error::InvalidRequest(_))
            ));
        }
        let defaults = GrantType::defaults_for(AuthMethod::None);
        assert!(public(defaults).validate().is_ok());
        assert_eq!(
            GrantType::defaults_for(AuthMethod::ClientSecretBasic),
            vec![GrantType::ClientCredentials]
        );
    }
}
