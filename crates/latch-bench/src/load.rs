//! The load generator: a fixed number of keep-alive HTTP/1.1 connections (hyper), each
//! sending one request at a time for a fixed duration, recording every latency.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::preload::{self, Layout, CLIENT, INTROSPECTOR, INTROSPECTOR_SECRET, SECRET};

/// What the load does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The bare handler: the machine's ceiling.
    Ceiling,
    /// `client_credentials` token issuance.
    Issue,
    /// Introspection of random preloaded, never-revoked access tokens.
    Introspect,
    /// Revocation of distinct preloaded access tokens, each once.
    Revoke,
    /// Rotation of distinct preloaded refresh tokens, each once.
    Refresh,
    /// Admin "log out everywhere" of distinct subjects with ten grants each.
    Logout,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Ceiling,
        Workload::Introspect,
        Workload::Issue,
        Workload::Revoke,
        Workload::Refresh,
        Workload::Logout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Ceiling => "ceiling",
            Workload::Issue => "issue",
            Workload::Introspect => "introspect",
            Workload::Revoke => "revoke",
            Workload::Refresh => "refresh",
            Workload::Logout => "logout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// Where the tokens of introspection and revocation requests come from.
pub enum Tokens {
    /// latch's preloaded tokens, re-derived from their index (see [`preload::token`]).
    Preloaded,
    /// Access tokens another server issued earlier in this run, collected from its
    /// issuance responses: the first quarter is introspected, the rest revoked.
    Issued(Vec<String>),
}

impl Tokens {
    /// Access token number `item`.
    fn access(&self, item: u64) -> String {
        match self {
            Tokens::Preloaded => preload::token("at", item),
            Tokens::Issued(all) => all[item as usize].clone(),
        }
    }

    /// The tokens introspection picks from at random (never revoked by any workload).
    fn introspected(&self, layout: &Layout) -> Range<u64> {
        match self {
            Tokens::Preloaded => layout.introspect(),
            Tokens::Issued(all) => 0..(all.len() as u64 / 4).max(1),
        }
    }

    /// The tokens revocation consumes, each once.
    pub fn revocable(&self, layout: &Layout) -> Range<u64> {
        match self {
            Tokens::Preloaded => layout.consumable(),
            Tokens::Issued(all) => (all.len() as u64 / 4).max(1)..all.len() as u64,
        }
    }
}

/// The distinct items a consuming run may use, each once, in a scattered order.
///
/// Item `k` of a run is `items.start + (used + k) × stride mod len`, with `stride` coprime
/// to `len` (about `len / φ`): a bijection, so the positions `0..used` are exactly the items
/// earlier runs on a kept database consumed (see [`crate::preload::State`]), yet neighbouring
/// requests (and the ~32 writes of one group commit) hit grants, subjects and index leaves
/// spread over the whole database, as real traffic does. Taken in key order, each batch
/// touched neighbouring rows and leaf pages, which flattered every write rate.
#[derive(Clone, Debug)]
pub struct Supply {
    items: Range<u64>,
    stride: u64,
    used: u64,
}

impl Supply {
    /// The items of `items` not among the first `used` of its order.
    pub fn new(items: Range<u64>, used: u64) -> Self {
        let len = items.end.saturating_sub(items.start);
        // The golden ratio's stride keeps any few consecutive positions far apart.
        let mut stride = ((len as f64 / 1.618_033_988_75) as u64).max(1);
        while gcd(stride, len.max(1)) != 1 {
            stride += 1;
        }
        Self {
            items,
            stride,
            used,
        }
    }

    fn len(&self) -> u64 {
        self.items.end.saturating_sub(self.items.start)
    }

    /// A few positions of the run's order to probe with [`active`] before it starts: its
    /// first items (those a state file behind its database would reuse) and a spread.
    pub fn sample_ahead(&self) -> Vec<u64> {
        let n = self.available();
        let mut ks: Vec<u64> = [0, 1, 2, 3, n / 4, n / 2, 3 * n / 4, n.saturating_sub(1)]
            .into_iter()
            .filter(|&k| k < n)
            .collect();
        ks.sort_unstable();
        ks.dedup();
        ks.into_iter().filter_map(|k| self.item(k)).collect()
    }

