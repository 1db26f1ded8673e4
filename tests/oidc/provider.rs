//! The real OpenID Provider of the tests (`provider.mjs`: panva's
//! `oidc-provider` on Node 22), started on 127.0.0.1 with a port it picks.
//! Shared by `tests/oidc.rs` and the Chromium walk-through
//! (`tests/browser.rs`), which include it with `#[path]`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// A running `oidc-provider`; killed when dropped.
pub(crate) struct OpenIdProvider {
    /// Its issuer, `http://127.0.0.1:<port>`.
    pub(crate) issuer: String,
    /// The Node process.
    pub(crate) child: Child,
}

/// Where the fixture lives, and its Node 22.
fn fixture() -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    let node = dir.join("node_modules/.bin/node");
    (dir, node)
}

impl OpenIdProvider {
    /// Starts the provider with these clients (RFC 7591 metadata), or
    /// `None` (with the reason printed) when it is not installed and CI
    /// does not require it.
    pub(crate) async fn start(clients: &Value) -> Option<Self> {
        Self::start_with(clients, &[]).await
    }

    /// [`start`](Self::start) with more environment (`OIDC_ACCESS_TOKEN_TTL`).
    pub(crate) async fn start_with(clients: &Value, env: &[(&str, &str)]) -> Option<Self> {
        let (dir, node) = fixture();
        let installed = node.is_file() && dir.join("node_modules/oidc-provider").is_dir();
        if !installed {
            let reason = "oidc-provider is not installed (npm ci --prefix tests/oidc)";
            if std::env::var("AUTHGATE_REQUIRE_OIDC").as_deref() == Ok("1") {
                panic!("{reason}; AUTHGATE_REQUIRE_OIDC=1");
            }
            eprintln!("skipped: {reason}");
            return None;
        }
        let mut child = Command::new(&node)
            .arg(dir.join("provider.mjs"))
            .current_dir(&dir)
            .env("OIDC_CLIENTS", clients.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // AUTHGATE_OIDC_LOG=1 shows the provider's own log lines
            // (warnings, back-channel deliveries).
            .stderr(if std::env::var_os("AUTHGATE_OIDC_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the provider did not start within 30 s")
            .unwrap()
            .expect("the provider printed nothing");
        // Keep reading, so the provider never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready: Value = serde_json::from_str(&line).unwrap();
        let issuer = ready["issuer"].as_str().unwrap().to_owned();
        assert!(issuer.starts_with("http://127.0.0.1:"), "{issuer}");
        Some(Self { issuer, child })
    }
}
