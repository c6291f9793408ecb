//! `--oidc-provider`: the same load against panva's `oidc-provider` (npm), run locally on
//! core 0 with the benchmark's clients, so latch and a well-known server are measured side by
//! side in one run, against the same ceiling.
//!
//! The server script and its pinned dependency are embedded in this binary and installed
//! with `npm ci` under `<out>/oidc-provider/` the first time. oidc-provider keeps its tokens
//! in an in-process `Map` there (it ships no durable store), so its writes cost no fsync,
//! unlike latch's; the report says so beside its rows.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::load::Workload;
use crate::preload::{CLIENT, INTROSPECTOR, INTROSPECTOR_SECRET, SECRET};

const PACKAGE_JSON: &str = include_str!("../oidc-provider/package.json");
const PACKAGE_LOCK: &str = include_str!("../oidc-provider/package-lock.json");
const SERVER: &str = include_str!("../oidc-provider/server.mjs");

/// The workloads oidc-provider can serve like latch, in the order they must run: issuance
/// first, because its tokens are the other two's supply. Refresh rotation needs an
/// authorization-code login first and "log out everywhere" has no oidc-provider API.
pub const WORKLOADS: [Workload; 3] = [Workload::Issue, Workload::Introspect, Workload::Revoke];

/// A ready oidc-provider installation.
pub struct Install {
    dir: PathBuf,
    /// `oidc-provider <version> on Node.js <version>`.
    pub description: String,
}

/// Writes the script under `out/oidc-provider/` and installs its dependency if needed.
pub fn install(out: &Path) -> anyhow::Result<Install> {
    let dir = out.join("oidc-provider");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", PACKAGE_LOCK),
        ("server.mjs", SERVER),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    let installed = dir.join("node_modules/oidc-provider/package.json");
    if !installed.exists() {
        eprintln!("installing oidc-provider with npm ci in {}", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .context("cannot run npm (is Node.js installed?)")?;
        if !status.success() {
            bail!("npm ci failed in {}", dir.display());
        }
    }
    let package: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(installed)?)?;
    let node = Command::new("node").arg("--version").output()?;
    let description = format!(
        "oidc-provider {} on Node.js {}",
        package["version"].as_str().unwrap_or("?"),
        String::from_utf8_lossy(&node.stdout).trim()
    );
    Ok(Install { dir, description })
}

/// The environment `server.mjs` reads: the benchmark's two clients.
pub const ENV: [(&str, &str); 4] = [
    ("BENCH_CLIENT_ID", CLIENT),
    ("BENCH_CLIENT_SECRET", SECRET),
    ("BENCH_INTROSPECTOR_ID", INTROSPECTOR),
    ("BENCH_INTROSPECTOR_SECRET", INTROSPECTOR_SECRET),
];

impl Install {
    /// The server script, to run with `node`.
    pub fn script(&self) -> PathBuf {
        self.dir.join("server.mjs")
    }
}
