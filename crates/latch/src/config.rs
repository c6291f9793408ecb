//! Configuration: a TOML file, overridden by environment variables, overridden by flags.
//! The file can also declare clients, which are registered (or updated) at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use latch_core::admin::{ClientSpec, SecretSpec};
use latch_core::client::{
    defaults, AccessTokenRevocation, AuthMethod, GrantType, Introspects, SecretHash,
};
use latch_core::id::{ClientId, TenantId};
use latch_core::scope::Scope;
use latch_http::{AuthLimits, Profiles};
use latch_store::DatabaseUrl;
use serde::Deserialize;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Seconds between expiry clean-up runs by default.
pub const DEFAULT_CLEANUP_INTERVAL: u64 = 300;
/// The longest interval or timeout a setting may give: a year (a clean-up interval beyond
/// it overflowed the timer's arithmetic).
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;
/// Seconds a stop waits for the requests in flight (a client stalled mid-request would hold
/// it for ever): below the 30 s an orchestrator commonly allows before it kills the process,
/// so that the database is still closed cleanly.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 20;
/// Seconds a client may take to send a request's head, and then its body.
pub const DEFAULT_READ_TIMEOUT: u64 = latch_http::serve::DEFAULT_READ_TIMEOUT.as_secs();
/// The most connections `max_connections` may allow: beyond any deployment's need, and far
/// below what the connection semaphore can count.
pub const MAX_CONNECTIONS: usize = 10_000_000;
/// Seconds a write to a client may make no progress, by default.
pub const DEFAULT_WRITE_TIMEOUT: u64 = latch_http::serve::DEFAULT_WRITE_TIMEOUT.as_secs();
/// The default data folder, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "data";

/// The configuration file's shape. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Address of a listener of its own for the health checks, `/metrics` and the admin API
    /// (which then leave the main listener); without one, everything is on `listen`.
    pub operations_listen: Option<String>,
    /// Database URL (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`).
    pub database_url: Option<Secret>,
    /// Folder for the default SQLite database.
    pub data_dir: Option<PathBuf>,
    /// Issuer identifier; defaults to `http://{listen}`.
    pub issuer: Option<String>,
    /// Admin API bearer token; without one the admin API is off.
    pub admin_token: Option<Secret>,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: Option<String>,
    /// `text` (the default) or `json`, one object per line.
    pub log_format: Option<LogFormat>,
    /// Seconds between expiry clean-up runs; 0 turns the background job off.
    pub cleanup_interval: Option<u64>,
    /// Seconds a stop waits for the requests in flight before cutting them off.
    pub shutdown_timeout: Option<u64>,
    /// Seconds a client may take to send a request's head, and then its body.
    pub read_timeout: Option<u64>,
    /// Seconds a write to a client may make no progress before the connection is closed.
    pub write_timeout: Option<u64>,
    /// Client connections served at once; by default as many as the file-descriptor limit
    /// leaves room for, at most 10,000.
    pub max_connections: Option<usize>,
    /// Days to keep audit records (at least 1); the clean-up deletes older ones. Left out:
    /// kept for ever.
    pub audit_retention_days: Option<u32>,
    /// Tenants created at start-up if missing (`default` always exists).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Limits on failed client authentication.
    #[serde(default)]
    pub auth_limits: AuthLimitsConfig,
    /// Which compatibility profiles are served; all are on by default.
    #[serde(default)]
    pub profiles: ProfilesConfig,
    /// Clients registered at start-up.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

/// `[auth_limits]`: failed client authentications allowed per window before `429`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthLimitsConfig {
    /// Failures per client id per window.
    pub per_client: u32,
    /// Failures per source address per window.
    pub per_address: u32,
    /// Window length in seconds.
    pub window: u32,
}

impl Default for AuthLimitsConfig {
    fn default() -> Self {
        let d = AuthLimits::default();
        Self {
            per_client: d.per_client,
            per_address: d.per_address,
            window: d.window,
        }
    }
}

