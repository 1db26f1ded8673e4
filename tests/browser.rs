//! The example site in a real browser: headless Chromium driven over
//! WebDriver by chromedriver clicks through every flow, with the site and
//! its dev upstream served in-process on 127.0.0.1:0.
//!
//! Needs `/usr/bin/chromium` and `chromedriver` (Debian: `apt-get install
//! chromium chromium-driver`); without them the test says so and passes,
//! unless `AUTHGATE_REQUIRE_BROWSER=1` (CI) makes that a failure. Each step
//! saves a screenshot in a temporary directory, kept and printed on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// `Settings` is only used by `main`.
#[allow(dead_code)]
#[path = "../examples/ssr_site/site/mod.rs"]
mod site;
#[path = "browser/webdriver.rs"]
mod webdriver;

use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authgate::dev::DevUpstream;
use authgate::{SessionToken, altogic};
use axum::extract::Request;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use url::Url;
use webdriver::{WebDriver, chrome_capabilities};

const CHROMIUM: &str = "/usr/bin/chromium";
const KEY: [u8; 64] = [9; 64];
/// How long a page may take to show what a step waits for.
const WAIT: Duration = Duration::from_secs(15);

type StepResult = Result<(), String>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_works_in_headless_chromium() {
    let started = Instant::now();
    let (chromium, chromedriver) = match browser_binaries() {
        Ok(found) => found,
        Err(reason) => {
            if std::env::var("AUTHGATE_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{reason}; install chromium chromium-driver (AUTHGATE_REQUIRE_BROWSER=1)");
            }
            eprintln!("skipped: {reason}; install chromium chromium-driver");
            return;
        }
    };
    let dir = temp_dir();
    let site = serve_site().await;
    let mut driver = ChromeDriver::start(&chromedriver).await;
    let capabilities = chrome_capabilities(&chromium, &dir.join("profile"));
    let browser = match WebDriver::new_session(&driver.url, capabilities).await {
        Ok(browser) => browser,
        Err(err) => {
            driver.stop().await;
            panic!("could not start Chromium through chromedriver: {err}");
        }
    };

    let run = Run {
        browser,
        dir: dir.clone(),
        origin: site.origin.clone(),
        dev: site.dev.clone(),
        altogic: site.altogic.clone(),
        steps: Cell::new(0),
    };
    let outcome = run.all_steps().await;
    let steps = run.steps.get();
    if let Err(err) = run.browser.delete().await {
        eprintln!("could not end the browser session: {err}");
    }
    driver.stop().await;
    match outcome {
        Ok(()) => {
            // AUTHGATE_KEEP_SCREENSHOTS=1 keeps the step screenshots of a
            // passing run (for reviewing the pages).
            if std::env::var_os("AUTHGATE_KEEP_SCREENSHOTS").is_some() {
                eprintln!("browser: screenshots kept in {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            eprintln!(
                "browser: {steps} steps passed in {:.1?} (Chromium via {})",
                started.elapsed(),
                chromedriver.display()
            );
        }
        Err(err) => panic!(
            "browser step failed: {err}\nscreenshots and page sources: {}",
            dir.display()
        ),
    }
}

fn browser_binaries() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(CHROMIUM);
    if !chromium.is_file() {
        return Err(format!("{CHROMIUM} not found"));
    }
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("chromedriver"))
        .find(|path| path.is_file());
    let chromedriver = in_path
        .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")).filter(|p| p.is_file()))
        .ok_or("chromedriver not found")?;
    Ok((chromium, chromedriver))
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("authgate-browser-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct ServedSite {
    origin: String,
    dev: DevUpstream,
    altogic: altogic::Client,
}

/// The example site on 127.0.0.1:0 with its dev upstream, as `main` runs it.
async fn serve_site() -> ServedSite {
    let dev = site::spawn_dev_upstream().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let config = site::auth_config(&origin, Some(&KEY)).unwrap();
    dev.set_redirect_url(&config.callback_url());
    let builder = altogic::Client::builder(dev.url(), dev.client_key());
    let app = site::app(config, builder, site::SiteOptions::for_dev(&dev)).unwrap();
    // The test's own client, for what it does directly upstream.
    let altogic = altogic::Client::new(dev.url(), dev.client_key()).unwrap();
    tokio::spawn(async move {
        let service = axum::ServiceExt::<Request>::into_make_service(app);
        if let Err(err) = axum::serve(listener, service).await {
            eprintln!("site server stopped: {err}");
        }
    });
    ServedSite {
        origin,
        dev,
        altogic,
    }
}

