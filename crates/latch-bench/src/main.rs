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
//!    written directly, not over HTTP.
//! 2. Two servers pinned to core 0 (`taskset -c 0`): the real `latch serve` on that database,
//!    and [`ceiling`], a bare handler on the same HTTP stack that parses the form and answers
//!    200 without storage.
//! 3. [`load`]: the load generator, pinned to core 1, keep-alive connections at fixed
//!    concurrency for a fixed duration, per workload.
//! 4. A report: requests/s, p50, p99, errors, the ratio to the ceiling, CPU use of both
//!    sides, and the server's peak RSS, as JSON and as a markdown table under `target/bench/`.
//!
//! Nothing here runs under `cargo test` except two small unit tests of the token layout.

mod ceiling;
mod load;
mod preload;
mod sys;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use load::{Load, Outcome, Workload};
use preload::State;
use serde_json::json;
use sys::{CpuSample, CpuUse};

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
    /// Reuse the database at --db if it exists (preloaded by an earlier run; its state file
    /// records which tokens earlier runs consumed, so none is used twice), and keep it.
    /// Without this flag every run preloads afresh.
    #[arg(long, alias = "reuse-db")]
    keep_db: bool,
    /// The latch binary (`cargo build --release -p latch`).
    #[arg(long, default_value = "target/release/latch")]
    latch: PathBuf,
    /// Where to write the JSON and markdown reports.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
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

/// Child processes, killed when the benchmark ends, however it ends.
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