/// `[profiles]`: switch each seed document's API on or off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// `POST /sentinel/api/account/{accountid}/token/revoke` (seed 000).
    pub sentinel: bool,
    /// `POST /api/id/v1/auth/token/revoke` (seed 001).
    pub id_v1: bool,
    /// `POST /api/v1.0/oauth2/revoke` (seed 002).
    pub api_v1_0: bool,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        let on = Profiles::default();
        Self {
            sentinel: on.sentinel,
            id_v1: on.id_v1,
            api_v1_0: on.api_v1_0,
        }
    }
}

impl From<&ProfilesConfig> for Profiles {
    fn from(p: &ProfilesConfig) -> Self {
        Profiles {
            sentinel: p.sentinel,
            id_v1: p.id_v1,
            api_v1_0: p.api_v1_0,
        }
    }
}

/// A client declared in the configuration file. Secrets are given only as argon2id hashes
/// (`latch hash-secret`), so the file holds nothing that authenticates by itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Tenant; `default` when omitted.
    pub tenant: Option<String>,
    /// Client id.
    pub client_id: String,
    /// argon2id PHC hash of the secret; omit for public clients.
    pub client_secret_hash: Option<String>,
    /// `client_secret_basic` (default for clients with a secret), `client_secret_post`, or
    /// `none` (default for clients without).
    pub token_endpoint_auth_method: Option<String>,
    /// Grant types; default `["client_credentials"]`.
    pub grant_types: Option<Vec<String>>,
    /// Space-separated scopes the client may obtain.
    #[serde(default)]
    pub scope: String,
    /// Redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Access token lifetime, seconds.
    pub access_token_ttl: Option<u32>,
    /// Refresh token lifetime, seconds.
    pub refresh_token_ttl: Option<u32>,
    /// Rotation grace period, seconds (0 = strict).
    pub rotation_grace_period: Option<u32>,
    /// `token` (default) or `grant`: what revoking an access token kills.
    pub access_token_revocation: Option<String>,
    /// `any` (default: every token of its tenant, a resource server) or `own`: which tokens
    /// it may introspect.
    pub introspects: Option<String>,
}

impl ClientConfig {
    /// Turns the declaration into a spec for the domain.
    pub fn to_spec(&self) -> anyhow::Result<ClientSpec> {
        let ctx = || format!("client {:?} in the configuration", self.client_id);
        let tenant = TenantId::parse(self.tenant.as_deref().unwrap_or(TenantId::DEFAULT))
            .with_context(ctx)?;
        let secret = match &self.client_secret_hash {
            Some(h) => SecretSpec::Hashed(SecretHash::parse(h).with_context(ctx)?),
            None => SecretSpec::Generate,
        };
        let auth_method = match (&self.token_endpoint_auth_method, &self.client_secret_hash) {
            (Some(m), _) => AuthMethod::parse(m).with_context(ctx)?,
            (None, Some(_)) => AuthMethod::ClientSecretBasic,
            (None, None) => AuthMethod::None,
        };
        if auth_method.is_confidential() && self.client_secret_hash.is_none() {
            bail!("{}: a confidential client needs client_secret_hash", ctx());
        }
        let grant_types = match &self.grant_types {
            None => GrantType::defaults_for(auth_method),
            Some(names) => GrantType::parse_list(names).with_context(ctx)?,
        };
        Ok(ClientSpec {
            tenant,
            id: ClientId::parse(&self.client_id).with_context(ctx)?,
            auth_method,
            secret,
            grant_types,
            scope: Scope::parse(&self.scope).with_context(ctx)?,
            redirect_uris: self.redirect_uris.clone(),
            access_token_ttl: self.access_token_ttl.unwrap_or(defaults::ACCESS_TOKEN_TTL),
            refresh_token_ttl: self
                .refresh_token_ttl
                .unwrap_or(defaults::REFRESH_TOKEN_TTL),
            rotation_grace: self
                .rotation_grace_period
                .unwrap_or(defaults::ROTATION_GRACE),
            access_token_revocation: self
                .access_token_revocation
                .as_deref()
                .map_or(
                    Ok(AccessTokenRevocation::default()),
                    AccessTokenRevocation::parse,
                )
                .with_context(ctx)?,
            introspects: (self.introspects.as_deref())
                .map_or(Ok(Introspects::default()), Introspects::parse)
                .with_context(ctx)?,
        })
    }
}

