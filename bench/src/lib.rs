//! Shared pieces of the authgate load-benchmark harness: the page every
//! variant serves, a tiny argument parser, and `/proc` readers.
//!
//! The binaries:
//!
//! - `bench-server`: one variant of the same page (bare axum, authgate,
//!   authgate as a `Router::layer`, axum-login + tower-sessions), with N
//!   signed-in users prepared in-process before it says `ready`.
//! - `load-client`: a light, sequential keep-alive HTTP/1.1 client, for
//!   callgrind runs (deterministic, unlike wrk).
//! - `upstream-traffic`: upstream lookup counts under concurrency and the
//!   spread of an expiry herd.
//! - `bench-report`: turns the TSV files `scripts/bench.sh` writes into
//!   `bench/results/latest.md`.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The display name of user `i` (every variant uses the same names, so the
/// pages have the same length).
pub fn user_name(i: usize) -> String {
    format!("User {i:06}")
}

/// The e-mail of user `i`.
pub fn user_email(i: usize) -> String {
    format!("user{i:06}@bench.test")
}

/// The password every benchmark user signs up with.
pub const PASSWORD: &str = "bench-password-1";

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dashboard - Example App</title>
<link rel="stylesheet" href="/static/app.css">
<link rel="icon" href="/static/favicon.ico">
</head>
<body>
<header class="site-header">
  <a class="brand" href="/">Example App</a>
  <nav>
    <ul>
      <li><a href="/">Home</a></li>
      <li><a href="/projects">Projects</a></li>
      <li><a href="/reports">Reports</a></li>
      <li><a href="/settings">Settings</a></li>
    </ul>
  </nav>
  <div class="account">Signed in as <strong class="user-name">"#;

const TAIL: &str = r#"</strong>
    <form method="post" action="/auth/signout"><button type="submit">Sign out</button></form>
  </div>
</header>
<main>
  <h1>Welcome back</h1>
  <p>Here is what happened in your projects since your last visit. Three
  reports finished overnight and two teammates left comments on the
  quarterly plan.</p>
  <section class="cards">
    <article class="card">
      <h2>Quarterly plan</h2>
      <p>Two new comments, one change request. Last edited yesterday at
      17:42 by a teammate.</p>
      <a href="/projects/quarterly-plan">Open project</a>
    </article>
    <article class="card">
      <h2>Usage report</h2>
      <p>Finished at 03:10. Requests are up 4 % week over week; error rate
      unchanged at 0.02 %.</p>
      <a href="/reports/usage">View report</a>
    </article>
    <article class="card">
      <h2>Billing</h2>
      <p>Your next invoice is due on the first of the month. No action is
      needed.</p>
      <a href="/settings/billing">Billing settings</a>
    </article>
  </section>
  <section class="activity">
    <h2>Recent activity</h2>
    <ol>
      <li>Report "Weekly usage" finished</li>
      <li>Comment on "Quarterly plan": looks good to me</li>
      <li>Project "Onboarding" archived</li>
      <li>New member joined the "Design" team</li>
    </ol>
  </section>
</main>
<footer class="site-footer">
  <p>&copy; Example App. <a href="/privacy">Privacy</a> &middot;
  <a href="/terms">Terms</a> &middot; <a href="/help">Help</a></p>
</footer>
</body>
</html>
"#;

/// The page every variant serves: about 2 KB of HTML with the user's name.
pub fn render_page(name: &str) -> String {
    let mut out = String::with_capacity(HEAD.len() + TAIL.len() + name.len() * 2);
    out.push_str(HEAD);
    for c in name.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out.push_str(TAIL);
    out
}

/// `--name value` and `--flag` arguments.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`; `flags` are the options without a value.
    pub fn parse(flags: &[&str]) -> Result<Self, String> {
        let mut args = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if let Some((name, value)) = name.split_once('=') {
                args.values.insert(name.to_owned(), value.to_owned());
            } else if flags.contains(&name) {
                args.flags.push(name.to_owned());
            } else {
                let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                args.values.insert(name.to_owned(), value);
            }
        }
        Ok(args)
    }

    /// A string option.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A parsed option with a default.
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .replace('_', "")
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}")),
        }
    }

    /// Whether a flag was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

/// This process's resident set size in KiB (`VmRSS`), 0 if unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Median of a non-empty slice (sorted copy; mean of the middle two).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if !v.len().is_multiple_of(2) {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Formats an integer with thousands separators (`12,345`).
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A signed integer with an explicit sign (`+1,234`, `-56`).
pub fn signed(n: i64) -> String {
    let mut s = String::new();
    if n >= 0 {
        s.push('+');
    }
    let _ = write!(s, "{}", thousands(n));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_about_two_kilobytes_and_escapes() {
        let page = render_page(&user_name(42));
        assert!((1900..2300).contains(&page.len()), "{}", page.len());
        assert!(page.contains("User 000042"));
        assert!(render_page("<a&b>").contains("&lt;a&amp;b&gt;"));
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-999), "-999");
        assert_eq!(signed(17000), "+17,000");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
