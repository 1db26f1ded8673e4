//! How much traffic reaches the upstream under concurrency (issue #5):
//!
//! 1. `--concurrent` (1,000) simultaneous first requests carrying one token
//!    → exactly one upstream lookup (single flight);
//! 2. `--tokens` (10,000) distinct tokens × `--repeat` (10) requests each,
//!    shuffled, `--in-flight` (512) at a time → one lookup per token;
//! 3. an expiry herd: `--herd` (1,000) tokens warmed together, then every
//!    token requested every `--step-ms` (100 ms) of real time until past
//!    the TTL (`--ttl-secs`, 10 s; the fresh TTL is jittered down by up to
//!    10 %) → refreshes spread over the last 10 % of the TTL instead of
//!    landing at once.
//!
//! 1 and 2 run on a multi-thread runtime against an in-process
//! `DevUpstream` over real HTTP (loopback); 3 uses the `TestKit`'s
//! in-memory upstream on the real clock (a paused clock would need tokio's
//! `test-util`, which would also change the server binaries' build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::dev::DevUpstream;
use authgate::test::{TEST_ORIGIN, TestKit};
use authgate::{AuthConfig, AuthLayer, CurrentUser, altogic};
use authgate_bench::{Args, PASSWORD, thousands, user_email, user_name};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::routing::get;
use futures_util::StreamExt as _;
use tower::ServiceExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn page(user: CurrentUser) -> String {
    format!("Hello, {}", user.display_name())
}

fn request(cookie: &str) -> Request {
    Request::get("/")
        .header(header::ACCEPT, "text/html")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap_or_else(|_| unreachable!("a valid request"))
}

/// A fresh layer (empty cache) over the dev upstream.
fn layer(dev: &DevUpstream) -> Result<AuthLayer, BoxError> {
    let config = AuthConfig::new("http://127.0.0.1:9")?.with_key([0x42u8; 64])?;
    Ok(AuthLayer::new(
        config,
        altogic::Client::new(dev.url(), dev.client_key())?,
    ))
}

async fn sign_up(dev: &DevUpstream, from: usize, n: usize) -> Result<Vec<String>, BoxError> {
    let client = altogic::Client::new(dev.url(), dev.client_key())?;
    let mut results = futures_util::stream::iter(from..from + n)
        .map(|i| {
            let client = client.clone();
            async move {
                let name = serde_json::Value::String(user_name(i));
                let response = client
                    .sign_up_with_email(&user_email(i), PASSWORD, Some(name))
                    .await?;
                let session = response.session.ok_or("sign-up returned no session")?;
                Ok::<_, BoxError>(format!("authgate={}", session.token.expose()))
            }
        })
        .buffer_unordered(16);
    let mut cookies = Vec::with_capacity(n);
    while let Some(cookie) = results.next().await {
        cookies.push(cookie?);
    }
    Ok(cookies)
}

#[derive(Default, Debug)]
struct Statuses {
    ok: u64,
    other: u64,
}

impl Statuses {
    fn add(&mut self, status: StatusCode) {
        if status == StatusCode::OK {
            self.ok += 1;
        } else {
            self.other += 1;
        }
    }

    fn show(&self) -> String {
        if self.other == 0 {
            format!("all {} 200", thousands(self.ok as i64))
        } else {
            format!(
                "{} 200, {} other",
                thousands(self.ok as i64),
                thousands(self.other as i64)
            )
        }
    }
}

struct Row {
    scenario: String,
    requests: u64,
    expected: u64,
    lookups: u64,
    rest_calls: u64,
    statuses: Statuses,
    seconds: f64,
}