impl FileConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's own message quotes the offending line of the file, which may hold a
            // secret (a mistyped `admin_token` key, a bad escape in a database URL): only
            // its reason and its place are shown.
            let place = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "invalid configuration in {}{place}: {}",
                path.display(),
                e.message().trim_end()
            )
        })
    }
}

/// Settings that flags and environment variables can override.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "LATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: `sqlite://PATH`, `sqlite::memory:` or `postgres://…`. Default:
    /// `DATA_DIR/latch.db`.
    // `hide_env_values`: `--help` would otherwise show the variable's value, password
    // included.
    #[arg(
        long,
        env = "LATCH_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
    /// Folder for the default SQLite database (`DIR/latch.db`), unless a database URL is
    /// given as a flag or in the environment [default: data].
    #[arg(long, env = "LATCH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Days to keep audit records; the clean-up deletes older ones. Unset: kept for ever.
    #[arg(long, env = "LATCH_AUDIT_RETENTION_DAYS", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retention_days: Option<u32>,
}

/// `latch serve`'s own settings that flags and environment variables can override.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServerOverrides {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LATCH_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of a listener of its own for `/healthz`, `/readyz`, `/metrics` and the admin
    /// API, which then leave the main one (health checks stay on both) [default: none,
    /// everything on --listen].
    #[arg(long, env = "LATCH_OPERATIONS_LISTEN", value_name = "ADDR")]
    pub operations_listen: Option<String>,
    /// Issuer identifier [default: http://ADDR].
    #[arg(long, env = "LATCH_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Bearer token for the admin API; without one the admin API is off.
    #[arg(
        long,
        env = "LATCH_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,
    /// Log filter, e.g. `info` or `latch=debug,tower_http=debug` [default: info].
    #[arg(long, env = "LATCH_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// How log lines are written: `text`, for people, or `json`, one object per line for a
    /// log pipeline (the `latch::audit` records among them) [default: text].
    #[arg(long, env = "LATCH_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds between expiry clean-up runs; 0 turns it off [default: 300].
    #[arg(long, env = "LATCH_CLEANUP_INTERVAL", value_name = "SECS")]
    pub cleanup_interval: Option<u64>,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for the requests in flight before cutting them
    /// off and closing the database [default: 20].
    #[arg(long, env = "LATCH_SHUTDOWN_TIMEOUT", value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// Seconds a client may take to send a request's head, and then its body; a keep-alive
    /// connection idle that long is closed [default: 30].
    #[arg(long, env = "LATCH_READ_TIMEOUT", value_name = "SECS")]
    pub read_timeout: Option<u64>,
    /// Seconds a write to a client may make no progress (a client not reading its
    /// answers) before the connection is closed [default: 30].
    #[arg(long, env = "LATCH_WRITE_TIMEOUT", value_name = "SECS")]
    pub write_timeout: Option<u64>,
    /// Client connections served at once; more wait in the listen backlog [default: as many
    /// as the file-descriptor limit leaves room for, at most 10,000].
    #[arg(long, env = "LATCH_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
}

