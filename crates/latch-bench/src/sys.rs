//! What the benchmark reads from the system: CPU pinning, CPU time, peak memory (Linux
//! `/proc`), the disk's sync latency, and the date.

use std::process::Command;
use std::time::{Duration, Instant};

/// Whether `taskset` (util-linux) can pin processes.
pub fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn status_field(pid: &str, field: &str) -> Option<String> {
    proc_field(&format!("/proc/{pid}/status"), field)
}

fn proc_field(path: &str, field: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
}

/// A `field: N kB` line of a `/proc` file such as `/proc/meminfo` or `/proc/self/status`,
/// in KiB.
pub fn proc_kib(path: &str, field: &str) -> Option<u64> {
    proc_field(path, field)?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The CPUs a process may run on, e.g. `"0"` (`"self"` for this process).
pub fn cpus_allowed(pid: &str) -> Option<String> {
    status_field(pid, "Cpus_allowed_list:")
}

/// A process's peak resident set size (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// CPU time (user + system, all threads) a process has used, in clock ticks.
pub fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Per core: (busy, total, steal) clock ticks since boot, from `/proc/stat`. Busy includes
/// steal (time the hypervisor gave to someone else).
pub fn core_ticks() -> Vec<(u64, u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let get = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            let idle = get(3) + get(4);
            let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
            (busy, busy + idle, get(7))
        })
        .collect()
}

/// A reading of the CPU counters the report uses.
#[derive(Clone, Debug)]
pub struct CpuSample {
    cores: Vec<(u64, u64, u64)>,
    /// CPU ticks of each server process (latch, and PostgreSQL's processes when measured).
    server: Vec<(u32, u64)>,
    load: Option<u64>,
}

/// CPU use over an interval, each as a fraction of one core.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// Core 0 (the servers' core): busy fraction, by anyone.
    pub core0_busy: f64,
    /// Core 1 (the load generator's core): busy fraction, by anyone.
    pub core1_busy: f64,
    /// Core 0 and core 1: the share the hypervisor gave to other guests (steal).
    pub core0_steal: f64,
    pub core1_steal: f64,
    /// The server under test.
    pub server: f64,
    /// The load generator (this process).
    pub load: f64,
}

impl CpuSample {
    /// Reads the counters; `server_pids` are the processes that make up the server.
    pub fn take(server_pids: &[u32]) -> Self {
        Self {
            cores: core_ticks(),
            server: server_pids
                .iter()
                .filter_map(|&p| Some((p, process_ticks(&p.to_string())?)))
                .collect(),
            load: process_ticks("self"),
        }
    }

    /// Use between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let core = |i: usize| -> (u64, u64, u64) {
            match (self.cores.get(i), later.cores.get(i)) {
                (Some(a), Some(b)) => (
                    b.0.saturating_sub(a.0),
                    b.1.saturating_sub(a.1),
                    b.2.saturating_sub(a.2),
                ),
                _ => (0, 0, 0),
            }
        };
        let frac = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let (busy0, total0, steal0) = core(0);
        let (busy1, total1, steal1) = core(1);
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        CpuUse {
            core0_busy: frac(busy0, total0),
            core1_busy: frac(busy1, total1),
            core0_steal: frac(steal0, total0),
            core1_steal: frac(steal1, total1),
            // A server process that started in between (a new PostgreSQL backend) counts
            // from zero.
            server: frac(
                later
                    .server
                    .iter()
                    .map(|(pid, t)| {
                        let before = self.server.iter().find(|(p, _)| p == pid);
                        t.saturating_sub(before.map_or(0, |b| b.1))
                    })
                    .sum(),
                total0,
            ),
            load: frac(delta(self.load, later.load), total1),
        }
    }
}

/// The processes of the local PostgreSQL server (postmaster and backends).
pub fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

/// Pins every PostgreSQL process to `cpus` (new backends inherit the postmaster's
/// affinity); dropping the guard gives them back `restore`.
pub struct PinnedPostgres {
    restore: String,
}

impl PinnedPostgres {
    pub fn pin(cpus: &str) -> Self {
        let restore = postgres_pids()
            .first()
            .and_then(|p| cpus_allowed(&p.to_string()))
            .unwrap_or_else(|| "0-1".into());
        set_affinity(&postgres_pids(), cpus);
        Self { restore }
    }
}

impl Drop for PinnedPostgres {
    fn drop(&mut self) {
        set_affinity(&postgres_pids(), &self.restore);
    }
}

fn set_affinity(pids: &[u32], cpus: &str) {
    for pid in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The current time, UTC, to the minute.
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".into(), |s| s.trim().to_owned())
}

