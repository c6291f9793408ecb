//! # latch-bench
//!
//! One command measures latch against the machine's own ceiling:
//!
//! ```text
//! cargo build --release -p latch -p latch-bench
//! target/release/latch-bench --tokens 1000000
//! ```
//!
//! 1. [`preload`]: a fresh SQLite database with N grants (an access and a refresh token each),
//!    written directly, not over HTTP; with `--postgres URL`, [`preload_pg`] writes the same
//!    rows to a PostgreSQL database, whose processes then share latch's core.
//! 2. Two servers pinned to core 0 (`taskset -c 0`): the real `latch serve` on that database,
//!    and [`ceiling`], a bare handler on the same HTTP stack that parses the form and answers
//!    200 without storage.
//! 3. [`load`]: the load generator, pinned to core 1, keep-alive connections at fixed
//!    concurrency for a fixed duration, per workload.
//! 4. With `--oidc-provider`, [`oidc`]: issuance, introspection and revocation once more,
//!    against panva's `oidc-provider` (npm) on core 0 with the same clients.
//! 5. [`report`]: requests/s, p50, p99, errors, the ratio to the ceiling (which runs before
//!    every workload and at the end), CPU use of both sides, and the server's peak RSS, as
//!    JSON and as a markdown table under `target/bench/`. See `docs/benchmarks.md`.
//!
//! Before the first run, [`warm`] reads the database into the page cache (these VMs page out
//! file cache left untouched for a while, so a kept database may start on disk), and keeps
//! a SQLite database locked there until the last run.
//!
//! No benchmark runs under `cargo test`; the unit tests check the token layout, the preloads
//! (latch reads what they wrote), the disk probe, the `/metrics` parsing and the warm-up.

// The allocator latch's binary uses, so the bare handler runs on the same stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod ceiling;
mod load;
mod oidc;
mod preload;
mod preload_pg;
mod report;
mod sys;
mod warm;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use load::{Commits, Load, Supply, Tokens, Workload};
use preload::State;
use report::{millis, Row, RunInfo, Server};
use sys::CpuSample;

/// Benchmarks latch's hot paths against a bare HTTP handler measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "latch-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Grants to preload, each with an access and a refresh token [default: 1000, or what
    /// the kept database holds].
    #[arg(long)]
    tokens: Option<u64>,
    /// Audit records to preload, the trail a server that has revoked for a while keeps (by
    /// default for ever): every revocation also writes one, into indexes this many records
    /// deep [default: 0, or what the kept database holds].
    #[arg(long)]
    audit_records: Option<u64>,
    /// Seconds per workload.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workloads to run, comma-separated, in order (the ceiling always runs first):
    /// introspect, issue, revoke, refresh, logout.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "introspect,issue,revoke,refresh,logout"
    )]
    workloads: Vec<String>,
    /// The SQLite database file (with `<db>.state.json` beside it).
    #[arg(long, default_value = "target/bench/bench.db")]
    db: PathBuf,
    /// Measure latch on PostgreSQL instead of SQLite: the database this URL names (e.g.
    /// `postgres://root@127.0.0.1:5432/latch_bench`) is dropped, re-created and preloaded
    /// (unless --keep-db finds it preloaded: its state is a table in that database).
    /// PostgreSQL's processes are pinned to core 0 with latch for the run.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Reuse the database at --db if it exists (preloaded by an earlier run; its state file
    /// records which tokens earlier runs consumed, so none is used twice), and keep it.
    /// Without this flag every run preloads afresh.
    #[arg(long, alias = "reuse-db")]
    keep_db: bool,
    /// The latch binary (`cargo build --release -p latch`).
    #[arg(long, default_value = "target/release/latch")]
    latch: PathBuf,
    /// Before each workload, wait up to this many seconds for both cores to be idle (other
    /// processes, e.g. a build, disturb the figures; the report flags it either way).
    #[arg(long, default_value_t = 0)]
    wait_idle: u64,
    /// Where to write the JSON and markdown reports.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also write every request's send time and latency, one file per run
    /// (`<dir>/<run>-<n>.txt`, n counting runs of the same name), stamped with the run's
    /// start on the clock `perf record -k CLOCK_MONOTONIC` uses.
    #[arg(long, value_name = "DIR")]
    latency_trace: Option<PathBuf>,
    /// Also run issuance, introspection and revocation against panva's oidc-provider (npm,
    /// installed under `<out>/oidc-provider/` on first use; needs Node.js and npm), pinned to
    /// core 0 like latch, with the same clients: a side-by-side from one run.
    #[arg(long)]
    oidc_provider: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve only the bare ceiling handler (used by the benchmark itself).
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