/// The fully resolved settings of a server.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the health checks, `/metrics` and the admin API listen, if not on `listen`.
    pub operations_listen: Option<SocketAddr>,
    /// The database.
    pub database: DatabaseUrl,
    /// The issuer identifier; `None` derives it from the bound address.
    pub issuer: Option<String>,
    /// The admin token, if the admin API is on.
    pub admin_token: Option<Secret>,
    /// Log filter.
    pub log: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Seconds between expiry clean-up runs; 0 = off.
    pub cleanup_interval: u64,
    /// Seconds a stop waits for the requests in flight.
    pub shutdown_timeout: u64,
    /// Seconds a client may take to send a request's head, and then its body.
    pub read_timeout: u64,
    /// Seconds a write to a client may make no progress.
    pub write_timeout: u64,
    /// Client connections served at once; `None`: as many as the file-descriptor limit
    /// leaves room for ([`crate::fd_limit`]), at most 10,000.
    pub max_connections: Option<usize>,
    /// Days to keep audit records; `None`: for ever.
    pub audit_retention_days: Option<u32>,
    /// Tenants to create at start-up.
    pub tenants: Vec<TenantId>,
    /// Compatibility profiles to serve.
    pub profiles: Profiles,
    /// Limits on failed client authentication.
    pub auth_limits: AuthLimits,
    /// Clients to register at start-up.
    pub clients: Vec<ClientSpec>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (the message and
    /// the event's fields) and the spans it happened in.
    Json,
}

/// Loads the file named by `overrides.config`, if any.
pub fn load_file(overrides: &Overrides) -> anyhow::Result<FileConfig> {
    overrides
        .config
        .as_deref()
        .map_or(Ok(FileConfig::default()), FileConfig::load)
}

/// A secret given on the command line, in the environment or in the configuration file (the
/// admin token, a database URL and its password, a client secret). Its `Debug` says only
/// that one was given, so a `{:?}` of the settings or of the command line logs nothing that
/// authenticates.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

/// Resolves the database URL, the first given of: the flag's (or environment's) URL, then
/// its data folder's `latch.db`, then the file's URL, then its data folder's, then
/// `data/latch.db`. A flag beats the file whichever of the two it names: `--data-dir`
/// beside a file that sets `database_url` is the folder's database.
pub fn database_url(overrides: &Overrides, file: &FileConfig) -> anyhow::Result<DatabaseUrl> {
    let in_dir = |dir: &PathBuf| format!("sqlite://{}", dir.join("latch.db").display());
    let given = |url: Option<&Secret>, dir: Option<&PathBuf>| {
        (url.map(|url| url.expose().to_owned())).or_else(|| dir.map(in_dir))
    };
    let url = given(overrides.database_url.as_ref(), overrides.data_dir.as_ref())
        .or_else(|| given(file.database_url.as_ref(), file.data_dir.as_ref()))
        .unwrap_or_else(|| in_dir(&PathBuf::from(DEFAULT_DATA_DIR)));
    DatabaseUrl::parse(&url).map_err(anyhow::Error::msg)
}

/// Resolves the audit retention: flag/env, then file; `None` keeps records for ever.
pub fn audit_retention_days(
    overrides: &Overrides,
    file: &FileConfig,
) -> anyhow::Result<Option<u32>> {
    match overrides.audit_retention_days.or(file.audit_retention_days) {
        Some(0) => anyhow::bail!(
            "audit_retention_days must be at least 1 (leave it out to keep records for ever)"
        ),
        days => Ok(days),
    }
}

/// `secs`, the value of setting `name`, unless it is beyond [`MAX_SECONDS`].
fn at_most_a_year(name: &str, secs: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        secs <= MAX_SECONDS,
        "{name} must be at most {MAX_SECONDS} seconds (a year)"
    );
    Ok(secs)
}

/// `secs`, the value of timeout `name`, unless it is 0 (every request would time out) or
/// beyond [`MAX_SECONDS`].
fn at_least_a_second(name: &str, secs: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(secs >= 1, "{name} must be at least 1 second");
    at_most_a_year(name, secs)
}

