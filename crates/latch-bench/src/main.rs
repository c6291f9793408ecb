//! # latch-bench
//!
//! One command measures latch against the machine's own ceiling:
//!
//! ```text
//! cargo run --release -p latch-bench -- --tokens 1000000
//! ```
//!
//! 1. [`preload`]: a fresh SQLite database with N grants (an access and a refresh token each),
//!    written directly, not over HTTP.
//! 2. Two servers pinned to core 0 (`taskset -c 0`): the real `latch serve` on that database,
//!    and [`ceiling`], a bare handler on the same HTTP stack that parses the form and answers
//!    200 without storage.
//! 3. [`load`]: the load generator, pinned to core 1, keep-alive connections at fixed
//!    concurrency for a fixed duration, per workload.
//! 4. A report: requests/s, p50, p99, errors, the ratio to the ceiling, and the server's peak
//!    RSS, as JSON and as a markdown table under `target/bench/`.

mod ceiling;
mod load;
mod preload;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use load::{Load, Outcome, Workload};
use serde_json::json;

/// Benchmarks latch's hot paths against a bare HTTP handler measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "latch-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Grants to preload (each with an access and a refresh token).
    #[arg(long, default_value_t = 1_000)]
    tokens: u64,
    /// Seconds per workload.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workloads to run, comma-separated (ceiling always runs first).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "introspect,issue,revoke,refresh,logout"
    )]
    workloads: Vec<String>,
    /// Database file; preloaded unless --reuse-db is given.
    #[arg(long, default_value = "target/bench/bench.db")]
    db: PathBuf,
    /// Use the database at --db as it is (preloaded by an earlier run with the same --tokens).
    /// Consuming workloads (revoke, refresh, logout) need a fresh preload to measure again.
    #[arg(long)]
    reuse_db: bool,
    /// The latch binary.
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

fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts a server (optionally pinned to core 0) and waits for its listening line.
fn spawn(program: &str, args: &[&str], pin: bool) -> anyhow::Result<(Child, SocketAddr)> {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", program]);
        c
    } else {
        Command::new(program)
    };
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("latch listening on http://")
        .with_context(|| format!("{program} did not start: {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn millis(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Ceiling { listen }) = &cli.command {
        return tokio::runtime::Runtime::new()?.block_on(ceiling::serve(listen));
    }

    // The load generator runs on core 1, the servers on core 0.
    let pinned = have_taskset();
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
    if !cli.reuse_db {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", cli.db.display()));
        }
        if let Some(dir) = cli.db.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let t0 = std::time::Instant::now();
        preload::preload(&cli.db, cli.tokens)?;
        eprintln!(
            "preloaded {} grants in {:.1} s",
            cli.tokens,
            t0.elapsed().as_secs_f64()
        );
    }

    let me = std::env::current_exe()?;
    let (mut bare, bare_addr) = spawn(me.to_str().context("path")?, &["ceiling"], pinned)?;
    let db_url = format!("sqlite://{}", cli.db.display());
    let latch = cli.latch.to_str().context("path")?;
    let (mut server, latch_addr) = spawn(
        latch,
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

    let load = Arc::new(Load {
        concurrency: cli.concurrency,
        duration: Duration::from_secs(cli.duration),
        tokens: cli.tokens,
        admin_token: ADMIN_TOKEN.into(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    for w in std::iter::once(Workload::Ceiling).chain(workloads) {
        let addr = if w == Workload::Ceiling {
            bare_addr
        } else {
            latch_addr
        };
        let o = runtime.block_on(load::run(w, addr, load.clone()))?;
        eprintln!(
            "{:<10} {:>9.0} req/s  errors {}",
            w.name(),
            o.rps(),
            o.errors
        );
        outcomes.push(o);
    }
    let rss = peak_rss_kib(server.id());
    let _ = server.kill();
    let _ = bare.kill();
    let _ = server.wait();
    let _ = bare.wait();

    report(&cli, &outcomes, rss, pinned)
}

fn report(
    cli: &Cli,
    outcomes: &[Outcome],
    rss_kib: Option<u64>,
    pinned: bool,
) -> anyhow::Result<()> {
    let ceiling = outcomes.first().map_or(1.0, Outcome::rps);
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    // The machine's cores (this process is pinned to one, so ask the system, not the affinity).
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let pinning = if pinned {
        "servers pinned to core 0, load generator to core 1 (taskset)"
    } else {
        "not pinned (taskset missing)"
    };
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "workload": o.workload.name(),
                "requests": o.requests,
                "rps": o.rps().round(),
                "ratio_to_ceiling": (o.rps() / ceiling * 100.0).round() / 100.0,
                "p50_ms": millis(&o.latency_us, 0.5),
                "p99_ms": millis(&o.latency_us, 0.99),
                "errors": o.errors,
                "seconds": (o.elapsed.as_secs_f64() * 100.0).round() / 100.0,
                "supply_exhausted": o.exhausted,
            })
        })
        .collect();
    let doc = json!({
        "date": date,
        "tokens": cli.tokens,
        "concurrency": cli.concurrency,
        "duration_s": cli.duration,
        "backend": "sqlite",
        "machine": { "cores": cores, "pinning": pinning },
        "server_peak_rss_kib": rss_kib,
        "results": rows,
    });
    let mut md = format!(
        "latch-bench, {date}: {} preloaded grants ({} tokens), SQLite, concurrency {}, {} s per \
         workload, {cores} cores, {pinning}. Server peak RSS: {}.\n\n\
         | workload | req/s | × ceiling | p50 ms | p99 ms | errors | requests |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        cli.tokens,
        cli.tokens * 2,
        cli.concurrency,
        cli.duration,
        rss_kib.map_or("unknown".into(), |k| format!("{:.0} MB", k as f64 / 1024.0)),
    );
    for o in outcomes {
        md.push_str(&format!(
            "| {}{} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            o.workload.name(),
            if o.exhausted {
                " (all distinct items used)"
            } else {
                ""
            },
            o.rps(),
            o.rps() / ceiling,
            millis(&o.latency_us, 0.5),
            millis(&o.latency_us, 0.99),
            o.errors,
            o.requests,
        ));
    }
    let stem = cli.out.join(format!("results-{}", cli.tokens));
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(stem.with_extension("md"), &md)?;
    println!("{md}");
    Ok(())
}
