//! Wiring: open storage, register configured clients, build the router, serve with graceful
//! shutdown. Nothing here decides anything about OAuth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use latch_core::clock::Clock;
use latch_core::Authority;
use latch_http::serve::{ConnectionStats, Limits};
use latch_http::AppState;
use latch_http::Serves;
use tokio::net::TcpListener;
use tokio::sync::watch;
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

/// Connections the operations listener serves at most at once: probes, a metrics scraper
/// and admin tools need a handful, and a bound keeps them from taking the descriptors
/// clients need.
pub const OPERATIONS_MAX_CONNECTIONS: usize = 64;

/// The operations listener's share of `room` connections: [`OPERATIONS_MAX_CONNECTIONS`], or
/// half of a room too small for that (a small file-descriptor limit), at least one.
fn operations_share(room: usize) -> usize {
    OPERATIONS_MAX_CONNECTIONS.min(room / 2).max(1)
}

/// The connections to serve at once on the clients' listener and, if there is one
/// (`operations`), on the operations listener. The clients': `configured`, or as many as
/// the file-descriptor limit (raised to its hard limit first) leaves room for beside the
/// operations listener's share, at most the default.
fn connection_limits(configured: Option<usize>, operations: bool) -> (usize, usize) {
    use latch_http::serve::DEFAULT_MAX_CONNECTIONS;
    let fds = fd_limit::raise_to_hard();
    let room = fds.map_or(DEFAULT_MAX_CONNECTIONS, fd_limit::connections_within);
    let kept = if operations {
        operations_share(room)
    } else {
        0
    };
    (clients_connections(configured, fds, room - kept), kept)
}

/// The clients' connections: `configured`, or `room`, at most the default.
fn clients_connections(configured: Option<usize>, fds: Option<u64>, room: usize) -> usize {
    use latch_http::serve::DEFAULT_MAX_CONNECTIONS;
    let room = room.max(1);
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
    /// The address of its operations listener (health, metrics, admin API), if it has one.
    pub operations_addr: Option<SocketAddr>,
    /// Its domain object, for tests that inspect state.
    pub authority: Arc<Authority>,
    /// Dropped to stop serving.
    shutdown: Option<watch::Sender<()>>,
    /// Dropped to cut the connections a stop gave up waiting for.
    cut: Option<watch::Sender<()>>,
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
    /// Binds `settings.listen` (and `settings.operations_listen`, if set) and starts serving
    /// in the background.
    pub async fn start(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let authority = open_authority(settings, clock).await?;
        let listener = bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let operations = match settings.operations_listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let operations_addr = operations
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
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
        let connections = Arc::new(ConnectionStats::default());
        let operations_connections = Arc::new(ConnectionStats::default());
        let listeners = match operations {
            None => vec![("all", connections.clone())],
            Some(_) => vec![
                ("clients", connections.clone()),
                ("operations", operations_connections.clone()),
            ],
        };
        let state = Arc::new(
            AppState::new(
                authority.clone(),
                issuer,
                settings.admin_token.as_ref().map(Secret::expose),
            )
            .with_profiles(settings.profiles)
            .with_auth_limits(settings.auth_limits)
            .with_listeners(listeners),
        );
        let cleanup = (settings.cleanup_interval > 0).then(|| {
            tokio::spawn(cleanup_loop(
                authority.clone(),
                Duration::from_secs(settings.cleanup_interval),
            ))
        });
        let (shutdown, signal) = watch::channel(());
        let (cut, cut_signal) = watch::channel(());
        let (clients_slots, operations_slots) =
            connection_limits(settings.max_connections, operations.is_some());
        let limits = Limits {
            read_timeout: Duration::from_secs(settings.read_timeout),
            write_timeout: Duration::from_secs(settings.write_timeout),
            max_connections: clients_slots,
        };
        let serving = |listener, serves, limits, stats| {
            latch_http::serve::serve(
                listener,
                latch_http::router(state.clone(), serves),
                limits,
                stats,
                dropped(signal.clone()),
                dropped(cut_signal.clone()),
            )
        };
        let task = match operations {
            None => tokio::spawn(serving(listener, Serves::Everything, limits, connections)),
            Some(operations) => {
                let clients = serving(listener, Serves::Clients, limits, connections);
                let operations = serving(
                    operations,
                    Serves::Operations,
                    Limits {
                        max_connections: operations_slots,
                        ..limits
                    },
                    operations_connections,
                );
                // Both stop together, and the stop waits for both.
                tokio::spawn(async move {
                    let (clients, operations) = tokio::join!(clients, operations);
                    clients.and(operations)
                })
            }
        };
        Ok(Self {
            addr,
            operations_addr,
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
        drop(self.shutdown.take());
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
                drop(self.cut.take());
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

/// Binds `at`, saying which address failed.
async fn bind(at: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot listen on {at}"))
}

/// Completes once `signal`'s sender is dropped.
async fn dropped(mut signal: watch::Receiver<()>) {
    while signal.changed().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operations_listener_takes_its_share_of_the_room_never_all_of_it() {
        assert_eq!(operations_share(10_000), OPERATIONS_MAX_CONNECTIONS);
        assert_eq!(operations_share(128), OPERATIONS_MAX_CONNECTIONS);
        // A small descriptor limit is shared half and half, each listener at least one.
        assert_eq!(operations_share(100), 50);
        assert_eq!(operations_share(1), 1);
        for room in [1, 2, 3, 100, 128, 129, 10_000] {
            let kept = operations_share(room);
            assert!(
                clients_connections(None, None, room - kept) + kept <= room.max(2),
                "{room}"
            );
        }
    }
}