const ADMIN_TOKEN: &str = "bench-admin-token";
const PINNED_ENV: &str = "LATCH_BENCH_PINNED";

/// Where a preloaded database's [`State`] lives.
enum StateStore {
    /// `<db>.state.json` beside a SQLite file.
    File(PathBuf),
    /// A table in the PostgreSQL database itself.
    Postgres(String),
}

impl StateStore {
    fn load(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<Option<State>> {
        match self {
            StateStore::File(db) => State::load(db),
            StateStore::Postgres(url) => rt.block_on(preload_pg::load_state(url)),
        }
    }

    fn save(&self, rt: &tokio::runtime::Runtime, state: &State) -> anyhow::Result<()> {
        match self {
            StateStore::File(db) => state.save(db),
            StateStore::Postgres(url) => rt.block_on(preload_pg::save_state(url, state)),
        }
    }
}

/// Child processes, killed when the benchmark ends: by this destructor, or by the kernel if
/// a signal ends it (see [`spawn`]).
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Why a consuming run's figures are in doubt, from the probes of its supply: `ahead`, the
/// tokens it was about to use, each of which must have been live; `used`, those it used,
/// each of which must now be dead.
fn supply_doubt(ahead: &[bool], used: &[bool]) -> Option<String> {
    let dead_ahead = ahead.iter().filter(|&&a| !a).count();
    let live_used = used.iter().filter(|&&a| a).count();
    if dead_ahead > 0 {
        Some(format!(
            "{dead_ahead} of {} tokens probed before the run were already dead: the state \
             file is behind the database, so some requests found nothing to do",
            ahead.len()
        ))
    } else if live_used > 0 {
        Some(format!(
            "{live_used} of {} tokens the run used are still live",
            used.len()
        ))
    } else {
        None
    }
}

/// Where a kept database's state counts what latch's runs of `workload` consumed (`None`:
/// the run consumes nothing of it).
fn consumed_by(state: &mut State, server: Server, workload: Workload) -> Option<&mut u64> {
    match (server, workload) {
        (Server::Latch, Workload::Revoke) => Some(&mut state.revoked),
        (Server::Latch, Workload::Refresh) => Some(&mut state.refreshed),
        (Server::Latch, Workload::Logout) => Some(&mut state.logged_out),
        _ => None,
    }
}

/// Makes the child die with this process however this process ends: one killed by a signal
/// runs no destructor (see [`Children`]). The setting survives `exec`, so `taskset`'s exec of
/// the real program keeps it.
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the child between fork and exec, and makes only
    // async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the setting was made, which nothing would
            // then report.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Starts a server (pinned to core 0 if `pin`) and waits for the line where it says
/// `… listening on http://ADDR`.
fn spawn(
    children: &mut Children,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    pin: bool,
) -> anyhow::Result<(u32, SocketAddr)> {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", program]);
        c
    } else {
        Command::new(program)
    };
    die_with_parent(&mut cmd);
    let mut child = cmd
        .args(args)
        // The benchmark reads `/metrics` and calls the admin API where latch listens: an
        // operations listener of the caller's environment would take them elsewhere.
        .env_remove("LATCH_OPERATIONS_LISTEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    children.0.push(child);
    let mut reader = BufReader::new(stdout);
    // latch prints its operations listener's address first, if it has one.
    let addr = loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.starts_with("latch operations on ") {
            continue;
        }
        break line
            .trim()
            .split_once(" listening on http://")
            .with_context(|| format!("{program} did not start: {line:?}"))?
            .1
            .parse()?;
    };
    // Keep draining its stdout, so a chatty server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    Ok((pid, addr))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Ceiling { listen }) = &cli.command {
        return tokio::runtime::Runtime::new()?.block_on(ceiling::serve(listen));
    }

    // The load generator runs on core 1, the servers on core 0.
    let pinned = sys::have_taskset();
    if pinned && std::env::var_os(PINNED_ENV).is_none() {
        let me = std::env::current_exe()?;
        let mut pinned_self = Command::new("taskset");
        pinned_self
            .args(["-c", "1"])
            .arg(me)
            .args(std::env::args_os().skip(1))
            .env(PINNED_ENV, "1");
        // Killing the benchmark as started kills the pinned copy too, and so its servers.
        die_with_parent(&mut pinned_self);
        let status = pinned_self.status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    if !pinned {
        eprintln!("warning: taskset not found; servers and load generator are NOT pinned");
    }
    if !cli.latch.exists() {
        bail!(
            "{} not found: run `cargo build --release -p latch` first",
            cli.latch.display()
        );
    }
    let workloads: Vec<Workload> = cli
        .workloads
        .iter()
        .map(|w| Workload::parse(w).with_context(|| format!("unknown workload {w:?}")))
        .collect::<anyhow::Result<_>>()?;

    std::fs::create_dir_all(&cli.out)?;
    if let Some(dir) = cli.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let db_dir = match cli.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    if cli.postgres.is_none() && sys::in_memory_fs(db_dir) {
        bail!(
            "{} is on a file system in memory (tmpfs), where fsync makes nothing durable: put \
             --db on a disk",
            cli.db.display()
        );
    }
    let described_db = match &cli.postgres {
        Some(url) => preload_pg::redacted(url),
        None => cli.db.display().to_string(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before the preload: a server whose commits are not durable is refused.
    let server = match &cli.postgres {
        Some(url) => Some(runtime.block_on(preload_pg::describe_server(url))?),
        None => None,
    };
    // Where the state of the preloaded database is kept: beside the SQLite file, or in the
    // PostgreSQL database itself, so it always describes the data it sits with.
    let state_store = match &cli.postgres {
        Some(url) => StateStore::Postgres(url.clone()),
        None => StateStore::File(cli.db.clone()),
    };
    let loaded = if cli.keep_db {
        state_store.load(&runtime)?
    } else {
        None
    };
    // A SQLite file without its state file is still reused (with --tokens as its size).
    let stateless_file = cli.postgres.is_none() && cli.db.exists();
    let kept = if cli.keep_db && (loaded.is_some() || stateless_file) {
        let mut state = match loaded {
            Some(s) => s,
            None => {
                let tokens = cli.tokens.context(
                    "the kept database has no state file: give --tokens (assumed unconsumed)",
                )?;
                eprintln!(
                    "warning: no state file for {described_db}; assuming {tokens} unconsumed grants"
                );
                State {
                    tokens,
                    audit_records: cli.audit_records.unwrap_or(0),
                    ..State::default()
                }
            }
        };
        if state.consumed_in_key_order() {
            bail!(
                "{described_db} was consumed in key order by an older latch-bench, which the \
                 scattered order would reuse: drop --keep-db to preload afresh"
            );
        }
        // Nothing was consumed in key order: from now on its counts are scattered positions.
        state.scattered = true;
        if let Some(t) = cli.tokens.filter(|&t| t != state.tokens) {
            bail!(
                "{} holds {} grants, not {t}: drop --keep-db to preload afresh, or pick another --db",
                described_db,
                state.tokens
            );
        }
        if let Some(a) = cli.audit_records.filter(|&a| a != state.audit_records) {
            bail!(
                "{} holds {} audit records, not {a}: drop --keep-db to preload afresh, or pick another --db",
                described_db,
                state.audit_records
            );
        }
        eprintln!(
            "reusing {} ({} grants, preloaded {}; already consumed: {} revoked, {} rotated, {} subjects logged out)",
            described_db,
            state.tokens,
            state.preloaded_at,
            state.revoked,
            state.refreshed,
            state.logged_out
        );
        Some(state)
    } else {
        None
    };
    let preloaded_now = kept.is_none();
    let mut state = match kept {
        Some(s) => s,
        None => {
            let n = cli.tokens.unwrap_or(1_000);
            let audit = cli.audit_records.unwrap_or(0);
            let s = match &cli.postgres {
                Some(url) => runtime.block_on(preload_pg::preload(url, n, audit))?,
                None => preload::preload(&cli.db, n, audit)?,
            };
            state_store.save(&runtime, &s)?;
            eprintln!("preloaded {n} grants in {:.1} s", s.preload_seconds);
            s
        }
    };
    let layout = state.layout();
    let db_bytes = match &cli.postgres {
        Some(url) => runtime.block_on(preload_pg::database_bytes(url))?,
        None => std::fs::metadata(&cli.db).map_or(0, |m| m.len()),
    };
    // Before any server runs, so that nothing else uses the disk. PostgreSQL's data directory
    // is its own; the probe runs beside the reports, on this machine's one disk.
    let probe_dir = match &cli.postgres {
        Some(_) => cli.out.clone(),
        None => cli
            .db
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    std::fs::create_dir_all(&probe_dir)?;
    let sync = sys::sync_latency(&probe_dir);
    if let Some(s) = sync {
        eprintln!(
            "disk: a {} KB write and fsync takes {:.2} ms (p50), {:.2} ms (p99)",
            sys::SYNC_PROBE_BYTES / 1000,
            s.p50_ms,
            s.p99_ms
        );
    }
    // PostgreSQL is part of the server under test: on core 0 with latch, for this run only.
    let _pinned_postgres =
        (pinned && cli.postgres.is_some()).then(|| sys::PinnedPostgres::pin("0"));

    let mut children = Children::default();
    let me = std::env::current_exe()?;
    let (bare_pid, bare_addr) = spawn(
        &mut children,
        me.to_str().context("path")?,
        &["ceiling"],
        &[],
        pinned,
    )?;
    let db_url = match &cli.postgres {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", cli.db.display()),
    };
    let (latch_pid, latch_addr) = spawn(
        &mut children,
        cli.latch.to_str().context("path")?,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db_url,
            "--admin-token",
            ADMIN_TOKEN,
            "--log",
            "warn",
            "--cleanup-interval",
            "0",
        ],
        &[],
        pinned,
    )?;
    let affinity = format!(
        "latch server on CPU {}, ceiling server on CPU {}, load generator on CPU {}",
        sys::cpus_allowed(&latch_pid.to_string()).unwrap_or_else(|| "?".into()),
        sys::cpus_allowed(&bare_pid.to_string()).unwrap_or_else(|| "?".into()),
        sys::cpus_allowed("self").unwrap_or_else(|| "?".into()),
    );
    eprintln!("{affinity}");

    let oidc = if cli.oidc_provider {
        let install = oidc::install(&cli.out)?;
        let script = install.script();
        let (pid, addr) = spawn(
            &mut children,
            "node",
            &[script.to_str().context("path")?],
            &oidc::ENV,
            pinned,
        )?;
        eprintln!(
            "{} on CPU {}",
            install.description,
            sys::cpus_allowed(&pid.to_string()).unwrap_or_else(|| "?".into())
        );
        Some((pid, addr, install.description))
    } else {
        None
    };

    let mut load = Load::new(
        cli.concurrency,
        Duration::from_secs(cli.duration),
        layout,
        ADMIN_TOKEN,
    )?;
    if let Some(dir) = &cli.latency_trace {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        load.traced = true;
    }
    let load = Arc::new(load);
    let mut traced_runs: HashMap<String, usize> = HashMap::new();
    let preloaded = Arc::new(Tokens::Preloaded);
    // oidc-provider's tokens: those its issuance run handed out.
    let mut issued_by_oidc: Option<Arc<Tokens>> = None;
    let mut rows: Vec<Row> = Vec::new();
    // The ceiling runs before every workload and at the end (see `report`).
    let mut plan = Vec::new();
    let oidc_workloads = oidc.as_ref().map_or(&[][..], |_| &oidc::WORKLOADS[..]);
    let runs = workloads
        .iter()
        .map(|w| (Server::Latch, *w))
        .chain(oidc_workloads.iter().map(|w| (Server::OidcProvider, *w)));
    for (server, w) in runs {
        if w != Workload::Ceiling {
            plan.push((Server::Latch, Workload::Ceiling));
        }
        plan.push((server, w));
    }
    plan.push((Server::Latch, Workload::Ceiling));
    // Once, before the first run: a kept database may have sat idle long enough for the VM
    // to page it out (see `warm`).
    let started = Instant::now();
    let warmed = match &cli.postgres {
        Some(url) => runtime.block_on(warm::postgres(url)),
        None => warm::sqlite(&cli.db).map_err(Into::into),
    };
    let mut cache = match warmed {
        Ok(bytes) => format!(
            "database read into the page cache before the runs ({} MB in {:.1} s)",
            bytes / 1_000_000,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("warning: could not read the database ahead of the runs: {e:#}");
            "database not read ahead".into()
        }
    };
    // And a SQLite database's pages kept in memory until every run is done (see `warm`).
    let _locked_db = match &cli.postgres {
        Some(_) => None,
        None => match warm::Locked::file(&cli.db) {
            Ok(p) => {
                cache += &format!(" and locked there ({} MB)", p.len() / 1_000_000);
                Some(p)
            }
            Err(e) => {
                eprintln!(
                    "warning: could not lock the database in memory ({e}); pages idle for a \
                     minute may be paged out between runs"
                );
                cache += &format!(", not locked there ({e})");
                None
            }
        },
    };
    eprintln!("{cache}");
    for (server, w) in plan {
        let (addr, pid) = match (server, &oidc) {
            _ if w == Workload::Ceiling => (bare_addr, bare_pid),
            (Server::OidcProvider, Some((pid, addr, _))) => (*addr, *pid),
            _ => (latch_addr, latch_pid),
        };
        let tokens = match server {
            Server::Latch => preloaded.clone(),
            Server::OidcProvider => match (&issued_by_oidc, w) {
                (Some(t), _) => t.clone(),
                (None, Workload::Issue) => preloaded.clone(),
                (None, _) => {
                    rows.push(Row::skipped(
                        server,
                        w,
                        "oidc-provider's issuance run produced no tokens",
                    ));
                    continue;
                }
            },
        };
        // What earlier runs on this database used of the workload's supply.
        let used = consumed_by(&mut state, server, w);
        let supply = match (server, w) {
            (Server::OidcProvider, Workload::Revoke) => {
                Some(Supply::new(tokens.revocable(&layout), 0))
            }
            (Server::OidcProvider, _) => None,
            (_, Workload::Revoke | Workload::Refresh) => Some(Supply::new(
                layout.consumable(),
                used.as_deref().copied().unwrap_or(0),
            )),
            (_, Workload::Logout) => Some(Supply::new(
                layout.logout_subjects(),
                used.as_deref().copied().unwrap_or(0),
            )),
            _ => None,
        };
        let available = supply.as_ref().map(Supply::available);
        if available == Some(0) {
            rows.push(Row::skipped(
                server,
                w,
                "all distinct items used by earlier runs on this database; preload again",
            ));
            continue;
        }
        if cli.wait_idle > 0 && !sys::wait_idle(Duration::from_secs(cli.wait_idle)) {
            eprintln!(
                "warning: the machine was still busy after {} s; running {} anyway",
                cli.wait_idle,
                w.name()
            );
        }
        let server_pids = || {
            let mut pids = vec![pid];
            if cli.postgres.is_some() && server == Server::Latch && w != Workload::Ceiling {
                pids.extend(sys::postgres_pids());
            }
            pids
        };
        let collect = server == Server::OidcProvider && w == Workload::Issue;
        // latch's group-commit counters before and after, outside the measured window.
        let scrape = || {
            let latch_run = server == Server::Latch && w != Workload::Ceiling;
            latch_run
                .then(|| runtime.block_on(Commits::scrape(addr)))
                .and_then(|r| {
                    r.inspect_err(|e| eprintln!("warning: /metrics: {e:#}"))
                        .ok()
                })
        };
        // Revocation and rotation answer 200 for a dead token too: probe that the run's
        // tokens were live before it and dead after it.
        let probed = match (server, w, &supply) {
            (Server::Latch, Workload::Revoke | Workload::Refresh, Some(supply)) => {
                let kind = if w == Workload::Revoke { "at" } else { "rt" };
                let before =
                    runtime.block_on(load::active(addr, &load, kind, supply.sample_ahead()))?;
                Some((kind, supply.clone(), before))
            }
            _ => None,
        };
        // The whole supply is recorded as used before the run, and what the run left is given
        // back as soon as it ends: a run cut short (an error in it, a kill) leaves no used
        // item to be taken for a live one by the next run on a kept database.
        let used_before = used.as_deref().copied();
        if let (Some(used), Some(available)) = (used, available) {
            *used += available;
            state_store.save(&runtime, &state)?;
        }
        let commits_before = scrape();
        let before = CpuSample::take(&server_pids());
        let mut o = runtime.block_on(load::run(w, addr, load.clone(), tokens, supply, collect))?;
        let cpu = before.until(&CpuSample::take(&server_pids()));
        if let (Some(used_before), Some(used)) = (used_before, consumed_by(&mut state, server, w)) {
            *used = used_before + o.consumed;
            state_store.save(&runtime, &state)?;
        }
        let commits = scrape()
            .zip(commits_before)
            .and_then(|(after, before)| after.since(&before));
        let doubt = match probed {
            Some((kind, supply, before)) => {
                let after = runtime.block_on(load::active(
                    addr,
                    &load,
                    kind,
                    supply.sample_used(o.consumed),
                ))?;
                supply_doubt(&before, &after)
            }
            None => None,
        };
        // Written once the run's CPU and commit counters are read: the file's writing is not
        // the run's, and on the load generator's core it would count as load.
        if let (Some(dir), Some(trace)) = (&cli.latency_trace, &o.trace) {
            let name = report::label(server, w).replace(' ', "-");
            let n = traced_runs.entry(name.clone()).or_default();
            *n += 1;
            let path = dir.join(format!("{name}-{n}.txt"));
            trace
                .write(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if collect {
            // Revocation uses tokens up faster than issuance makes them: top the supply up
            // with an unmeasured issuance run twice as long.
            let fill = Arc::new(load.with_duration(load.duration * 2));
            let more = runtime.block_on(load::run(w, addr, fill, preloaded.clone(), None, true))?;
            let mut issued = std::mem::take(&mut o.issued);
            issued.extend(more.issued);
            if !issued.is_empty() {
                issued_by_oidc = Some(Arc::new(Tokens::Issued(issued)));
            }
        }
        let mut notes = Vec::new();
        notes.extend(doubt.clone());
        if o.exhausted {
            let what = if w == Workload::Logout {
                "subjects"
            } else {
                "tokens"
            };
            notes.push(format!(
                "stopped after {:.2} s: all {} distinct {what} used",
                o.elapsed.as_secs_f64(),
                available.unwrap_or(0)
            ));
        }
        notes.extend(commits);
        if let Some(e) = &o.first_error {
            notes.push(format!("first error: {}", e.replace('|', "/")));
        }
        let note = notes.join("; ");
        let label = report::label(server, w);
        eprintln!(
            "{label:<13} {:>9.0} req/s  p99 {:.2} ms ({:.2} corrected)  errors {}  server CPU {:.0}%  load CPU {:.0}%  {note}",
            o.rps(),
            millis(&o.latency_us, 0.99),
            o.corrected_ms(0.99),
            o.errors,
            cpu.server * 100.0,
            cpu.load * 100.0,
        );
        rows.push(Row {
            outcome: Some(o),
            workload: w,
            server,
            cpu,
            note,
            doubt,
        });
    }
    let oidc_rss = oidc
        .as_ref()
        .and_then(|(pid, _, _)| sys::peak_rss_kib(*pid));
    let rss = sys::peak_rss_kib(latch_pid);
    let ceiling_rss = sys::peak_rss_kib(bare_pid);
    drop(children);

    let pinning = if pinned && cli.postgres.is_some() {
        format!("pinned with taskset: {affinity}, PostgreSQL (every process) on CPU 0")
    } else if pinned {
        format!("pinned with taskset: {affinity}")
    } else {
        "NOT pinned (taskset not found)".into()
    };
    let info = RunInfo {
        concurrency: cli.concurrency,
        duration: cli.duration,
        db: described_db,
        backend: if cli.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        server,
        out: cli.out.clone(),
        state,
        preloaded_now,
        db_bytes,
        rss_kib: rss,
        ceiling_rss_kib: ceiling_rss,
        pinning,
        sync,
        cache,
        latch: cli.latch.clone(),
        oidc_provider: oidc.map(|(_, _, description)| (description, oidc_rss)),
    };
    report::write(&info, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_in_doubt_when_its_tokens_were_dead_before_or_live_after() {
        assert_eq!(supply_doubt(&[true; 8], &[false; 8]), None);
        assert_eq!(
            supply_doubt(&[true; 8], &[]),
            None,
            "a run that used nothing"
        );
        assert_eq!(
            supply_doubt(&[false, false, true], &[false; 8]).as_deref(),
            Some(
                "2 of 3 tokens probed before the run were already dead: the state file is \
                 behind the database, so some requests found nothing to do"
            )
        );
        assert_eq!(
            supply_doubt(&[true; 8], &[false, true]).as_deref(),
            Some("1 of 2 tokens the run used are still live")
        );
    }
}
