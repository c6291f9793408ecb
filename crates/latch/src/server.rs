//! Wiring: open storage, register configured clients, build the router, serve with graceful
//! shutdown. Nothing here decides anything about OAuth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use latch_core::clock::Clock;
use latch_core::Authority;
use latch_http::AppState;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Secret, Settings};
use crate::fd_limit;

/// Opens the database named in the settings and registers the configured clients.
pub async fn open_authority(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<Authority>> {
    let store = latch_store::open(&settings.database)
        .await
        .with_context(|| format!("cannot open the database {}", settings.database))?;
    let authority =
        Arc::new(Authority::new(store, clock).with_audit_retention(settings.audit_retention_days));
    authority
        .check_clock()
        .await
        .context("this node cannot serve beside the database")?;
    // Before serving, and before the configuration's clients are declared (their ids may be
    // those of removals under way). One that cannot be finished leaves its client in place,
    // as if its removal had not been asked for: serving goes on. So do the revocations of a
    // client's grants a stop cut off.
    if let Err(e) = authority.finish_interrupted_removals().await {
        tracing::error!(error = %e, "the removals a crash interrupted could not be finished");
    }
    for tenant in &settings.tenants {
        authority
            .ensure_tenant(tenant)
            .await
            .with_context(|| format!("cannot create configured tenant {tenant}"))?;
    }
    let mut declared = Vec::with_capacity(settings.clients.len());
    for spec in &settings.clients {
        let id = spec.id.clone();
        authority
            .declare_client(spec.clone())
            .await
            .with_context(|| format!("cannot register configured client {id}"))?;
        declared.push((spec.tenant.clone(), id));
    }
    for (tenant, id) in authority
        .undeclare_clients_except(&declared)
        .await
        .context("cannot update the clients the configuration no longer declares")?
    {
        tracing::warn!(
            %tenant,
            client_id = %id,
            "a client the configuration file declared is no longer in it: it stays \
             registered with its grants, and is now changed or removed through the admin API \
             or the CLI"
        );
    }
    Ok(authority)
}

/// The connections to serve at once: `configured`, or as many as the file-descriptor limit
/// (raised to its hard limit first) leaves room for, at most the default.
fn max_connections(configured: Option<usize>) -> usize {
    use latch_http::serve::DEFAULT_MAX_CONNECTIONS;
    let fds = fd_limit::raise_to_hard();
    let room = fds.map_or(DEFAULT_MAX_CONNECTIONS, fd_limit::connections_within);
    match configured {
        Some(n) => {
            if n > room {
                tracing::warn!(
                    max_connections = n,
                    file_descriptors = fds,
                    "max_connections leaves too few file descriptors for storage: at that many \
                     connections, opening the database's files and connections may fail"
                );
            }
            n
        }
        None => room.min(DEFAULT_MAX_CONNECTIONS),
    }
}

/// A running server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its domain object, for tests that inspect state.
    pub authority: Arc<Authority>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Cuts the connections a stop gave up waiting for.
    cut: Option<oneshot::Sender<()>>,
    /// How long [`Server::shutdown`] waits for the requests in flight.
    shutdown_timeout: Duration,
    task: JoinHandle<std::io::Result<()>>,
    cleanup: Option<JoinHandle<()>>,
}

/// Deletes expired rows every `interval`. A failed run is logged and retried next time.
async fn cleanup_loop(authority: Arc<Authority>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = authority.purge_expired().await {
            tracing::warn!(error = %e, "expiry clean-up failed; retrying next interval");
        }
    }
}

