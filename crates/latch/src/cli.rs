//! The command line: `latch serve`, `latch client …`, `latch hash-secret`.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use latch_core::admin::{ClientSpec, SecretSpec};
use latch_core::audit::{Killed, Origin};
use latch_core::client::{defaults, AccessTokenRevocation, AuthMethod, GrantType, Introspects};
use latch_core::clock::SystemClock;
use latch_core::id::{ClientId, TenantId};
use latch_core::scope::Scope;
use latch_core::secret::hash_secret;
use latch_core::Authority;
use serde_json::json;

use crate::config::{self, LogFormat, Overrides, Secret, ServerOverrides};
use crate::server::{self, Server};

/// latch: an OAuth 2.0 token server where a revoked token is dead everywhere, at once.
#[derive(Debug, Parser)]
#[command(name = "latch", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// latch's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage clients directly in the database (works while a server runs).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage tenants directly in the database (works while a server runs).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Delete expired tokens and grants now, in bounded batches (the server also does this
    /// periodically). Safe while servers run.
    Gc {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Hash a client secret with argon2id, for `client_secret_hash` in a config file.
    /// Reads the secret from standard input when it is not given.
    HashSecret {
        /// The secret (prefer standard input: arguments show up in process lists).
        secret: Option<Secret>,
    },
}