/// When a file was last modified, UTC, to the minute.
pub fn modified_utc(path: &std::path::Path) -> Option<String> {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC", "-r"])
        .arg(path)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}

/// The checked-out commit, with `-dirty` if the code has uncommitted changes (`None`
/// outside git). Only what is built counts (the crates and the Cargo files): an edit to the
/// documentation during a run used to mark every report of it `-dirty`.
pub fn git_revision() -> Option<String> {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let head = out(&["rev-parse", "--short", "HEAD"])?;
    let dirty = out(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":/crates",
        ":/Cargo.toml",
        ":/Cargo.lock",
    ])
    .is_some_and(|s| !s.trim().is_empty());
    Some(format!(
        "{}{}",
        head.trim(),
        if dirty { "-dirty" } else { "" }
    ))
}

/// The processor's model name.
pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
}

/// The machine's cores (this process may be pinned to one, so ask the system, not the
/// affinity).
pub fn cores() -> usize {
    core_ticks().len()
}

/// Waits until both of the first two cores were less than 5% busy over a whole second, for at
/// most `max`. Returns whether they were.
pub fn wait_idle(max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        let before = core_ticks();
        std::thread::sleep(Duration::from_secs(1));
        let after = core_ticks();
        let idle = before.iter().zip(&after).take(2).all(|(a, b)| {
            let total = b.1.saturating_sub(a.1).max(1);
            (b.0.saturating_sub(a.0) as f64) / (total as f64) < 0.05
        });
        if idle {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// How long the disk takes to make a group commit durable, measured directly: the latency of
/// one write of [`SYNC_PROBE_BYTES`] followed by `fsync` (as SQLite syncs its WAL), in ms.
#[derive(Clone, Copy, Debug)]
pub struct SyncLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// About one group commit's WAL frames (35 revocations, a page and a half each).
pub const SYNC_PROBE_BYTES: usize = 140_000;
/// Probes per measurement: a fraction of a second on a disk like this machine's.
const SYNC_PROBES: usize = 200;

/// Measures [`SyncLatency`] with a scratch file in `dir` (the database's directory, so the
/// same file system), rewriting the same ten slots in place as a WAL is rewritten, 1 ms
/// apart. Write ratios depend on it, and it differs between machines far more than the CPU
/// does, so the report gives it beside the ceiling. `None` if the directory is not writable.
pub fn sync_latency(dir: &std::path::Path) -> Option<SyncLatency> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!(".latch-bench-sync-probe-{}", std::process::id()));
    let measure = || -> std::io::Result<Vec<Duration>> {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let data = vec![0x5a_u8; SYNC_PROBE_BYTES];
        for slot in 0..10 {
            file.write_all_at(&data, (slot * SYNC_PROBE_BYTES) as u64)?;
        }
        file.sync_all()?;
        (0..SYNC_PROBES)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(1));
                let start = Instant::now();
                file.write_all_at(&data, ((i % 10) * SYNC_PROBE_BYTES) as u64)?;
                file.sync_all()?;
                Ok(start.elapsed())
            })
            .collect()
    };
    let measured = measure();
    let _ = std::fs::remove_file(&path);
    let mut times = measured.ok()?;
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    Some(SyncLatency {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

/// Whether `dir` is on a file system held in memory (tmpfs, ramfs), where an `fsync` costs
/// nothing and makes nothing durable: a database there would be measured as durable when it
/// is not.
pub fn in_memory_fs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is NUL-terminated and `stat` a plain struct the call fills in.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    /// ramfs's magic number (linux/magic.h), which the libc crate does not export.
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    stat.f_type == libc::TMPFS_MAGIC || stat.f_type == RAMFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /dev/shm is a tmpfs on Linux; the crate's own directory is on a disk here.
    #[test]
    fn a_file_system_in_memory_is_told_from_a_disk() {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            assert!(in_memory_fs(shm));
        }
        assert!(!in_memory_fs(std::path::Path::new(env!(
            "CARGO_MANIFEST_DIR"
        ))));
    }

    #[test]
    fn the_sync_probe_measures_in_a_writable_directory_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("latch-bench-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let measured = sync_latency(&dir).expect("a writable directory is measured");
        assert!(measured.p50_ms > 0.0 && measured.p50_ms <= measured.p99_ms);
        let left = std::fs::read_dir(&dir).expect("listed").count();
        std::fs::remove_dir(&dir).expect("removed");
        assert_eq!(left, 0, "the scratch file is removed");
        assert!(sync_latency(std::path::Path::new("/proc")).is_none());
    }
}