async fn one_token_concurrently(dev: &DevUpstream, concurrent: usize) -> Result<Row, BoxError> {
    let cookie = sign_up(dev, 0, 1).await?.remove(0);
    let auth = layer(dev)?;
    let app = auth.layer(Router::new().route("/", get(page)));
    let calls_before = dev.upstream_calls();
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrent));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrent {
        let app = app.clone();
        let request = request(&cookie);
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            app.oneshot(request).await.map(|r| r.status())
        });
    }
    let mut statuses = Statuses::default();
    while let Some(status) = tasks.join_next().await {
        statuses.add(status??);
    }
    Ok(Row {
        scenario: format!(
            "{} concurrent first requests, one token",
            thousands(concurrent as i64)
        ),
        requests: concurrent as u64,
        expected: 1,
        lookups: auth.resolver().upstream_lookups(),
        rest_calls: dev.upstream_calls() - calls_before,
        statuses,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn many_tokens(
    dev: &DevUpstream,
    tokens: usize,
    repeat: usize,
    in_flight: usize,
) -> Result<Row, BoxError> {
    let cookies = Arc::new(sign_up(dev, 1, tokens).await?);
    let auth = layer(dev)?;
    let app = auth.layer(Router::new().route("/", get(page)));
    // Every (token, repetition) pair once, in a fixed pseudo-random order.
    let mut order: Vec<usize> = (0..tokens * repeat).map(|i| i % tokens).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let calls_before = dev.upstream_calls();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in order {
        let permit = permits.clone().acquire_owned().await?;
        let app = app.clone();
        let request = request(&cookies[index]);
        tasks.spawn(async move {
            let status = app.oneshot(request).await.map(|r| r.status());
            drop(permit);
            status
        });
    }
    let mut statuses = Statuses::default();
    while let Some(status) = tasks.join_next().await {
        statuses.add(status??);
    }
    Ok(Row {
        scenario: format!(
            "{} distinct tokens × {repeat} requests, {in_flight} in flight",
            thousands(tokens as i64)
        ),
        requests: (tokens * repeat) as u64,
        expected: tokens as u64,
        lookups: auth.resolver().upstream_lookups(),
        rest_calls: dev.upstream_calls() - calls_before,
        statuses,
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct Herd {
    buckets: Vec<(f64, u64)>,
    warm_lookups: u64,
    refreshes: u64,
    herd: usize,
    sweeps: u64,
    statuses: Statuses,
    first: f64,
    last: f64,
    largest_bucket: u64,
}

async fn expiry_herd(herd: usize, ttl: Duration, step: Duration) -> Result<Herd, BoxError> {
    let config = AuthConfig::new(TEST_ORIGIN)?
        .with_key([0x5au8; 64])?
        .with_cache_ttl(ttl);
    let kit = TestKit::with_config(config);
    let app = kit.layer().layer(Router::new().route("/", get(page)));
    let requests: Vec<_> = (0..herd)
        .map(|i| kit.signed_in(&kit.user(&user_email(i))))
        .collect();
    let mut statuses = Statuses::default();
    // Warm every token at (nearly) the same instant.
    let warmed = Instant::now();
    for r in &requests {
        statuses.add(app.clone().oneshot(r.get("/")).await?.status());
    }
    let warm_lookups = kit.upstream_lookups();
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut sweeps = 0;
    let end = ttl.mul_f64(1.15);
    let mut next = warmed + step;
    while next.duration_since(warmed) <= end {
        tokio::time::sleep_until(next.into()).await;
        let before = kit.upstream_lookups();
        let at = warmed.elapsed().as_secs_f64();
        for r in &requests {
            statuses.add(app.clone().oneshot(r.get("/")).await?.status());
        }
        sweeps += 1;
        let refreshed = kit.upstream_lookups() - before;
        if refreshed > 0 {
            buckets.push((at, refreshed));
        }
        next += step;
    }
    let refreshes = kit.upstream_lookups() - warm_lookups;
    let first = buckets.first().map_or(f64::NAN, |b| b.0);
    let last = buckets.last().map_or(f64::NAN, |b| b.0);
    let largest_bucket = buckets.iter().map(|b| b.1).max().unwrap_or(0);
    Ok(Herd {
        buckets,
        warm_lookups,
        refreshes,
        herd,
        sweeps,
        statuses,
        first,
        last,
        largest_bucket,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse(&[])?;
    let concurrent: usize = args.num("concurrent", 1000)?;
    let tokens: usize = args.num("tokens", 10_000)?;
    let repeat: usize = args.num("repeat", 10)?;
    let in_flight: usize = args.num("in-flight", 512)?;
    let herd: usize = args.num("herd", 1000)?;
    let ttl = Duration::from_secs_f64(args.num("ttl-secs", 10.0)?);
    let step = Duration::from_millis(args.num("step-ms", 100)?);

    let dev = DevUpstream::spawn().await?;
    let rows = vec![
        one_token_concurrently(&dev, concurrent).await?,
        many_tokens(&dev, tokens, repeat, in_flight).await?,
    ];
    dev.shutdown().await;

    println!("### Upstream traffic under concurrency\n");
    println!(
        "In-process `DevUpstream` over loopback HTTP, a fresh cache per scenario, multi-thread runtime.\n"
    );
    println!(
        "| scenario | requests | upstream lookups (resolver) | REST calls (dev upstream) | expected | responses | time |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|");
    let mut ok = true;
    for row in &rows {
        let pass = row.lookups == row.expected && row.rest_calls == row.expected;
        ok &= pass && row.statuses.other == 0;
        println!(
            "| {} | {} | {} | {} | {}{} | {} | {:.2} s |",
            row.scenario,
            thousands(row.requests as i64),
            thousands(row.lookups as i64),
            thousands(row.rest_calls as i64),
            thousands(row.expected as i64),
            if pass { "" } else { " **(mismatch)**" },
            row.statuses.show(),
            row.seconds
        );
    }

    let h = expiry_herd(herd, ttl, step).await?;
    let ttl_s = ttl.as_secs_f64();
    println!("\n### Expiry herd\n");
    println!(
        "`TestKit` (in-memory upstream), real clock, fresh TTL {ttl_s:.0} s (jittered down by up to 10 %): {} tokens warmed together ({} lookups), then every token requested every {} ms ({} sweeps) until {:.1} s. Refresh lookups per sweep, by time since warm-up:\n",
        thousands(h.herd as i64),
        thousands(h.warm_lookups as i64),
        step.as_millis(),
        h.sweeps,
        ttl_s * 1.15
    );
    println!("| t since warm-up (s) | refresh lookups | |");
    println!("|---:|---:|---|");
    for (at, n) in &h.buckets {
        let bar_len = (*n as usize * 40).div_ceil(h.largest_bucket.max(1) as usize);
        println!("| {at:.1} | {n} | {} |", "#".repeat(bar_len));
    }
    let herd_ok = h.refreshes == h.herd as u64 && h.statuses.other == 0;
    ok &= herd_ok;
    println!(
        "\nRefreshes: {} (expected {}), from {:.1} s to {:.1} s after warm-up (window {:.1}–{:.1} s); largest sweep {} = {:.0} % of the herd (without jitter: 100 % in one sweep). Responses: {}.",
        thousands(h.refreshes as i64),
        thousands(h.herd as i64),
        h.first,
        h.last,
        ttl_s * 0.9,
        ttl_s,
        h.largest_bucket,
        100.0 * h.largest_bucket as f64 / h.herd.max(1) as f64,
        h.statuses.show()
    );
    println!(
        "\nupstream-traffic: {}",
        if ok {
            "all counts as expected"
        } else {
            "MISMATCH"
        }
    );
    if ok {
        Ok(())
    } else {
        Err("upstream traffic counts differ from the expected ones".into())
    }
}
