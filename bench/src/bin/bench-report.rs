//! Turns the TSV files `scripts/bench.sh` writes into a Markdown report.
//!
//! ```text
//! bench-report --dir RUN_DIR > bench/results/latest.md
//! ```
//!
//! Reads from RUN_DIR: `meta.tsv` (key, value), `rounds.tsv` (one line per
//! variant and round), `rss.tsv`, `callgrind.tsv` and `traffic.md` (each
//! optional). Ratios are computed within each round, then pooled.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use authgate_bench::{Args, median, signed, thousands};

type BoxError = Box<dyn std::error::Error>;

const VARIANTS: [&str; 4] = ["bare", "authgate", "authgate-route-layer", "axum-login"];
/// Callgrind also measures bare axum with the two headers SECURITY.md N7
/// requires on user pages, to show what they cost on their own.
const CALLGRIND_VARIANTS: [&str; 5] = [
    "bare",
    "bare-private",
    "authgate",
    "authgate-route-layer",
    "axum-login",
];

/// Rows of a TSV file with a header line, as name → value maps.
fn read_tsv(path: &std::path::Path) -> Vec<HashMap<String, String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split('\t').collect();
    lines
        .map(|line| {
            names
                .iter()
                .zip(line.split('\t'))
                .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn num(row: &HashMap<String, String>, name: &str) -> Option<f64> {
    row.get(name)?.parse().ok().filter(|v: &f64| v.is_finite())
}

#[derive(Default)]
struct Round {
    rps: f64,
    /// Requests per second of server CPU time (robust to the server being
    /// descheduled by other load on its CPU).
    per_cpu: f64,
    /// Fraction of the run the server was on a CPU.
    cpu_share: f64,
    /// Fraction of the run the server was runnable but waiting for its CPU.
    wait_share: f64,
    p50: f64,
    p99: f64,
    rss_after: f64,
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        "–".to_owned()
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn signed_ms(us: f64) -> String {
    if us.is_nan() {
        "–".to_owned()
    } else {
        format!("{:+.2} ms", us / 1000.0)
    }
}

fn mib(kib: f64) -> String {
    if kib.is_nan() {
        "–".to_owned()
    } else {
        format!("{:.1} MiB", kib / 1024.0)
    }
}

/// "0.93 (0.88–0.99)".
fn ratio_cell(ratios: &[f64]) -> String {
    if ratios.is_empty() {
        return "–".to_owned();
    }
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({:.2}–{:.2})", median(ratios), min, max)
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse(&[])?;
    let dir = std::path::PathBuf::from(args.get("dir").ok_or("--dir is required")?);
    let meta: BTreeMap<String, String> = std::fs::read_to_string(dir.join("meta.tsv"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let m = |k: &str| meta.get(k).map_or("?", String::as_str);

    // rounds[variant][round]
    let mut rounds: HashMap<String, BTreeMap<u32, Round>> = HashMap::new();
    let mut orders: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for row in read_tsv(&dir.join("rounds.tsv")) {
        let (Some(variant), Some(round)) = (row.get("variant"), num(&row, "round")) else {
            continue;
        };
        let round = round as u32;
        orders.entry(round).or_default().push(variant.clone());
        // Every request wrk completed (warm-up included) must have been
        // served the signed-in page.
        let requests = num(&row, "all_requests")
            .or_else(|| num(&row, "requests"))
            .unwrap_or(0.0);
        let pages = num(&row, "pages").unwrap_or(0.0);
        let errors = num(&row, "errors").unwrap_or(0.0);
        if errors > 0.0 || pages + 0.5 < requests {
            problems.push(format!(
                "round {round} {variant}: {requests} requests, {pages} signed-in pages served, {errors} socket errors/non-2xx"
            ));
        }
        rounds.entry(variant.clone()).or_default().insert(
            round,
            Round {
                rps: num(&row, "rps").unwrap_or(f64::NAN),
                per_cpu: match (num(&row, "requests"), num(&row, "server_cpu_ns")) {
                    (Some(r), Some(ns)) if ns > 0.0 => r / (ns / 1e9),
                    _ => f64::NAN,
                },
                cpu_share: match (num(&row, "server_cpu_ns"), num(&row, "duration_us")) {
                    (Some(ns), Some(us)) if us > 0.0 => ns / (us * 1000.0),
                    _ => f64::NAN,
                },
                wait_share: match (num(&row, "server_wait_ns"), num(&row, "duration_us")) {
                    (Some(ns), Some(us)) if us > 0.0 => ns / (us * 1000.0),
                    _ => f64::NAN,
                },
                p50: num(&row, "p50_us").unwrap_or(f64::NAN),
                p99: num(&row, "p99_us").unwrap_or(f64::NAN),
                rss_after: num(&row, "rss_after_kib").unwrap_or(f64::NAN),
            },
        );
    }
    let empty = BTreeMap::new();
    let of = |v: &str| rounds.get(v).unwrap_or(&empty);
    let per_round = |v: &str, base: &str, f: &dyn Fn(&Round, &Round) -> f64| -> Vec<f64> {
        of(v)
            .iter()
            .filter_map(|(r, x)| of(base).get(r).map(|b| f(x, b)))
            .filter(|x| x.is_finite())
            .collect()
    };
    let column = |v: &str, f: &dyn Fn(&Round) -> f64| -> Vec<f64> {
        of(v).values().map(f).filter(|x| x.is_finite()).collect()
    };

    // Callgrind: instructions per request from two runs.
    let mut ir: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for row in read_tsv(&dir.join("callgrind.tsv")) {
        if let (Some(v), Some(k), Some(total)) =
            (row.get("variant"), num(&row, "requests"), num(&row, "ir"))
        {
            ir.entry(v.clone()).or_default().push((k, total));
        }
    }
    let per_request = |v: &str| -> Option<f64> {
        let runs = ir.get(v)?;
        let lo = runs.iter().min_by(|a, b| a.0.total_cmp(&b.0))?;
        let hi = runs.iter().max_by(|a, b| a.0.total_cmp(&b.0))?;
        (hi.0 > lo.0).then(|| (hi.1 - lo.1) / (hi.0 - lo.0))
    };
    let bare_ir = per_request("bare");
    let private_ir = per_request("bare-private");

    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# authgate load benchmark\n")?;
    writeln!(
        w,
        "Generated by `scripts/bench.sh{}` on {} ({}; {} CPUs; {}). {} rounds × {} variants, interleaved in a rotating order; each run `wrk -t1 -c{} -d{}` with the cookie rotating over {} signed-in users, server {}, wrk {}. Ratios are computed within each round, then pooled (median, min–max).\n",
        m("args"),
        m("date"),
        m("cpu"),
        m("nproc"),
        m("kernel"),
        m("rounds"),
        orders.values().next().map_or(0, Vec::len),
        m("connections"),
        m("duration"),
        m("users"),
        m("server_pin"),
        m("client_pin"),
    )?;
    if m("quick") == "1" {
        writeln!(
            w,
            "**Quick run (smoke test): too few rounds to tell a 5 % difference; use the default run for figures.**\n"
        )?;
    }

    writeln!(
        w,
        "Setup: every variant serves the same {}-byte page on `GET /`. authgate: `AuthLayer::layer(app)` (and `Router::layer` for authgate-route-layer), dev upstream in its own process, cache warmed before the run (fresh TTL raised to 1 h so nothing expires mid-run, cache bound raised for 100,000 sessions); axum-login 0.18 + tower-sessions 0.14 `MemoryStore`, attached with `Router::layer` as its docs show. The bare variant's requests carry a cookie of the same size.\n",
        authgate_bench::render_page(&authgate_bench::user_name(0)).len()
    )?;
    writeln!(w, "## Summary\n")?;
    writeln!(
        w,
        "| variant | req/s (median) | ratio vs bare | ratio vs axum-login | req per server CPU-s | ratio vs bare per CPU-s | server CPU share | p50 | p99 | p99 − bare p99 | RSS after run | instructions/request | Δ vs bare |"
    )?;
    writeln!(
        w,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let or_dash =
        |x: f64, f: &dyn Fn(f64) -> String| if x.is_nan() { "–".to_owned() } else { f(x) };
    for v in VARIANTS {
        if !rounds.contains_key(v) && !ir.contains_key(v) {
            continue;
        }
        let base = |name: &str, cell: String| if v == name { "1".to_owned() } else { cell };
        let vs_bare = per_round(v, "bare", &|x, b| x.rps / b.rps);
        let vs_login = per_round(v, "axum-login", &|x, b| x.rps / b.rps);
        let cpu_vs_bare = per_round(v, "bare", &|x, b| x.per_cpu / b.per_cpu);
        let p99_delta = per_round(v, "bare", &|x, b| x.p99 - b.p99);
        let instr = per_request(v);
        let cells = [
            or_dash(median(&column(v, &|r| r.rps)), &|x| {
                thousands(x.round() as i64)
            }),
            base("bare", ratio_cell(&vs_bare)),
            base("axum-login", ratio_cell(&vs_login)),
            or_dash(median(&column(v, &|r| r.per_cpu)), &|x| {
                thousands(x.round() as i64)
            }),
            base("bare", ratio_cell(&cpu_vs_bare)),
            or_dash(median(&column(v, &|r| r.cpu_share)), &|x| format!("{x:.2}")),
            ms(median(&column(v, &|r| r.p50))),
            ms(median(&column(v, &|r| r.p99))),
            if v == "bare" {
                "0".to_owned()
            } else {
                signed_ms(median(&p99_delta))
            },
            mib(median(&column(v, &|r| r.rss_after))),
            instr.map_or("–".to_owned(), |i| thousands(i.round() as i64)),
            match (instr, bare_ir) {
                (Some(i), Some(b)) if v != "bare" => signed((i - b).round() as i64),
                (Some(_), Some(_)) => "0".to_owned(),
                _ => "–".to_owned(),
            },
        ];
        writeln!(w, "| {v} | {} |", cells.join(" | "))?;
    }
    writeln!(
        w,
        "\nThe gate is the instruction count (callgrind, deterministic to about 1 %). req/s on this shared 2-core machine swings widely between runs of the same server (other load takes CPU 0 at times), so only ratios pooled over ~15 rounds mean anything. \"req per server CPU-s\" divides the requests by the CPU time the server actually got during the run (`/proc/PID/task/*/schedstat`), which removes much of that noise; \"server CPU share\" is that CPU time over the run's length (≈ 1.00: the server was saturated and had CPU 0 to itself, so wrk was not the bottleneck)."
    )?;
    if !problems.is_empty() {
        writeln!(w, "\n**Problems:**\n")?;
        for p in &problems {
            writeln!(w, "- {p}")?;
        }
    }

    if !orders.is_empty() {
        writeln!(
            w,
            "\n## Per round\n\nEach cell: req/s (ratio vs bare in the same round; the same ratio per server CPU-second) [share of the run the server was on its CPU / runnable but kept off it by other load].\n"
        )?;
        let present: Vec<&str> = VARIANTS
            .into_iter()
            .filter(|v| rounds.contains_key(*v))
            .collect();
        write!(w, "| round | order |")?;
        for v in &present {
            write!(w, " {v} |")?;
        }
        writeln!(w)?;
        writeln!(w, "|---:|---|{}", "---:|".repeat(present.len()))?;
        for (round, order) in &orders {
            write!(w, "| {round} | {} |", order.join(", "))?;
            let bare = of("bare").get(round);
            for v in &present {
                let Some(r) = of(v).get(round) else {
                    write!(w, " – |")?;
                    continue;
                };
                write!(w, " {}", thousands(r.rps.round() as i64))?;
                if let Some(b) = bare.filter(|_| *v != "bare") {
                    write!(w, " ({:.2}; {:.2})", r.rps / b.rps, r.per_cpu / b.per_cpu)?;
                }
                write!(w, " [{:.2}/{:.2}] |", r.cpu_share, r.wait_share)?;
            }
            writeln!(w)?;
        }
    }

    let rss = read_tsv(&dir.join("rss.tsv"));
    if !rss.is_empty() {
        writeln!(w, "\n## Memory: server RSS by signed-in sessions\n")?;
        writeln!(
            w,
            "RSS from `/proc/PID/status` once the server is ready (sessions prepared, nothing served yet). authgate's dev upstream runs in its own process (as the hosted service would), so this is the app's memory; N sessions are spread over min(N, 1,000) users in both variants. \"Growth while preparing\" is the server's own RSS from when the sessions exist elsewhere (authgate: created upstream; axum-login: user map built) to ready (authgate: cache warmed; axum-login: every session logged in to `MemoryStore`).\n"
        )?;
        writeln!(
            w,
            "| variant | sessions | RSS ready | growth while preparing | per session (growth) |"
        )?;
        writeln!(w, "|---|---:|---:|---:|---:|")?;
        let mut by_variant: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for row in &rss {
            let (Some(v), Some(n), Some(ready)) = (
                row.get("variant"),
                num(row, "users"),
                num(row, "rss_ready_kib"),
            ) else {
                continue;
            };
            let growth = num(row, "rss_server_ready_kib").unwrap_or(f64::NAN)
                - num(row, "rss_users_kib").unwrap_or(f64::NAN);
            by_variant.entry(v.clone()).or_default().push((n, ready));
            writeln!(
                w,
                "| {v} | {} | {} | {} | {} |",
                thousands(n as i64),
                mib(ready),
                mib(growth),
                if growth.is_nan() || n == 0.0 {
                    "–".to_owned()
                } else {
                    format!("{} B", thousands((growth * 1024.0 / n).round() as i64))
                },
            )?;
        }
        writeln!(w)?;
        for (v, points) in &by_variant {
            let lo = points.iter().min_by(|a, b| a.0.total_cmp(&b.0));
            let hi = points.iter().max_by(|a, b| a.0.total_cmp(&b.0));
            if let (Some(lo), Some(hi)) = (lo, hi)
                && hi.0 > lo.0
            {
                writeln!(
                    w,
                    "- {v}: (RSS at {} − RSS at {}) / {} = **{} bytes per session**",
                    thousands(hi.0 as i64),
                    thousands(lo.0 as i64),
                    thousands((hi.0 - lo.0) as i64),
                    thousands(((hi.1 - lo.1) * 1024.0 / (hi.0 - lo.0)).round() as i64),
                )?;
            }
        }
    }

    if !ir.is_empty() {
        writeln!(w, "\n## Instructions per request (callgrind)\n")?;
        writeln!(
            w,
            "Server under `valgrind --tool=callgrind`, instrumentation {}; one sequential keep-alive connection from `load-client`, K₁ and K₂ requests in two runs: instructions/request = (Ir(K₂) − Ir(K₁)) / (K₂ − K₁), which cancels start-up, warm-up and shutdown.\n",
            m("callgrind_mode")
        )?;
        writeln!(
            w,
            "`bare-private` is bare axum whose handler also sets the two headers SECURITY.md N7 requires on every response whose request resolved a user (`Cache-Control: private, no-store`, `Vary: Cookie`); the last column is each variant's cost beyond them.\n"
        )?;
        writeln!(
            w,
            "| variant | K₁ | Ir(K₁) | K₂ | Ir(K₂) | instructions/request | Δ vs bare | Δ vs bare-private |"
        )?;
        writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for v in CALLGRIND_VARIANTS {
            let Some(runs) = ir.get(v) else { continue };
            let mut runs = runs.clone();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (Some(lo), Some(hi)) = (runs.first(), runs.last()) else {
                continue;
            };
            let instr = per_request(v);
            writeln!(
                w,
                "| {v} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(lo.0 as i64),
                thousands(lo.1 as i64),
                thousands(hi.0 as i64),
                thousands(hi.1 as i64),
                instr.map_or("–".to_owned(), |i| thousands(i.round() as i64)),
                match (instr, bare_ir) {
                    (Some(i), Some(b)) if v != "bare" => signed((i - b).round() as i64),
                    _ => "–".to_owned(),
                },
                match (instr, private_ir) {
                    (Some(i), Some(b)) if !v.starts_with("bare") => signed((i - b).round() as i64),
                    _ => "–".to_owned(),
                }
            )?;
        }
    }

    if let Ok(traffic) = std::fs::read_to_string(dir.join("traffic.md")) {
        writeln!(w, "\n## Upstream traffic (`upstream-traffic`)\n")?;
        writeln!(w, "{}", traffic.trim_end())?;
    }

    print!("{out}");
    Ok(())
}