/// Starts a server (pinned to core 0 if `pin`) and waits for its listening line.
fn spawn(
    children: &mut Children,
    program: &str,
    args: &[&str],
    pin: bool,
) -> anyhow::Result<(u32, SocketAddr)> {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", program]);
        c
    } else {
        Command::new(program)
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    children.0.push(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("latch listening on http://")
        .with_context(|| format!("{program} did not start: {line:?}"))?
        .parse()?;
    // Keep draining its stdout, so a chatty server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    Ok((pid, addr))
}

fn millis(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One row of the report.
struct Row {
    outcome: Option<Outcome>,
    workload: Workload,
    cpu: CpuUse,
    note: String,
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
        let status = Command::new("taskset")
            .args(["-c", "1"])
            .arg(me)
            .args(std::env::args_os().skip(1))
            .env(PINNED_ENV, "1")
            .status()?;
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
    let kept = if cli.keep_db && cli.db.exists() {
        let state = match State::load(&cli.db)? {
            Some(s) => s,
            None => {
                let tokens = cli.tokens.context(
                    "the kept database has no state file: give --tokens (assumed unconsumed)",
                )?;
                eprintln!("warning: no state file beside {}; assuming {tokens} unconsumed grants", cli.db.display());
                State {
                    tokens,
                    ..State::default()
                }
            }
        };
        if let Some(t) = cli.tokens.filter(|&t| t != state.tokens) {
            bail!(
                "{} holds {} grants, not {t}: drop --keep-db to preload afresh, or pick another --db",
                cli.db.display(),
                state.tokens
            );
        }
        eprintln!(
            "reusing {} ({} grants, preloaded {}; already consumed: {} revoked, {} rotated, {} subjects logged out)",
            cli.db.display(),
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
            let s = preload::preload(&cli.db, n)?;
            eprintln!("preloaded {n} grants in {:.1} s", s.preload_seconds);
            s
        }
    };
    let layout = state.layout();
    let db_bytes = std::fs::metadata(&cli.db).map_or(0, |m| m.len());

    let mut children = Children::default();
    let me = std::env::current_exe()?;
    let (bare_pid, bare_addr) = spawn(
        &mut children,
        me.to_str().context("path")?,
        &["ceiling"],
        pinned,
    )?;
    let db_url = format!("sqlite://{}", cli.db.display());
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
        pinned,
    )?;
    let affinity = format!(
        "latch server on CPU {}, ceiling server on CPU {}, load generator on CPU {}",
        sys::cpus_allowed(&latch_pid.to_string()).unwrap_or_else(|| "?".into()),
        sys::cpus_allowed(&bare_pid.to_string()).unwrap_or_else(|| "?".into()),
        sys::cpus_allowed("self").unwrap_or_else(|| "?".into()),
    );
    eprintln!("{affinity}");

    let load = Arc::new(Load::new(
        cli.concurrency,
        Duration::from_secs(cli.duration),
        layout,
        ADMIN_TOKEN,
    )?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows: Vec<Row> = Vec::new();
    for w in std::iter::once(Workload::Ceiling).chain(workloads) {
        let (addr, pid) = if w == Workload::Ceiling {
            (bare_addr, bare_pid)
        } else {
            (latch_addr, latch_pid)
        };
        let supply = match w {
            Workload::Revoke => Some(layout.consumable().start + state.revoked..layout.consumable().end),
            Workload::Refresh => {
                Some(layout.consumable().start + state.refreshed..layout.consumable().end)
            }
            Workload::Logout => Some(
                layout.logout_subjects().start + state.logged_out..layout.logout_subjects().end,
            ),
            _ => None,
        };
        let available = supply.as_ref().map(|r| r.end.saturating_sub(r.start));
        if available == Some(0) {
            eprintln!("{:<10} skipped: every distinct item was used by earlier runs", w.name());
            rows.push(Row {
                outcome: None,
                workload: w,
                cpu: CpuUse::default(),
                note: "skipped: all distinct items used by earlier runs on this database; preload again".into(),
            });
            continue;
        }
        let before = CpuSample::take(pid);
        let o = runtime.block_on(load::run(w, addr, load.clone(), supply))?;
        let cpu = before.until(&CpuSample::take(pid));
        match w {
            Workload::Revoke => state.revoked += o.consumed,
            Workload::Refresh => state.refreshed += o.consumed,
            Workload::Logout => state.logged_out += o.consumed,
            _ => {}
        }
        if w.consumes() {
            state.save(&cli.db)?;
        }
        let mut note = String::new();
        if o.exhausted {
            let what = if w == Workload::Logout {
                "subjects"
            } else {
                "tokens"
            };
            note = format!(
                "stopped after {:.2} s: all {} distinct {what} used",
                o.elapsed.as_secs_f64(),
                available.unwrap_or(0)
            );
        }
        if let Some(e) = &o.first_error {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(&format!("first error: {}", e.replace('|', "/")));
        }
        eprintln!(
            "{:<10} {:>9.0} req/s  p99 {:.2} ms  errors {}  server CPU {:.0}%  load CPU {:.0}%  {note}",
            w.name(),
            o.rps(),
            millis(&o.latency_us, 0.99),
            o.errors,
            cpu.server * 100.0,
            cpu.load * 100.0,
        );
        rows.push(Row {
            outcome: Some(o),
            workload: w,
            cpu,
            note,
        });
    }
    let rss = sys::peak_rss_kib(latch_pid);
    let ceiling_rss = sys::peak_rss_kib(bare_pid);
    drop(children);

    let pinning = if pinned {
        format!("pinned with taskset: {affinity}")
    } else {
        "NOT pinned (taskset not found)".into()
    };
    let context = RunInfo {
        cli: &cli,
        state: &state,
        preloaded_now,
        db_bytes,
        rss_kib: rss,
        ceiling_rss_kib: ceiling_rss,
        pinning,
    };
    report(&context, &rows)
}

/// What the report says about the run besides the rows.
struct RunInfo<'a> {
    cli: &'a Cli,
    state: &'a State,
    preloaded_now: bool,
    db_bytes: u64,
    rss_kib: Option<u64>,
    ceiling_rss_kib: Option<u64>,
    pinning: String,
}

/// Issue 5's targets: (workload, minimum ratio to the ceiling).
const TARGETS: [(Workload, f64); 3] = [
    (Workload::Introspect, 0.5),
    (Workload::Revoke, 0.25),
    (Workload::Issue, 0.25),
];
const TARGET_P99_MS: f64 = 5.0;

fn report(ctx: &RunInfo<'_>, rows: &[Row]) -> anyhow::Result<()> {
    let cli = ctx.cli;
    let ceiling = rows
        .first()
        .and_then(|r| r.outcome.as_ref())
        .map_or(f64::NAN, Outcome::rps);
    let date = sys::utc_now();
    let revision = sys::git_revision().unwrap_or_else(|| "unknown".into());
    let cores = sys::cores();
    let cpu = sys::cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mb = |kib: Option<u64>| kib.map_or("unknown".into(), |k| format!("{:.0} MB", k as f64 / 1024.0));
    let preload = if ctx.preloaded_now {
        format!("preloaded in {:.1} s", ctx.state.preload_seconds)
    } else {
        format!("kept database, preloaded {}", ctx.state.preloaded_at)
    };

    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match &r.outcome {
            None => json!({ "workload": r.workload.name(), "skipped": true, "note": r.note }),
            Some(o) => json!({
                "workload": o.workload.name(),
                "requests": o.requests,
                "rps": o.rps().round(),
                "ratio_to_ceiling": (o.rps() / ceiling * 1000.0).round() / 1000.0,
                "p50_ms": millis(&o.latency_us, 0.5),
                "p99_ms": millis(&o.latency_us, 0.99),
                "p999_ms": millis(&o.latency_us, 0.999),
                "max_ms": o.latency_us.max() as f64 / 1000.0,
                "mean_ms": (o.latency_us.mean() / 10.0).round() / 100.0,
                "errors": o.errors,
                "first_error": o.first_error,
                "seconds": (o.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "consumed": o.consumed,
                "supply_exhausted": o.exhausted,
                "cpu": {
                    "server_share_of_core0": (r.cpu.server * 1000.0).round() / 1000.0,
                    "load_share_of_core1": (r.cpu.load * 1000.0).round() / 1000.0,
                    "core0_busy": (r.cpu.core0_busy * 1000.0).round() / 1000.0,
                    "core1_busy": (r.cpu.core1_busy * 1000.0).round() / 1000.0,
                },
                "note": r.note,
            }),
        })
        .collect();
    let doc = json!({
        "date": date,
        "revision": revision,
        "command": command,
        "tokens": ctx.state.tokens,
        "concurrency": cli.concurrency,
        "duration_s": cli.duration,
        "backend": "sqlite",
        "database": {
            "path": cli.db,
            "bytes": ctx.db_bytes,
            "preloaded_now": ctx.preloaded_now,
            "preload_seconds": (ctx.state.preload_seconds * 10.0).round() / 10.0,
            "preloaded_at": ctx.state.preloaded_at,
        },
        "machine": { "cores": cores, "cpu": cpu, "pinning": ctx.pinning },
        "server_peak_rss_kib": ctx.rss_kib,
        "ceiling_peak_rss_kib": ctx.ceiling_rss_kib,
        "results": json_rows,
    });

    let mut md = format!(
        "latch-bench, {date}, revision {revision}: `{command}`\n\n\
         {} preloaded grants ({} tokens; {preload}; database {:.0} MB), SQLite, concurrency {}, \
         {} s per workload. Machine: {cores} cores ({cpu}), {}. latch peak RSS: {}.\n\n\
         | workload | req/s | × ceiling | p50 ms | p99 ms | errors | requests | server CPU | load CPU | notes |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        ctx.state.tokens,
        ctx.state.tokens * 2,
        ctx.db_bytes as f64 / 1e6,
        cli.concurrency,
        cli.duration,
        ctx.pinning,
        mb(ctx.rss_kib),
    );
    for r in rows {
        match &r.outcome {
            None => md.push_str(&format!(
                "| {} | | | | | | | | | {} |\n",
                r.workload.name(),
                r.note
            )),
            Some(o) => md.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0}% | {:.0}% | {} |\n",
                o.workload.name(),
                o.rps(),
                o.rps() / ceiling,
                millis(&o.latency_us, 0.5),
                millis(&o.latency_us, 0.99),
                o.errors,
                o.requests,
                r.cpu.server * 100.0,
                r.cpu.load * 100.0,
                r.note,
            )),
        }
    }
    md.push_str(
        "\nserver CPU: the server process's share of core 0 (the ceiling handler on the first \
         row, latch below); load CPU: the load generator's share of core 1.\n",
    );
    let foreign: Vec<String> = rows
        .iter()
        .filter(|r| r.outcome.is_some())
        .filter_map(|r| {
            let other0 = r.cpu.core0_busy - r.cpu.server;
            let other1 = r.cpu.core1_busy - r.cpu.load;
            (other0 > 0.1 || other1 > 0.1).then(|| {
                format!(
                    "{} (core 0: {:.0}%, core 1: {:.0}%)",
                    r.workload.name(),
                    other0 * 100.0,
                    other1 * 100.0
                )
            })
        })
        .collect();
    if !foreign.is_empty() {
        md.push_str(&format!(
            "\n**Warning**: other processes used more than 10% of a benchmark core during: {}. \
             Those figures are disturbed.\n",
            foreign.join(", ")
        ));
    }
    // Issue 5's targets, for the workloads that ran.
    let mut targets = Vec::new();
    for r in rows {
        let Some(o) = &r.outcome else { continue };
        if o.workload == Workload::Ceiling {
            continue;
        }
        let ratio = o.rps() / ceiling;
        if let Some((_, min)) = TARGETS.iter().find(|(w, _)| *w == o.workload) {
            let verdict = if ratio >= *min { "met" } else { "MISSED" };
            targets.push(format!(
                "- {}: {ratio:.2} × ceiling (target ≥ {min}): {verdict}",
                o.workload.name()
            ));
        }
        let p99 = millis(&o.latency_us, 0.99);
        if TARGETS.iter().any(|(w, _)| *w == o.workload) {
            let verdict = if p99 <= TARGET_P99_MS { "met" } else { "MISSED" };
            targets.push(format!(
                "- {} p99: {p99:.2} ms (target ≤ {TARGET_P99_MS} ms): {verdict}",
                o.workload.name()
            ));
        }
    }
    if !targets.is_empty() {
        md.push_str("\nIssue 5's targets at this size:\n\n");
        md.push_str(&targets.join("\n"));
        md.push('\n');
    }

    let stem = cli.out.join(format!("results-{}", ctx.state.tokens));
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(stem.with_extension("md"), &md)?;
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        stem.with_extension("json").display(),
        stem.with_extension("md").display()
    );
    Ok(())
}