/// chromedriver on a port it picks itself (`--port=0`), local only.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start(path: &Path) -> Self {
        let mut child = Command::new(path)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", path.display()));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.ok()? {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("chromedriver did not say which port it listens on");
        // Keep reading so chromedriver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The click-through, one numbered step at a time.
struct Run {
    browser: WebDriver,
    dir: PathBuf,
    origin: String,
    dev: DevUpstream,
    altogic: altogic::Client,
    steps: Cell<usize>,
}

const EMAIL: &str = "ada@example.test";
const PASSWORD: &str = "first password";
const NEW_PASSWORD: &str = "second password";
const PHONE: &str = "+15557654321";

impl Run {
    async fn all_steps(&self) -> StepResult {
        self.step("sign up by e-mail", async {
            self.open("/signup").await?;
            self.fill("#signup-email", "name", "Ada Lovelace").await?;
            self.fill("#signup-email", "email", EMAIL).await?;
            self.fill("#signup-email", "password", PASSWORD).await?;
            self.submit("#signup-email").await?;
            self.wait_page("/signup", "Check your e-mail").await?;
            self.wait_text(&format!("We sent a confirmation link to {EMAIL}"))
                .await
        })
        .await?;

        self.step("confirm the e-mail from the outbox", async {
            self.click("#open-outbox").await?;
            self.wait_outbox("Confirm your email address").await?;
            self.click(r#"a[href*="/_auth/verify-email"]"#).await?;
            // The link waits for a click (SECURITY.md T-B6.4).
            self.wait_page("/auth/continue", "Finish signing in")
                .await?;
            self.click("#authgate-continue").await?;
            self.wait_page("/account", "Your account").await?;
            self.wait_text("Ada Lovelace").await?;
            self.wait_text(EMAIL).await
        })
        .await?;

        self.step("sign out", async {
            self.sign_out().await?;
            self.open("/account").await?;
            self.wait_page("/signin", "With your e-mail").await
        })
        .await?;

        self.step("sign in with the password", async {
            self.fill("#signin-email", "email", EMAIL).await?;
            self.fill("#signin-email", "password", "wrong password")
                .await?;
            self.submit("#signin-email").await?;
            self.wait_text("The credentials are not valid.").await?;
            self.fill("#signin-email", "password", PASSWORD).await?;
            self.submit("#signin-email").await?;
            // The sign-in page carried return_to=/account.
            self.wait_page("/account", EMAIL).await
        })
        .await?;

        self.step("sign in with a magic link", async {
            self.sign_out().await?;
            self.open("/signin/magic").await?;
            self.fill("#magic-link", "email", EMAIL).await?;
            self.submit("#magic-link").await?;
            self.wait_text("we sent it a sign-in link").await?;
            self.click("#open-outbox").await?;
            self.wait_outbox("Your sign-in link").await?;
            self.click(r#"a[href*="/_auth/magic"]"#).await?;
            self.wait_page("/auth/continue", "Finish signing in")
                .await?;
            self.click("#authgate-continue").await?;
            self.wait_page("/account", EMAIL).await
        })
        .await?;

        self.step("sign in with GitHub through the simulator", async {
            self.sign_out().await?;
            self.open("/signin").await?;
            self.click("#oauth-github").await?;
            self.wait_for("the GitHub simulator", |url, text| {
                url.starts_with(&format!("{}/_auth/github", self.dev.url()))
                    && text.contains("Sign in with Github (dev simulator)")
            })
            .await?;
            self.fill("form", "name", "Octo Cat").await?;
            self.fill("form", "email", "octo@github.example").await?;
            self.click(r#"button[value="continue"]"#).await?;
            self.wait_page("/account", "Octo Cat").await?;
            self.wait_text("You signed in with Github").await
        })
        .await?;

        self.step("sign up by phone with an SMS code", async {
            self.sign_out().await?;
            self.open("/signup/phone").await?;
            self.fill("#signup-phone", "name", "Pat Phone").await?;
            self.fill("#signup-phone", "phone", PHONE).await?;
            self.fill("#signup-phone", "password", PASSWORD).await?;
            self.submit("#signup-phone").await?;
            self.wait_text(&format!("We texted a verification code to {PHONE}."))
                .await?;
            self.click("#outbox-link").await?;
            self.wait_outbox("Your verification code").await?;
            let code = self.text_of(".code").await?;
            let encoded: String = url::form_urlencoded::byte_serialize(PHONE.as_bytes()).collect();
            self.open(&format!("/verify-phone?phone={encoded}")).await?;
            self.fill("#verify-phone", "code", code.trim()).await?;
            self.submit("#verify-phone").await?;
            self.wait_page("/account", PHONE).await?;
            self.wait_text("Pat Phone").await
        })
        .await?;

        self.step(
            "reset the password by e-mail, sign in with the new one",
            async {
                self.sign_out().await?;
                self.open("/forgot-password").await?;
                self.fill("#forgot-email", "email", EMAIL).await?;
                self.submit("#forgot-email").await?;
                self.wait_text("we sent it a link to choose a new password")
                    .await?;
                self.click("#open-outbox").await?;
                self.wait_outbox("Reset your password").await?;
                self.click(r#"a[href*="/_auth/reset"]"#).await?;
                self.wait_page("/reset-password", "Set the new password")
                    .await?;
                self.fill("#reset-password", "password", NEW_PASSWORD)
                    .await?;
                self.submit("#reset-password").await?;
                self.wait_page("/signin", "Your password was changed.")
                    .await?;
                self.fill("#signin-email", "email", EMAIL).await?;
                self.fill("#signin-email", "password", PASSWORD).await?;
                self.submit("#signin-email").await?;
                self.wait_text("The credentials are not valid.").await?;
                self.fill("#signin-email", "password", NEW_PASSWORD).await?;
                self.submit("#signin-email").await?;
                self.wait_page("/account", EMAIL).await
            },
        )
        .await?;

        self.step("sessions: sign out one, then all others", async {
            let mut others = Vec::new();
            for _ in 0..2 {
                let signed_in = self
                    .altogic
                    .sign_in_with_email(EMAIL, NEW_PASSWORD)
                    .await
                    .map_err(|e| format!("a second session: {e}"))?;
                others.push(signed_in.session.ok_or("no session")?.token);
            }
            // The sign-in is among the recent auth events on the account
            // page, which links to the sessions page.
            self.open("/account").await?;
            self.wait_text("Recent auth events").await?;
            self.wait_text("Signed in with e-mail (or phone) and password")
                .await?;
            self.click("#sessions-link").await?;
            self.wait_page("/account/sessions", "Active sessions")
                .await?;
            self.expect_rows(3).await?;
            // The site sent Chromium's own User-Agent upstream when it
            // signed in, so its row names the browser, not the server.
            self.wait_text("Chrome on Linux this browser").await?;
            self.click(".end-session").await?;
            self.wait_page("/account/sessions", "That session was signed out.")
                .await?;
            self.expect_rows(2).await?;
            self.click("#signout-others").await?;
            self.wait_page("/account/sessions", "Every other session was signed out.")
                .await?;
            self.expect_rows(1).await?;
            self.wait_text(EMAIL).await?;
            for token in &others {
                if self.session_alive(token).await? {
                    return Err("a signed-out session is still alive upstream".to_owned());
                }
            }
            Ok(())
        })
        .await?;

        self.step("sign out everywhere", async {
            self.open("/account/sessions").await?;
            self.click("#signout-all").await?;
            self.wait_page("/", "You are not signed in.").await
        })
        .await
    }

    /// Runs one step and saves a screenshot of where it ended (and the
    /// page source when it failed).
    async fn step(&self, name: &str, body: impl Future<Output = StepResult>) -> StepResult {
        let number = self.steps.get() + 1;
        self.steps.set(number);
        let result = body.await;
        let stem = format!(
            "{number:02}-{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        if let Ok(png) = self.browser.screenshot().await {
            let _ = std::fs::write(self.dir.join(format!("{stem}.png")), png);
        }
        let Err(err) = result else {
            return Ok(());
        };
        if let Ok(html) = self.browser.source().await {
            let _ = std::fs::write(self.dir.join(format!("{stem}.html")), html);
        }
        eprintln!(
            "step {number} ({name}) failed; screenshot: {}",
            self.dir.join(format!("{stem}.png")).display()
        );
        Err(format!("step {number} ({name}): {err}"))
    }

    async fn open(&self, path: &str) -> StepResult {
        let url = format!("{}{path}", self.origin);
        self.browser.goto(&url).await.map_err(|e| e.to_string())
    }

    async fn click(&self, css: &str) -> StepResult {
        let element = self.browser.find(css).await.map_err(|e| e.to_string())?;
        self.browser
            .click(&element)
            .await
            .map_err(|e| format!("click {css:?}: {e}"))
    }

    /// Replaces the value of the field `name` in the form `form`.
    async fn fill(&self, form: &str, name: &str, value: &str) -> StepResult {
        let css = format!(r#"{form} [name="{name}"]"#);
        let field = self.browser.find(&css).await.map_err(|e| e.to_string())?;
        self.browser
            .clear(&field)
            .await
            .map_err(|e| format!("clear {css:?}: {e}"))?;
        self.browser
            .send_keys(&field, value)
            .await
            .map_err(|e| format!("type into {css:?}: {e}"))
    }

    async fn submit(&self, form: &str) -> StepResult {
        self.click(&format!(r#"{form} button[type="submit"]"#))
            .await
    }

    async fn sign_out(&self) -> StepResult {
        self.click("#nav-signout").await?;
        self.wait_page("/", "You are not signed in.").await
    }

    async fn text_of(&self, css: &str) -> Result<String, String> {
        let element = self.browser.find(css).await.map_err(|e| e.to_string())?;
        self.browser.text(&element).await.map_err(|e| e.to_string())
    }

    /// Polls until `done(url, page text)` holds, or fails after [`WAIT`]
    /// with where the browser is and what it shows.
    async fn wait_for(&self, what: &str, done: impl Fn(&str, &str) -> bool) -> StepResult {
        let deadline = Instant::now() + WAIT;
        loop {
            // Errors while a page loads (stale elements) just mean "not yet".
            let url = self.browser.current_url().await.unwrap_or_default();
            let text = match self.browser.page_text().await {
                Ok(text) => text,
                Err(err) => format!("(no page text: {err})"),
            };
            if done(&url, &text) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let shown: String = text.chars().take(600).collect();
                return Err(format!(
                    "waited {WAIT:?} for {what}; at {url} the page shows:\n{shown}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_text(&self, needle: &str) -> StepResult {
        self.wait_for(&format!("{needle:?}"), |_, text| text.contains(needle))
            .await
    }

    /// Waits for a page of the site at `path` that shows `needle`.
    async fn wait_page(&self, path: &str, needle: &str) -> StepResult {
        let origin = self.origin.clone();
        self.wait_for(&format!("{path} showing {needle:?}"), move |url, text| {
            Url::parse(url)
                .is_ok_and(|url| url.origin().ascii_serialization() == origin && url.path() == path)
                && text.contains(needle)
        })
        .await
    }

    /// Waits for the dev upstream's outbox with `subject` on it.
    async fn wait_outbox(&self, subject: &str) -> StepResult {
        let outbox = format!("{}/_dev/outbox", self.dev.url());
        self.wait_for(&format!("the outbox with {subject:?}"), |url, text| {
            url == outbox && text.contains(subject)
        })
        .await
    }

    /// The sessions table has `count` rows.
    async fn expect_rows(&self, count: usize) -> StepResult {
        let rows = self
            .browser
            .find_all("#sessions tbody tr")
            .await
            .map_err(|e| e.to_string())?;
        if rows.len() == count {
            Ok(())
        } else {
            Err(format!(
                "expected {count} sessions, the page lists {}",
                rows.len()
            ))
        }
    }

    async fn session_alive(&self, token: &SessionToken) -> Result<bool, String> {
        match self.altogic.get_user(token).await {
            Ok(_) => Ok(true),
            Err(err) if err.is_invalid_session() => Ok(false),
            Err(err) => Err(format!("upstream: {err}")),
        }
    }
}