/// A log filter (`info`, `latch=debug,hyper=warn`), checked: one that does not parse would be
/// replaced by another, and a bare word that is not a level (`warning`, `inf`) parses as a
/// target's name, every other target off: either way the server would log nothing of what
/// it was asked to, its failures included, without a word.
fn log_filter(filter: String) -> anyhow::Result<String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    anyhow::ensure!(!filter.trim().is_empty(), "the log filter is empty");
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        anyhow::ensure!(
            directive.contains(['=', '[', ':'])
                || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)),
            "log filter {filter:?}: {directive:?} is not a level ({}) nor target=level",
            LEVELS.join(", ")
        );
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| anyhow::anyhow!("log filter {filter:?} does not parse: {e}"))?;
    Ok(filter)
}

/// An issuer identifier as RFC 8414 §2 has it: an `https` URL (`http` is accepted for local
/// use) with a host and without a query or fragment. Clients compare it byte for byte with
/// the metadata's and the introspection's `iss`, so a malformed one breaks them all.
fn check_issuer(issuer: &str) -> anyhow::Result<()> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .with_context(|| format!("issuer {issuer:?} must be an https:// (or http://) URL"))?;
    anyhow::ensure!(
        !rest.contains(['?', '#']),
        "issuer {issuer:?} must have no query or fragment (RFC 8414 §2)"
    );
    anyhow::ensure!(
        !rest.is_empty() && !rest.starts_with('/'),
        "issuer {issuer:?} has no host"
    );
    // The metadata is served at the well-known path with the issuer's path appended (RFC 8414
    // §3), a route of its own: the path must be one a URL holds as it is (RFC 3986 `pchar`s),
    // with no segment the router reads as a capture (`:name`, `*name`).
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    anyhow::ensure!(
        path.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:@".contains(c)),
        "issuer {issuer:?} has a path with characters a URL must percent-encode"
    );
    anyhow::ensure!(
        !path.split('/').any(|s| s.starts_with([':', '*'])),
        "issuer {issuer:?} has a path segment starting with `:` or `*`"
    );
    Ok(())
}

/// An admin token a request can present as it is: visible ASCII (spaces within), nothing
/// around it. A header cannot carry other bytes, and the token presented is read without the
/// spaces around it, so one configured otherwise would never match, and the admin API
/// answer `401` for ever, as if every caller had it wrong. (Never quoted: it is a secret.)
fn check_admin_token(token: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        token.trim() == token && token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "admin_token must be visible ASCII characters (spaces only between them): no request \
         could present it as configured"
    );
    Ok(())
}

/// The `[auth_limits]` table, each value at least 1: a limit of 0 would refuse a client
/// after its first failure, not switch the limit off, and a window of 0 means nothing.
fn auth_limits(table: &AuthLimitsConfig) -> anyhow::Result<AuthLimits> {
    for (name, value) in [
        ("per_client", table.per_client),
        ("per_address", table.per_address),
        ("window", table.window),
    ] {
        anyhow::ensure!(
            value >= 1,
            "auth_limits.{name} must be at least 1 (to leave a limit practically off, give it \
             a large number, such as 1000000)"
        );
    }
    Ok(AuthLimits {
        per_client: table.per_client,
        per_address: table.per_address,
        window: table.window,
    })
}

