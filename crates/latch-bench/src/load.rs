//! The load generator: a fixed number of keep-alive HTTP/1.1 connections, each sending one
//! request at a time for a fixed duration, recording every latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::preload::{self, CLIENT, INTROSPECTOR, SECRET};

/// What the load does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The bare handler: the machine's ceiling.
    Ceiling,
    /// `client_credentials` token issuance.
    Issue,
    /// Introspection of random preloaded (active) access tokens.
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

    /// How many distinct items this workload can consume (`None`: unlimited).
    fn supply(self, tokens: u64) -> Option<u64> {
        match self {
            Workload::Revoke | Workload::Refresh => Some(tokens),
            Workload::Logout => Some(tokens / preload::GRANTS_PER_SUBJECT),
            _ => None,
        }
    }
}

/// What one workload measured.
pub struct Outcome {
    pub workload: Workload,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    /// True when the distinct items ran out before the duration did.
    pub exhausted: bool,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Shared settings of a run.
pub struct Load {
    pub concurrency: usize,
    pub duration: Duration,
    pub tokens: u64,
    pub admin_token: String,
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// Builds the `k`th request of a workload; `None` when its supply is used up.
fn request(
    workload: Workload,
    load: &Load,
    host: &str,
    k: u64,
    random: u64,
) -> Option<Request<Full<Bytes>>> {
    if workload.supply(load.tokens).is_some_and(|s| k >= s) {
        return None;
    }
    let form = |path: &str, auth: String, body: String| {
        Request::post(path)
            .header("host", host)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", auth)
            .body(Full::new(Bytes::from(body)))
            .ok()
    };
    let client = || basic(CLIENT, SECRET);
    match workload {
        Workload::Ceiling => form(
            "/bare",
            client(),
            format!("token={}", preload::token("at", random)),
        ),
        Workload::Issue => form(
            "/oauth2/token",
            client(),
            "grant_type=client_credentials".into(),
        ),
        Workload::Introspect => form(
            "/oauth2/introspect",
            basic(INTROSPECTOR, "bench-introspector-secret"),
            format!("token={}", preload::token("at", random % load.tokens)),
        ),
        Workload::Revoke => form(
            "/oauth2/revoke",
            client(),
            format!("token={}", preload::token("at", k)),
        ),
        Workload::Refresh => form(
            "/oauth2/token",
            client(),
            format!(
                "grant_type=refresh_token&refresh_token={}",
                preload::token("rt", k)
            ),
        ),
        Workload::Logout => Request::delete(format!(
            "/admin/v1/tenants/default/subjects/{}/grants",
            preload::subject(k * preload::GRANTS_PER_SUBJECT)
        ))
        .header("host", host)
        .header("authorization", format!("Bearer {}", load.admin_token))
        .body(Full::new(Bytes::new()))
        .ok(),
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

/// Runs one workload against `addr` and measures it.
pub async fn run(workload: Workload, addr: SocketAddr, load: Arc<Load>) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    // Connections and warm-up happen before the clock starts.
    let start = Arc::new(tokio::sync::Barrier::new(load.concurrency + 1));
    let mut tasks = Vec::new();
    for c in 0..load.concurrency {
        let (next, load, start) = (next.clone(), load.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let (mut requests, mut errors, mut exhausted) = (0u64, 0u64, false);
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let host = addr.to_string();
            let mut random = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            // Warm-up, not measured: one request on this connection that consumes nothing
            // (client authentication's cache fills, the connection is established).
            let warm = request(Workload::Issue, &load, &host, 0, random)
                .filter(|_| workload != Workload::Ceiling);
            if let Some(req) = warm {
                let _ = sender.send_request(req).await?.into_body().collect().await;
            }
            start.wait().await;
            let deadline = Instant::now() + load.duration;
            while Instant::now() < deadline {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = request(workload, &load, &host, k, random) else {
                    exhausted = true;
                    break;
                };
                let t0 = Instant::now();
                let ok = match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        body.is_ok_and(|b| succeeded(workload, status, &b))
                    }
                    Err(_) => false,
                };
                hist.saturating_record(t0.elapsed().as_micros() as u64);
                requests += 1;
                if !ok {
                    errors += 1;
                }
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
            }
            anyhow::Ok((hist, requests, errors, exhausted))
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors, mut exhausted) = (0, 0, false);
    for t in tasks {
        let (h, r, e, x) = t.await??;
        total.add(h)?;
        requests += r;
        errors += e;
        exhausted |= x;
    }
    Ok(Outcome {
        workload,
        requests,
        errors,
        elapsed: started.elapsed(),
        latency_us: total,
        exhausted,
    })
}