/// `latch serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerOverrides,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// `latch client …`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client. Prints it as JSON, with its secret if one was generated.
    Add(AddClientArgs),
    /// List a tenant's clients as JSON lines.
    List {
        /// Tenant.
        #[arg(long, default_value = TenantId::DEFAULT)]
        tenant: String,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Remove a client and revoke every grant it holds.
    Remove {
        /// Client id.
        client_id: String,
        /// Tenant.
        #[arg(long, default_value = TenantId::DEFAULT)]
        tenant: String,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Revoke every grant a client holds, keeping the client (a compromised one: rotate
    /// its secret first).
    RevokeGrants {
        /// Client id.
        client_id: String,
        /// Tenant.
        #[arg(long, default_value = TenantId::DEFAULT)]
        tenant: String,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Give a confidential client a new secret; the old one stops working at once.
    RotateSecret {
        /// Client id.
        client_id: String,
        /// Tenant.
        #[arg(long, default_value = TenantId::DEFAULT)]
        tenant: String,
        /// The new secret; generated (and printed once) when omitted.
        #[arg(long)]
        secret: Option<Secret>,
        /// Read the new secret from standard input instead (arguments show up in process
        /// lists).
        #[arg(long, conflicts_with = "secret")]
        secret_stdin: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// `latch tenant …`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (1 to 64 characters of A-Z a-z 0-9 . _ -).
    Add {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// List tenants, one per line.
    List {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Remove a tenant: revoke all of its grants and remove its clients.
    Remove {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// `latch client add`.
#[derive(Debug, clap::Args)]
pub struct AddClientArgs {
    /// Client id.
    pub client_id: String,
    /// Tenant.
    #[arg(long, default_value = TenantId::DEFAULT)]
    pub tenant: String,
    /// client_secret_basic, client_secret_post or none (public client).
    #[arg(long, default_value = "client_secret_basic")]
    pub auth_method: String,
    /// The secret; generated (and printed once) when omitted for a confidential client.
    #[arg(long)]
    pub secret: Option<Secret>,
    /// Read the secret from standard input instead (arguments show up in process lists).
    #[arg(long, conflicts_with = "secret")]
    pub secret_stdin: bool,
    /// Allowed grant types (repeat or comma-separate) [default: client_credentials for a
    /// confidential client, refresh_token for a public one].
    #[arg(long = "grant-type", value_delimiter = ',')]
    pub grant_types: Vec<String>,
    /// Space-separated scopes the client may obtain.
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = defaults::ACCESS_TOKEN_TTL)]
    pub access_token_ttl: u32,
    /// Refresh token lifetime in seconds.
    #[arg(long, default_value_t = defaults::REFRESH_TOKEN_TTL)]
    pub refresh_token_ttl: u32,
    /// Seconds during which a just-rotated refresh token is accepted once more (0 = strict).
    #[arg(long, default_value_t = defaults::ROTATION_GRACE)]
    pub rotation_grace: u32,
    /// What revoking an access token kills: token or grant.
    #[arg(long, default_value = "token")]
    pub access_token_revocation: String,
    /// Which tokens it may introspect: any (of its tenant: a resource server) or own.
    #[arg(long, default_value = "any")]
    pub introspects: String,
    #[command(flatten)]
    pub overrides: Overrides,
}

impl AddClientArgs {
    fn to_spec(&self) -> anyhow::Result<ClientSpec> {
        let auth_method = AuthMethod::parse(&self.auth_method)?;
        Ok(ClientSpec {
            tenant: TenantId::parse(&self.tenant)?,
            id: ClientId::parse(&self.client_id)?,
            auth_method,
            secret: given_secret(self.secret.clone(), self.secret_stdin)?
                .map_or(SecretSpec::Generate, SecretSpec::Plain),
            grant_types: match self.grant_types.as_slice() {
                [] => GrantType::defaults_for(auth_method),
                names => GrantType::parse_list(names)?,
            },
            scope: Scope::parse(&self.scope)?,
            redirect_uris: vec![],
            access_token_ttl: self.access_token_ttl,
            refresh_token_ttl: self.refresh_token_ttl,
            rotation_grace: self.rotation_grace,
            access_token_revocation: AccessTokenRevocation::parse(&self.access_token_revocation)?,
            introspects: Introspects::parse(&self.introspects)?,
        })
    }
}

/// The secret a command was given: as an argument, or read from standard input (up to its
/// end, without the line break that ends it) when `from_stdin`; `None` for neither.
fn given_secret(argument: Option<Secret>, from_stdin: bool) -> anyhow::Result<Option<String>> {
    if !from_stdin {
        return Ok(argument.map(|s| s.expose().to_owned()));
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read the secret from standard input")?;
    let secret = s.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!secret.is_empty(), "the secret on standard input is empty");
    Ok(Some(secret.to_owned()))
}

/// Writes one line of a command's output. A command's output may be all that is left of
/// what it did (a generated secret is printed once), so a standard output that cannot take
/// it (a closed pipe) is an error that says so, not a panic.
fn print(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("the command's output could not be written to standard output")
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout carries the command's output.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

/// Opens the database for a CLI command (configured clients are not registered). A SQLite
/// database is never migrated (`latch serve` does that) and never created: a command aimed
/// at a mistyped path, or run from another directory than the server's (the default path
/// is relative), would otherwise write into a new database no server reads and report
/// success.
async fn authority(overrides: &Overrides) -> anyhow::Result<Authority> {
    let file = config::load_file(overrides)?;
    let url = config::database_url(overrides, &file)?;
    match &url {
        latch_store::DatabaseUrl::SqliteMemory => anyhow::bail!(
            "{url} is a database of this command alone, gone when it ends: give the server's \
             --database-url"
        ),
        // An empty file is no database either (nor what `latch serve` leaves).
        latch_store::DatabaseUrl::SqliteFile(path) => match std::fs::metadata(path) {
            Ok(file) if file.len() > 0 => {}
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("cannot read {}: {e}", path.display())
            }
            _ => anyhow::bail!(
                "no database at {}: `latch serve` creates it; check --database-url \
                 (LATCH_DATABASE_URL, database_url in the config file) and the directory the \
                 command runs in",
                path.display()
            ),
        },
        latch_store::DatabaseUrl::Postgres(_) => {}
    }
    let store = latch_store::open_migrating(&url, latch_store::Migrations::OnlyNew)
        .await
        .with_context(|| format!("cannot open {url}"))?;
    let retention = config::audit_retention_days(overrides, &file)?;
    Ok(Authority::new(store, Arc::new(SystemClock)).with_audit_retention(retention))
}

fn client_json(c: &latch_core::client::Client) -> serde_json::Value {
    json!({
        "tenant": c.tenant.as_str(),
        "client_id": c.id.as_str(),
        "token_endpoint_auth_method": c.auth_method.as_str(),
        "grant_types": c.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "scope": c.scope.to_string(),
        "access_token_ttl": c.access_token_ttl,
        "refresh_token_ttl": c.refresh_token_ttl,
        "rotation_grace_period": c.rotation_grace,
        "access_token_revocation": c.access_token_revocation.as_str(),
        "introspects": c.introspects.as_str(),
        "declared": c.declared,
    })
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::HashSecret { secret } => {
            let from_stdin = secret.is_none();
            let secret = given_secret(secret, from_stdin)?.unwrap_or_default();
            anyhow::ensure!(!secret.is_empty(), "the secret is empty");
            print(hash_secret(&secret).as_str())
        }
        Command::Client(cmd) => {
            init_logging("warn", LogFormat::Text);
            client(cmd).await
        }
        Command::Gc { overrides } => {
            init_logging("warn", LogFormat::Text);
            let purged = authority(&overrides).await?.purge_expired().await?;
            print(json!({
                "tokens_deleted": purged.tokens,
                "grants_deleted": purged.grants,
                "audit_deleted": purged.audit,
            }))
        }
        Command::Tenant(cmd) => {
            init_logging("warn", LogFormat::Text);
            tenant(cmd).await
        }
    }
}

async fn tenant(cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Add { tenant, overrides } => {
            let id = TenantId::parse(&tenant)?;
            authority(&overrides).await?.create_tenant(&id).await?;
            print(json!({ "tenant_id": tenant }))?;
        }
        TenantCommand::List { overrides } => {
            for t in authority(&overrides).await?.tenants(None).await? {
                print(t)?;
            }
        }
        TenantCommand::Remove { tenant, overrides } => {
            let id = TenantId::parse(&tenant)?;
            authority(&overrides)
                .await?
                .delete_tenant(&id, Origin::internal("cli"))
                .await?;
            print(json!({ "tenant_id": tenant, "deleted": true }))?;
        }
    }
    Ok(())
}

/// What `client remove` and `client revoke-grants` print: what died.
fn grants_revoked(client_id: &str, killed: Killed) -> serde_json::Value {
    json!({
        "client_id": client_id,
        "revoked_grants": killed.grants,
        "revoked_tokens": killed.tokens,
    })
}

async fn client(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add(args) => {
            let (client, secret) = authority(&args.overrides)
                .await?
                .create_client(args.to_spec()?)
                .await?;
            let mut out = client_json(&client);
            if let Some(secret) = secret {
                out["client_secret"] = secret.into();
            }
            print(out)?;
        }
        ClientCommand::List { tenant, overrides } => {
            for c in authority(&overrides)
                .await?
                .clients(&TenantId::parse(&tenant)?, None)
                .await?
            {
                print(client_json(&c))?;
            }
        }
        ClientCommand::Remove {
            client_id,
            tenant,
            overrides,
        } => {
            let killed = authority(&overrides)
                .await?
                .delete_client(
                    &TenantId::parse(&tenant)?,
                    &ClientId::parse(&client_id)?,
                    Origin::internal("cli"),
                )
                .await?;
            let mut out = grants_revoked(&client_id, killed);
            out["deleted"] = json!(true);
            print(out)?;
        }
        ClientCommand::RevokeGrants {
            client_id,
            tenant,
            overrides,
        } => {
            let killed = authority(&overrides)
                .await?
                .revoke_client_grants(
                    &TenantId::parse(&tenant)?,
                    &ClientId::parse(&client_id)?,
                    Origin::internal("cli"),
                )
                .await?;
            print(grants_revoked(&client_id, killed))?;
        }
        ClientCommand::RotateSecret {
            client_id,
            tenant,
            secret,
            secret_stdin,
            overrides,
        } => {
            let given = given_secret(secret, secret_stdin)?;
            let generated = given.is_none();
            let secret = authority(&overrides)
                .await?
                .rotate_secret(
                    &TenantId::parse(&tenant)?,
                    &ClientId::parse(&client_id)?,
                    given,
                )
                .await?;
            // Like `client add`, it prints a secret only if it made it up.
            let mut out = json!({ "client_id": client_id, "rotated": true });
            if generated {
                out["client_secret"] = secret.into();
            }
            print(out)?;
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = config::resolve(&args.overrides, &args.server)?;
    init_logging(&settings.log, settings.log_format);
    let mut stop = server::StopSignal::install().context("cannot catch SIGTERM and SIGINT")?;
    // A start can take long (a PostgreSQL migration waiting for another node's): a stop
    // request meanwhile abandons it.
    let server = tokio::select! {
        server = Server::start(&settings, Arc::new(SystemClock)) => server?,
        () = stop.recv() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    tracing::info!(
        addr = %server.addr,
        operations_addr = server.operations_addr.map(tracing::field::display),
        database = %settings.database,
        admin_api = settings.admin_token.is_some(),
        "latch is serving"
    );
    // Scripts and tests read these lines to learn the bound ports; the operations line comes
    // first, so that a reader stopping at the listening line has seen both. Nobody reads a
    // closed stdout: serving goes on.
    let operations = server.operations_addr.map_or(Ok(()), |at| {
        print(format_args!("latch operations on http://{at}"))
    });
    let listening =
        operations.and_then(|()| print(format_args!("latch listening on http://{}", server.addr)));
    if let Err(e) = listening {
        tracing::warn!(error = %e, "the listening line");
    }
    stop.recv().await;
    tracing::info!("stopping: finishing in-flight requests");
    // A second signal (an operator's second Ctrl-C) stops at once: every write answered
    // `200` is already durable, and SQLite replays a WAL left behind at the next start.
    let authority = server.authority.clone();
    tokio::select! {
        stopped = server.shutdown() => stopped?,
        () = stop.recv() => {
            tracing::warn!("a second stop signal: exiting now, requests in flight unanswered");
            if authority.background_running() {
                server::background_cut_off("by a second stop signal");
            }
            std::process::exit(1);
        }
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Neither the command line nor the settings it resolves to show a secret in their
    /// `Debug` (a `{:?}` in a log line would otherwise hold the admin token, a database
    /// password or a client's secret).
    #[test]
    fn debug_output_holds_no_secret() {
        let secrets = ["admin-t0ken-value", "db-pa55word", "client-s3cret"];
        let url = "postgres://latch:db-pa55word@127.0.0.1:5432/latch";
        for args in [
            vec![
                "latch",
                "serve",
                "--admin-token",
                secrets[0],
                "--database-url",
                url,
            ],
            vec!["latch", "client", "add", "app", "--secret", secrets[2]],
            vec!["latch", "hash-secret", secrets[2]],
        ] {
            let cli = Cli::try_parse_from(&args).unwrap();
            let shown = format!("{cli:?}");
            assert!(secrets.iter().all(|s| !shown.contains(s)), "{shown}");
            if let Command::Serve(serve) = cli.command {
                let settings = config::resolve(&serve.overrides, &serve.server).unwrap();
                let shown = format!("{settings:?}");
                assert!(secrets.iter().all(|s| !shown.contains(s)), "{shown}");
                let token = settings.admin_token.as_ref().map(Secret::expose);
                assert_eq!(token, Some(secrets[0]), "the secret itself is kept");
            }
        }
    }
}