/// Resolves a server's settings.
pub fn resolve(overrides: &Overrides, server: &ServerOverrides) -> anyhow::Result<Settings> {
    let file = load_file(overrides)?;
    let listen_str = (server.listen.clone())
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_str
        .parse()
        .with_context(|| format!("invalid listen address {listen_str:?}"))?;
    let operations_listen = match (server.operations_listen.as_ref())
        .or(file.operations_listen.as_ref())
        .filter(|at| !at.is_empty())
    {
        None => None,
        Some(at) => {
            let at: SocketAddr = at
                .parse()
                .with_context(|| format!("invalid operations_listen address {at:?}"))?;
            // Port 0 twice is two ephemeral ports. One port on overlapping addresses fails
            // to bind with a less helpful message on Linux, and where the system lets both
            // bind, the admin API would answer on the port meant for clients.
            let overlap =
                at.ip() == listen.ip() || at.ip().is_unspecified() || listen.ip().is_unspecified();
            anyhow::ensure!(
                at.port() != listen.port() || at.port() == 0 || !overlap,
                "operations_listen must not share listen's port on the same address ({listen})"
            );
            Some(at)
        }
    };
    let issuer = server.issuer.clone().or_else(|| file.issuer.clone());
    if let Some(issuer) = &issuer {
        check_issuer(issuer)?;
    }
    let clients: Vec<ClientSpec> = file
        .clients
        .iter()
        .map(ClientConfig::to_spec)
        .collect::<anyhow::Result<_>>()?;
    // Each is written in turn at start, so a second entry would silently replace the first.
    let mut seen = std::collections::HashSet::new();
    for c in &clients {
        anyhow::ensure!(
            seen.insert((&c.tenant, &c.id)),
            "client {:?} of tenant {:?} is declared twice in the configuration file",
            c.id.as_str(),
            c.tenant.as_str()
        );
    }
    let admin_token = (server.admin_token.clone())
        .or_else(|| file.admin_token.clone())
        .filter(|t| !t.expose().is_empty());
    if let Some(token) = &admin_token {
        check_admin_token(token.expose())?;
    }
    Ok(Settings {
        listen,
        operations_listen,
        database: database_url(overrides, &file)?,
        issuer,
        admin_token,
        log_format: server.log_format.or(file.log_format).unwrap_or_default(),
        log: log_filter(
            (server.log.clone())
                .or_else(|| file.log.clone())
                .unwrap_or_else(|| "info".to_owned()),
        )?,
        cleanup_interval: at_most_a_year(
            "cleanup_interval",
            (server.cleanup_interval)
                .or(file.cleanup_interval)
                .unwrap_or(DEFAULT_CLEANUP_INTERVAL),
        )?,
        shutdown_timeout: at_most_a_year(
            "shutdown_timeout",
            (server.shutdown_timeout)
                .or(file.shutdown_timeout)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        )?,
        read_timeout: at_least_a_second(
            "read_timeout",
            (server.read_timeout)
                .or(file.read_timeout)
                .unwrap_or(DEFAULT_READ_TIMEOUT),
        )?,
        write_timeout: at_least_a_second(
            "write_timeout",
            (server.write_timeout)
                .or(file.write_timeout)
                .unwrap_or(DEFAULT_WRITE_TIMEOUT),
        )?,
        max_connections: match server.max_connections.or(file.max_connections) {
            Some(n) if !(1..=MAX_CONNECTIONS).contains(&n) => {
                anyhow::bail!("max_connections must be between 1 and {MAX_CONNECTIONS}")
            }
            n => n,
        },
        audit_retention_days: audit_retention_days(overrides, &file)?,
        tenants: file
            .tenants
            .iter()
            .map(|t| {
                TenantId::parse(t).with_context(|| format!("tenant {t:?} in the configuration"))
            })
            .collect::<anyhow::Result<_>>()?,
        profiles: Profiles::from(&file.profiles),
        auth_limits: auth_limits(&file.auth_limits)?,
        clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operations_listener_is_off_by_default_and_refused_on_the_listen_address() {
        let resolved = |listen: &str, operations: Option<&str>| {
            let server = ServerOverrides {
                listen: Some(listen.into()),
                operations_listen: operations.map(Into::into),
                ..ServerOverrides::default()
            };
            resolve(&Overrides::default(), &server).map(|s| s.operations_listen)
        };
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(resolved("127.0.0.1:8080", None).unwrap(), None);
        assert_eq!(resolved("127.0.0.1:8080", Some("")).unwrap(), None);
        assert_eq!(
            resolved("127.0.0.1:8080", Some("127.0.0.1:9090")).unwrap(),
            Some(at("127.0.0.1:9090"))
        );
        assert_eq!(
            resolved("127.0.0.1:0", Some("127.0.0.1:0")).unwrap(),
            Some(at("127.0.0.1:0"))
        );
        for (listen, operations) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "0.0.0.0:8080"),
        ] {
            let same = resolved(listen, Some(operations)).unwrap_err();
            assert!(
                same.to_string().contains("must not share listen's port"),
                "{listen} {operations}: {same}"
            );
        }
        // Another address of the host may have the same port.
        assert!(resolved("10.0.0.5:8080", Some("127.0.0.1:8080")).is_ok());
        let bad = resolved("127.0.0.1:8080", Some("localhost")).unwrap_err();
        assert!(
            bad.to_string().contains("invalid operations_listen"),
            "{bad}"
        );
        // Read from the file, and a flag beats it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latch.toml");
        std::fs::write(&file, "operations_listen = \"127.0.0.1:9191\"\n").unwrap();
        let overrides = Overrides {
            config: Some(file),
            ..Overrides::default()
        };
        let from = |operations: Option<&str>| {
            let server = ServerOverrides {
                operations_listen: operations.map(Into::into),
                ..ServerOverrides::default()
            };
            resolve(&overrides, &server).unwrap().operations_listen
        };
        assert_eq!(from(None), Some(at("127.0.0.1:9191")));
        assert_eq!(from(Some("127.0.0.1:9292")), Some(at("127.0.0.1:9292")));
    }

    #[test]
    fn the_log_format_is_text_unless_the_file_or_a_flag_says_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latch.toml");
        let format = |file_says: Option<&str>, flag: Option<LogFormat>| {
            let text = file_says.map_or(String::new(), |f| format!("log_format = \"{f}\"\n"));
            std::fs::write(&file, text).unwrap();
            let overrides = Overrides {
                config: Some(file.clone()),
                ..Overrides::default()
            };
            let server = ServerOverrides {
                log_format: flag,
                ..ServerOverrides::default()
            };
            resolve(&overrides, &server).map(|s| s.log_format)
        };
        assert_eq!(format(None, None).unwrap(), LogFormat::Text);
        assert_eq!(format(Some("json"), None).unwrap(), LogFormat::Json);
        assert_eq!(
            format(Some("json"), Some(LogFormat::Text)).unwrap(),
            LogFormat::Text
        );
        assert_eq!(
            format(None, Some(LogFormat::Json)).unwrap(),
            LogFormat::Json
        );
        assert!(format(Some("JSON"), None).is_err());
    }

    #[test]
    fn a_flag_beats_the_file_whichever_of_url_and_folder_each_names() {
        let url = |overrides: &Overrides, file: &FileConfig| {
            database_url(overrides, file).unwrap().to_string()
        };
        let file_url = FileConfig {
            database_url: Some("sqlite://from-file/latch.db".into()),
            data_dir: Some("file-dir".into()),
            ..FileConfig::default()
        };
        let dir_flag = Overrides {
            data_dir: Some("/srv/latch".into()),
            ..Overrides::default()
        };
        assert_eq!(url(&dir_flag, &file_url), "sqlite:///srv/latch/latch.db");
        let both_flags = Overrides {
            database_url: Some("sqlite://flag.db".into()),
            ..dir_flag.clone()
        };
        assert_eq!(url(&both_flags, &file_url), "sqlite://flag.db");
        let none = Overrides::default();
        assert_eq!(url(&none, &file_url), "sqlite://from-file/latch.db");
        let file_dir = FileConfig {
            data_dir: Some("file-dir".into()),
            ..FileConfig::default()
        };
        assert_eq!(url(&none, &file_dir), "sqlite://file-dir/latch.db");
        assert_eq!(url(&none, &FileConfig::default()), "sqlite://data/latch.db");
    }
}