    /// The first of the items a run used (`consumed` of them), to probe with [`active`] after it.
    pub fn sample_used(&self, consumed: u64) -> Vec<u64> {
        (0..consumed.min(8)).filter_map(|k| self.item(k)).collect()
    }

    /// How many items are left.
    pub fn available(&self) -> u64 {
        self.len().saturating_sub(self.used)
    }

    /// The run's `k`th item, or `None` once they have run out.
    pub fn item(&self, k: u64) -> Option<u64> {
        (k < self.available()).then(|| {
            let position = u128::from(self.used + k) * u128::from(self.stride);
            self.items.start + (position % u128::from(self.len())) as u64
        })
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What one workload measured.
pub struct Outcome {
    /// Requests answered as expected. The rate, the latencies and the ratios count only
    /// these: a run whose requests fail fast must not read as a fast run.
    pub successes: u64,
    /// Requests answered otherwise, or not answered.
    pub errors: u64,
    pub elapsed: Duration,
    /// The successful requests' latencies.
    pub latency_us: Histogram<u64>,
    /// Items of the supply used (consuming workloads).
    pub consumed: u64,
    /// True when the distinct items ran out before the duration did.
    pub exhausted: bool,
    /// The first unexpected response, for the report.
    pub first_error: Option<String>,
    /// The access tokens issued, when the run was asked to collect them.
    pub issued: Vec<String>,
    /// Every request's timing, when the load was asked to trace them ([`Load::traced`]).
    pub trace: Option<LatencyTrace>,
}

/// When each request of a run was sent and how long its answer took (`--latency-trace`), to
/// tell a tail made of unlucky requests from one made of stretches where everything was
/// slow, and to line those stretches up with what `perf` recorded on the server.
pub struct LatencyTrace {
    /// The run's start on `CLOCK_MONOTONIC`, the clock `perf record -k CLOCK_MONOTONIC`
    /// stamps its events with.
    started_monotonic: Duration,
    /// Each request as (connection, µs from the run's start to sending it, latency in µs).
    samples: Vec<(u32, u32, u32)>,
}

impl LatencyTrace {
    /// Writes one line per request, `connection sent_us latency_us`, after a header that
    /// says when the run started.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(
            out,
            "# run started at CLOCK_MONOTONIC {}.{:09} s; columns: connection, sent (µs after \
             the start), latency (µs)",
            self.started_monotonic.as_secs(),
            self.started_monotonic.subsec_nanos()
        )?;
        for (connection, sent, latency) in &self.samples {
            writeln!(out, "{connection} {sent} {latency}")?;
        }
        out.flush()
    }
}