impl Server {
    /// Binds `settings.listen` and starts serving in the background.
    pub async fn start(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let authority = open_authority(settings, clock).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let issuer = settings.issuer.clone().unwrap_or_else(|| {
            let derived = format!("http://{addr}");
            if addr.ip().is_unspecified() {
                // Every address of the host: no client reaches this one by that name.
                tracing::warn!(
                    issuer = %derived,
                    "no issuer is set, and the one derived from the listen address names no \
                     reachable host; set --issuer (or `issuer` in the configuration file) to \
                     the URL clients use"
                );
            }
            derived
        });
        let state = Arc::new(
            AppState::new(
                authority.clone(),
                issuer,
                settings.admin_token.as_ref().map(Secret::expose),
            )
            .with_profiles(settings.profiles)
            .with_auth_limits(settings.auth_limits),
        );
        let app = latch_http::router(state);
        let cleanup = (settings.cleanup_interval > 0).then(|| {
            tokio::spawn(cleanup_loop(
                authority.clone(),
                Duration::from_secs(settings.cleanup_interval),
            ))
        });
        let (shutdown, signal) = oneshot::channel::<()>();
        let (cut, cut_signal) = oneshot::channel::<()>();
        let limits = latch_http::serve::Limits {
            read_timeout: Duration::from_secs(settings.read_timeout),
            write_timeout: Duration::from_secs(settings.write_timeout),
            max_connections: max_connections(settings.max_connections),
        };
        let task = tokio::spawn(latch_http::serve::serve(
            listener,
            app,
            limits,
            async {
                let _ = signal.await;
            },
            async {
                let _ = cut_signal.await;
            },
        ));
        Ok(Self {
            addr,
            authority,
            shutdown: Some(shutdown),
            cut: Some(cut),
            shutdown_timeout: Duration::from_secs(settings.shutdown_timeout),
            task,
            cleanup,
        })
    }

    /// Stops accepting connections, lets in-flight requests finish (for at most the
    /// configured `shutdown_timeout`: a client stalled mid-request would otherwise hold the
    /// stop for ever), leaves the database self-contained on disk
    /// ([`latch_core::store::Storage::close`]), and returns. A write cut off is either
    /// committed or never answered: its client saw no `200`.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.abort();
        }
        match tokio::time::timeout(self.shutdown_timeout, &mut self.task).await {
            Ok(served) => served??,
            Err(_) => {
                tracing::warn!(
                    seconds = self.shutdown_timeout.as_secs(),
                    "requests still in flight at the shutdown timeout were cut off"
                );
                // Every connection lets go of its request at once, and `serve` returns once
                // the last has: no request is served on (nor commits) while the database
                // closes. (Bounded all the same: a handler stuck outside an `.await`.)
                if let Some(cut) = self.cut.take() {
                    let _ = cut.send(());
                }
                match tokio::time::timeout(self.shutdown_timeout, &mut self.task).await {
                    Ok(served) => served??,
                    Err(_) => self.task.abort(),
                }
            }
        }
        // A removal or a revocation of a client's grants a caller left running (it hung up)
        // goes on to its end: the store closes after it.
        let background = self.authority.finish_background();
        if tokio::time::timeout(self.shutdown_timeout, background)
            .await
            .is_err()
        {
            background_cut_off("at the shutdown timeout");
        }
        // Durability does not depend on it (a WAL left behind is replayed at the next start),
        // so a failure is worth a warning, not a failed exit.
        if let Err(e) = self.authority.store().close().await {
            tracing::warn!(error = %e, "the database's write-ahead log was left as it was");
        }
        Ok(())
    }
}

/// Logs that work a request left running when its caller hung up was cut off by the stop
/// (`when`), and what then follows.
pub(crate) fn background_cut_off(when: &str) {
    tracing::warn!(
        when,
        "a removal, or a revocation of a client's grants, a request had left running was cut \
         off: on SQLite the next start finishes it; on PostgreSQL, where it is one transaction, \
         do it again"
    );
}

/// The process's stop requests (SIGTERM, SIGINT), caught from the moment this is made.
///
/// Made before the server says it is listening: a supervisor may send SIGTERM as soon as it
/// reads that line, and until a handler is in place the signal's default action kills the
/// process on the spot, with no graceful stop (`tokio::signal::ctrl_c` alone installs its
/// handler only when first polled).
pub struct StopSignal {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 2],
}

impl StopSignal {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                signals: [
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves when the process is asked to stop.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let [term, int] = &mut self.signals;
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