/// `CLOCK_MONOTONIC` now (what [`Instant`] reads on Linux, but as a value `perf` can match).
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Outcome {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.successes as f64 / self.elapsed.as_secs_f64()
    }

    /// Every request sent, successful or not.
    pub fn requests(&self) -> u64 {
        self.successes + self.errors
    }

    /// The `q` quantile of the latencies in ms, corrected for coordinated omission.
    ///
    /// Each connection sends its next request only when the last one is answered, so a stall
    /// of the server delays 64 requests, not the rate × stall that would have arrived
    /// meanwhile from independent clients. As wrk does, every latency longer than the
    /// expected interval between a connection's requests (the mean latency, in a closed
    /// loop) also counts the requests that would have waited behind it
    /// ([`Histogram::clone_correct`]).
    pub fn corrected_ms(&self, q: f64) -> f64 {
        let interval = self.latency_us.mean().round() as u64;
        let corrected = self.latency_us.clone_correct(interval.max(1));
        corrected.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Shared settings of a run.
#[derive(Clone)]
pub struct Load {
    pub concurrency: usize,
    pub duration: Duration,
    pub layout: Layout,
    /// Whether runs record every request's timing ([`Outcome::trace`]).
    pub traced: bool,
    client_auth: HeaderValue,
    introspector_auth: HeaderValue,
    admin_auth: HeaderValue,
}

impl Load {
    pub fn new(
        concurrency: usize,
        duration: Duration,
        layout: Layout,
        admin_token: &str,
    ) -> anyhow::Result<Self> {
        let basic = |id: &str, secret: &str| {
            HeaderValue::try_from(format!(
                "Basic {}",
                STANDARD.encode(format!("{id}:{secret}"))
            ))
        };
        Ok(Self {
            concurrency,
            duration,
            layout,
            traced: false,
            client_auth: basic(CLIENT, SECRET)?,
            introspector_auth: basic(INTROSPECTOR, INTROSPECTOR_SECRET)?,
            admin_auth: HeaderValue::try_from(format!("Bearer {admin_token}"))?,
        })
    }

    /// The same settings for runs of another length.
    pub fn with_duration(&self, duration: Duration) -> Self {
        Self {
            duration,
            ..self.clone()
        }
    }
}

/// One request, independent of the client that sends it.
struct Req {
    method: &'static str,
    path: String,
    auth: HeaderValue,
    /// A form body (`application/x-www-form-urlencoded`), if any.
    form: Option<String>,
}

fn form(path: &str, auth: &HeaderValue, body: String) -> Req {
    Req {
        method: "POST",
        path: path.into(),
        auth: auth.clone(),
        form: Some(body),
    }
}

/// The request of `workload` for item `item` (a token, or a subject for logout).
fn request(workload: Workload, load: &Load, tokens: &Tokens, item: u64) -> Req {
    match workload {
        // The same body as an introspection, so the ceiling does the same HTTP work.
        Workload::Ceiling => form(
            "/bare",
            &load.introspector_auth,
            format!("token={}", preload::token("at", item)),
        ),
        Workload::Issue => form(
            "/oauth2/token",
            &load.client_auth,
            "grant_type=client_credentials".into(),
        ),
        Workload::Introspect => form(
            "/oauth2/introspect",
            &load.introspector_auth,
            format!("token={}", tokens.access(item)),
        ),
        Workload::Revoke => form(
            "/oauth2/revoke",
            &load.client_auth,
            format!("token={}", tokens.access(item)),
        ),
        Workload::Refresh => form(
            "/oauth2/token",
            &load.client_auth,
            format!(
                "grant_type=refresh_token&refresh_token={}",
                preload::token("rt", item)
            ),
        ),
        Workload::Logout => Req {
            method: "DELETE",
            path: format!(
                "/admin/v1/tenants/default/subjects/{}/grants",
                preload::subject(item * preload::GRANTS_PER_SUBJECT)
            ),
            auth: load.admin_auth.clone(),
            form: None,
        },
    }
}

/// A request that warms a connection up (and the server's secret-verification cache for the
/// workload's client) without consuming or creating anything.
fn warmup(workload: Workload, load: &Load, tokens: &Tokens) -> Req {
    match workload {
        Workload::Ceiling | Workload::Introspect => request(
            workload,
            load,
            tokens,
            tokens.introspected(&load.layout).start,
        ),
        // A malformed token: authenticated, then answered 200 without a lookup.
        Workload::Issue | Workload::Revoke | Workload::Refresh => {
            form("/oauth2/revoke", &load.client_auth, "token=warm-up".into())
        }
        Workload::Logout => Req {
            method: "GET",
            path: "/admin/v1/tenants/default/subjects/warm-up/grants".into(),
            auth: load.admin_auth.clone(),
            form: None,
        },
    }
}

/// Whether a response is the expected success.
fn succeeded(workload: Workload, status: u16, body: &[u8]) -> bool {
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    status == 200
        && match workload {
            Workload::Introspect => contains(br#""active":true"#),
            Workload::Logout => contains(br#""revoked_grants":10"#),
            _ => true,
        }
}

/// A keep-alive HTTP/1.1 connection to the server (hyper 1's client connection).
struct Conn(SendRequest<Full<Bytes>>);

impl Conn {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn(sender))
    }

    /// Sends `req` and returns the response's status and body.
    async fn exchange(&mut self, req: &Req, host: &HeaderValue) -> anyhow::Result<(u16, Bytes)> {
        let body = req.form.clone().map_or_else(Bytes::new, Bytes::from);
        let mut r = Request::builder()
            .method(req.method)
            .uri(&req.path)
            .body(Full::new(body))?;
        let h = r.headers_mut();
        h.insert("host", host.clone());
        h.insert("authorization", req.auth.clone());
        if req.form.is_some() {
            h.insert(
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        self.0.ready().await?;
        let resp = self.0.send_request(r).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Whether each of `items`' tokens of `kind` (`"at"` or `"rt"`) introspects active on the
/// latch server at `addr`.
///
/// A consuming run probes its supply with it before and after: the tokens it is about to use
/// must be live (else the state file is behind the database, and the run would revoke dead
/// tokens, answered 200 at the speed of a lookup), and those it used must be dead.
pub async fn active(
    addr: SocketAddr,
    load: &Load,
    kind: &str,
    items: impl IntoIterator<Item = u64>,
) -> anyhow::Result<Vec<bool>> {
    let host = HeaderValue::try_from(addr.to_string())?;
    let mut conn = Conn::connect(addr).await?;
    let mut active = Vec::new();
    for item in items {
        let req = form(
            "/oauth2/introspect",
            &load.introspector_auth,
            format!("token={}", preload::token(kind, item)),
        );
        let (status, body) = conn.exchange(&req, &host).await?;
        anyhow::ensure!(
            status == 200,
            "introspection answered {}",
            describe(status, &body)
        );
        active.push(succeeded(Workload::Introspect, status, &body));
    }
    Ok(active)
}

/// latch's group-commit counters, as its `/metrics` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Commits {
    pub commits: f64,
    pub writes: f64,
    pub writer_checkpoints: f64,
    pub writer_checkpoint_seconds: f64,
}

impl Commits {
    /// Reads them from the latch server at `addr`.
    pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Self> {
        let Conn(mut sender) = Conn::connect(addr).await?;
        let req = Request::get("/metrics")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        anyhow::ensure!(resp.status() == 200, "/metrics answered {}", resp.status());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Self::parse(&String::from_utf8_lossy(&body)))
    }

    /// The counters in a `/metrics` text; a missing one reads as zero.
    fn parse(metrics: &str) -> Self {
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        Self {
            commits: value("latch_store_commits_total"),
            writes: value("latch_store_writes_total"),
            writer_checkpoints: value("latch_store_writer_checkpoints_total"),
            writer_checkpoint_seconds: value("latch_store_writer_checkpoint_seconds_total"),
        }
    }

    /// What happened between `before` and these, for the report's notes: the mean batch,
    /// and the writer's own checkpoints (SQLite's pauses in which no write commits). `None`
    /// if nothing was committed.
    pub fn since(&self, before: &Self) -> Option<String> {
        let commits = self.commits - before.commits;
        if commits <= 0.0 {
            return None;
        }
        let batch = (self.writes - before.writes) / commits;
        let plural = if commits == 1.0 { "" } else { "s" };
        let mut note = format!("{commits:.0} commit{plural} of {batch:.1} writes on average");
        let stalls = self.writer_checkpoints - before.writer_checkpoints;
        if stalls > 0.0 {
            let seconds = self.writer_checkpoint_seconds - before.writer_checkpoint_seconds;
            note.push_str(&format!(
                "; the writer's own checkpoints: {stalls:.0}, {seconds:.2} s"
            ));
        }
        Some(note)
    }
}

fn describe(status: u16, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("{status} {body}")
}

struct PerConnection {
    hist: Histogram<u64>,
    successes: u64,
    errors: u64,
    exhausted: bool,
    first_error: Option<String>,
    issued: Vec<String>,
    trace: Vec<(u32, u32, u32)>,
}

/// The `access_token` of an issuance response.
fn access_token(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(json.get("access_token")?.as_str()?.to_owned())
}

/// Runs one workload against `addr` and measures it. A consuming workload takes the items
/// of `supply`, each once, and stops early when they run out. With `collect`, the
/// access tokens of successful issuance responses are kept in [`Outcome::issued`].
pub async fn run(
    workload: Workload,
    addr: SocketAddr,
    load: Arc<Load>,
    tokens: Arc<Tokens>,
    supply: Option<Supply>,
    collect: bool,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let supply = Arc::new(supply);
    // Connections and warm-up happen before the clock starts.
    let start = Arc::new(tokio::sync::Barrier::new(load.concurrency + 1));
    let host = HeaderValue::try_from(addr.to_string())?;
    // The run's start for the trace, on both clocks: set by the first connection past the
    // barrier, so that every connection's send times count from the same instant.
    let origin = Arc::new(OnceLock::<(Instant, Duration)>::new());
    let mut tasks = Vec::new();
    for c in 0..load.concurrency {
        let (next, load, tokens, start, supply, host, origin) = (
            next.clone(),
            load.clone(),
            tokens.clone(),
            start.clone(),
            supply.clone(),
            host.clone(),
            origin.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = PerConnection {
                hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
                successes: 0,
                errors: 0,
                exhausted: false,
                first_error: None,
                issued: Vec::new(),
                trace: Vec::new(),
            };
            let setup = async {
                let mut conn = Conn::connect(addr).await?;
                let (status, body) = conn
                    .exchange(&warmup(workload, &load, &tokens), &host)
                    .await?;
                anyhow::ensure!(
                    status == 200,
                    "warm-up request failed: {}",
                    describe(status, &body)
                );
                anyhow::Ok(conn)
            }
            .await;
            // Meet at the barrier even on failure, so the others are not left waiting.
            start.wait().await;
            let mut conn = setup.with_context(|| format!("{} connection {c}", workload.name()))?;
            let introspect = tokens.introspected(&load.layout);
            let mut random = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            let (run_start, _) = *origin.get_or_init(|| (Instant::now(), monotonic_now()));
            let deadline = Instant::now() + load.duration;
            while Instant::now() < deadline {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let item = match supply.as_ref() {
                    Some(supply) => match supply.item(next.fetch_add(1, Ordering::Relaxed)) {
                        Some(item) => item,
                        None => {
                            out.exhausted = true;
                            break;
                        }
                    },
                    None => introspect.start + random % (introspect.end - introspect.start),
                };
                let req = request(workload, &load, &tokens, item);
                let t0 = Instant::now();
                let result = conn.exchange(&req, &host).await;
                let latency = t0.elapsed().as_micros() as u64;
                if load.traced {
                    let sent = t0.duration_since(run_start).as_micros();
                    out.trace.push((c as u32, sent as u32, latency as u32));
                }
                match result {
                    Ok((status, body)) if succeeded(workload, status, &body) => {
                        out.successes += 1;
                        out.hist.saturating_record(latency);
                        if collect {
                            out.issued.extend(access_token(&body));
                        }
                    }
                    Ok((status, body)) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert_with(|| describe(status, &body));
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                        conn = Conn::connect(addr).await?;
                    }
                }
            }
            anyhow::Ok(out)
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut successes, mut errors, mut exhausted, mut first_error) = (0, 0, false, None);
    let mut issued = Vec::new();
    let mut samples = Vec::new();
    for t in tasks {
        let out = t.await??;
        issued.extend(out.issued);
        samples.extend(out.trace);
        total.add(out.hist)?;
        successes += out.successes;
        errors += out.errors;
        exhausted |= out.exhausted;
        first_error = first_error.or(out.first_error);
    }
    let elapsed = started.elapsed();
    let consumed = match supply.as_ref() {
        Some(supply) => next.load(Ordering::Relaxed).min(supply.available()),
        None => 0,
    };
    Ok(Outcome {
        successes,
        errors,
        elapsed,
        latency_us: total,
        consumed,
        exhausted,
        first_error,
        issued,
        trace: origin
            .get()
            .filter(|_| load.traced)
            .map(|&(_, started_monotonic)| LatencyTrace {
                started_monotonic,
                samples,
            }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item a supply hands out, from position `used` on.
    fn drain(items: Range<u64>, used: u64) -> Vec<u64> {
        let supply = Supply::new(items, used);
        (0..).map_while(|k| supply.item(k)).collect()
    }

    #[test]
    fn a_supply_hands_out_each_item_of_its_range_once() {
        for len in [0, 1, 2, 3, 10, 250, 1000, 4096, 250_000] {
            let items = 7..7 + len;
            let mut all = drain(items.clone(), 0);
            assert_eq!(all.len() as u64, len);
            all.sort_unstable();
            assert!(all.iter().copied().eq(items), "len {len}");
        }
    }

    #[test]
    fn a_kept_supply_resumes_after_what_earlier_runs_used() {
        let items = 100..1100;
        let whole = drain(items.clone(), 0);
        for used in [0, 1, 333, 999, 1000] {
            let rest = drain(items.clone(), used);
            assert_eq!(rest, whole[used as usize..], "after {used}");
            assert_eq!(Supply::new(items.clone(), used).available(), 1000 - used);
        }
        assert_eq!(
            drain(items.clone(), 5000),
            [] as [u64; 0],
            "more used than there is"
        );
    }

    #[test]
    fn neighbouring_requests_use_items_far_apart() {
        // A group commit takes about 32 writes: none of them should share a neighbourhood
        // (one leaf page holds a few dozen grant rows).
        let len = 250_000;
        let items = drain(0..len, 0);
        for batch in items[..10_000].windows(32) {
            let mut sorted = batch.to_vec();
            sorted.sort_unstable();
            let closest = sorted.windows(2).map(|w| w[1] - w[0]).min().unwrap();
            assert!(closest > 1000, "{batch:?}");
        }
    }

    #[test]
    fn the_corrected_tail_counts_the_requests_a_stall_held_back() {
        let mut latency_us = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        // 990 requests of 1 ms and ten stalled for 100 ms: the raw p99 sees 1 ms, though
        // open-loop clients would have queued ~100 requests behind each stall.
        latency_us.record_n(1_000, 990).unwrap();
        latency_us.record_n(100_000, 10).unwrap();
        let outcome = Outcome {
            successes: 1000,
            errors: 0,
            elapsed: Duration::from_secs(1),
            latency_us,
            consumed: 0,
            exhausted: false,
            first_error: None,
            issued: Vec::new(),
            trace: None,
        };
        assert_eq!(
            outcome.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            1.0
        );
        assert!(
            outcome.corrected_ms(0.99) > 50.0,
            "{}",
            outcome.corrected_ms(0.99)
        );
        assert_eq!(outcome.corrected_ms(0.5), 1.0);
    }

    #[test]
    fn a_latency_trace_is_a_header_and_a_line_per_request() {
        let trace = LatencyTrace {
            started_monotonic: Duration::new(1483, 5_574_214),
            samples: vec![(0, 12, 1_650), (63, 15, 2_301)],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoke-1.txt");
        trace.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("# run started at CLOCK_MONOTONIC 1483.005574214 s;"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1..], ["0 12 1650", "63 15 2301"]);
    }

    #[test]
    fn the_trace_is_stamped_on_the_monotonic_clock_not_the_wall_clock() {
        // perf's timestamps are matched against it, so it must not be the wall clock.
        let now = monotonic_now();
        assert!(monotonic_now() >= now);
        let boot = std::fs::read_to_string("/proc/uptime").unwrap();
        let uptime: f64 = boot.split_whitespace().next().unwrap().parse().unwrap();
        // CLOCK_MONOTONIC counts from boot (less any suspend), nowhere near the epoch.
        assert!(
            now.as_secs_f64() <= uptime + 1.0,
            "{now:?} vs uptime {uptime}"
        );
    }

    #[test]
    fn commit_counters_are_read_from_metrics_and_noted_as_differences() {
        let text = |commits, writes, stalls, seconds| {
            format!(
                "# TYPE latch_store_commits_total counter\nlatch_store_commits_total {commits}\n\
                 latch_store_writes_total {writes}\n\
                 latch_store_writer_checkpoints_total {stalls}\n\
                 latch_store_writer_checkpoint_seconds_total {seconds}\n\
                 latch_store_commit_duration_seconds_count {commits}\n"
            )
        };
        let before = Commits::parse(&text(10, 12, 1, 0.25));
        assert_eq!(before.commits, 10.0);
        assert_eq!(before.writer_checkpoint_seconds, 0.25);
        let after = Commits::parse(&text(110, 3212, 4, 1.5));
        assert_eq!(
            after.since(&before).as_deref(),
            Some("100 commits of 32.0 writes on average; the writer's own checkpoints: 3, 1.25 s")
        );
        let quiet = Commits::parse(&text(110, 3212, 4, 1.5));
        assert_eq!(
            quiet.since(&after),
            None,
            "nothing committed, nothing to say"
        );
        assert_eq!(
            Commits::parse("").commits,
            0.0,
            "missing counters read as zero"
        );
        let one = Commits::parse(&text(111, 3262, 4, 1.5));
        assert_eq!(
            one.since(&after).as_deref(),
            Some("1 commit of 50.0 writes on average")
        );
    }
}
