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
// The walk-through neither kills the provider nor needs `start`.
#[cfg(feature = "oidc")]
#[allow(dead_code)]
#[path = "oidc/provider.rs"]
mod oidc_provider;
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
#[cfg(feature = "oidc")]
use oidc_provider::OpenIdProvider;
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

    // Issue 11: every flow at a desktop size, then again (new accounts) at
    // a phone's, in one browser.
    let mut run = Run {
        browser,
        dir: dir.clone(),
        origin: site.origin.clone(),
        dev: site.dev.clone(),
        altogic: site.altogic.clone(),
        steps: Cell::new(0),
        screen: &SCREENS[0],
    };
    let mut outcome = Ok(());
    for screen in &SCREENS {
        run.screen = screen;
        outcome = run.all_steps().await;
        if outcome.is_err() {
            break;
        }
    }
    // Issue 12: the same site on the Webcom dev server, at the desktop
    // size.
    #[cfg(feature = "webcom")]
    if outcome.is_ok() {
        let webcom = serve_webcom_site().await;
        run.origin = webcom.origin.clone();
        run.screen = &SCREENS[0];
        outcome = run.webcom_steps(&webcom.dev).await;
    }
    // Issue 13: the same site on the SlashID dev server.
    #[cfg(feature = "slashid")]
    if outcome.is_ok() {
        let slashid = serve_slashid_site().await;
        run.origin = slashid.origin.clone();
        outcome = run.slashid_steps(&slashid.dev).await;
    }
    // Issue 14: the same site on a real OpenID Provider (oidc-provider 9).
    #[cfg(feature = "oidc")]
    if outcome.is_ok()
        && let Some(oidc) = serve_oidc_site().await
    {
        run.origin = oidc.origin.clone();
        outcome = run.oidc_steps(&oidc).await;
    }
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

#[cfg(feature = "slashid")]
struct ServedSlashIdSite {
    origin: String,
    dev: authgate::dev::slashid::SlashIdDev,
}

/// The example site on its SlashID dev server (`AUTHGATE_UPSTREAM=slashid`),
/// as `main` runs it.
#[cfg(feature = "slashid")]
async fn serve_slashid_site() -> ServedSlashIdSite {
    let dev = site::spawn_slashid_dev().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let config = site::auth_config(&origin, Some(&KEY)).unwrap();
    let app = site::slashid_app(
        config,
        site::slashid_dev_client(&dev),
        site::SiteOptions::for_slashid_dev(),
    )
    .unwrap();
    tokio::spawn(async move {
        let service = axum::ServiceExt::<Request>::into_make_service(app);
        if let Err(err) = axum::serve(listener, service).await {
            eprintln!("SlashID site server stopped: {err}");
        }
    });
    ServedSlashIdSite { origin, dev }
}

/// The example site on a real OpenID Provider (`AUTHGATE_UPSTREAM=oidc`,
/// as `scripts/ssr-site-oidc.sh` runs it): tests/oidc/provider.mjs on
/// 127.0.0.1 with a port it picks, a client registered for this site, and
/// access tokens that live 66 s, so the site refreshes 6 s after a sign-in
/// (authgate refreshes 60 s before expiry).
#[cfg(feature = "oidc")]
struct ServedOidcSite {
    origin: String,
    issuer: String,
    _provider: OpenIdProvider,
}

#[cfg(feature = "oidc")]
async fn serve_oidc_site() -> Option<ServedOidcSite> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let after_sign_out = format!("{origin}/?notice=signed-out");
    let clients = serde_json::json!([{
        "client_id": "ssr-site",
        "client_secret": "browser-test-secret",
        "redirect_uris": [format!("{origin}/auth/callback")],
        "post_logout_redirect_uris": [after_sign_out],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_basic",
        "backchannel_logout_uri": format!("{origin}/auth/backchannel-logout"),
        "backchannel_logout_session_required": true,
        "require_auth_time": true,
    }]);
    let provider = OpenIdProvider::start_with(&clients, &[("OIDC_ACCESS_TOKEN_TTL", "66")]).await?;
    let issuer = provider.issuer.clone();

    let config = site::auth_config(&origin, Some(&KEY)).unwrap();
    let client = authgate::oidc::Client::builder(&issuer, "ssr-site")
        .with_client_secret("browser-test-secret")
        .with_scopes(&["openid", "email", "profile", "groups"])
        .with_post_logout_redirect(&after_sign_out);
    let app = site::oidc_app(config, client, site::SiteOptions::default())
        .await
        .unwrap();
    tokio::spawn(async move {
        let service = axum::ServiceExt::<Request>::into_make_service(app);
        if let Err(err) = axum::serve(listener, service).await {
            eprintln!("OpenID Connect site server stopped: {err}");
        }
    });
    Some(ServedOidcSite {
        origin,
        issuer,
        _provider: provider,
    })
}

#[cfg(feature = "webcom")]
struct ServedWebcomSite {
    origin: String,
    dev: authgate::dev::webcom::WebcomDev,
}

/// The example site on its Webcom dev server (`AUTHGATE_UPSTREAM=webcom`),
/// as `main` runs it.
#[cfg(feature = "webcom")]
async fn serve_webcom_site() -> ServedWebcomSite {
    let dev = site::spawn_webcom_dev().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let config = site::auth_config(&origin, Some(&KEY)).unwrap();
    let client = authgate::webcom::Client::builder(dev.url(), dev.app_id());
    let app = site::webcom_app(config, client, site::SiteOptions::for_webcom_dev(&dev)).unwrap();
    tokio::spawn(async move {
        let service = axum::ServiceExt::<Request>::into_make_service(app);
        if let Err(err) = axum::serve(listener, service).await {
            eprintln!("Webcom site server stopped: {err}");
        }
    });
    ServedWebcomSite { origin, dev }
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

/// A screen the walk-through runs at, with its own accounts.
struct Screen {
    name: &'static str,
    width: u32,
    height: u32,
    email: &'static str,
    /// The phone number as the user types it, and as the site stores it.
    typed_phone: &'static str,
    phone: &'static str,
}

const SCREENS: [Screen; 2] = [
    Screen {
        name: "desktop",
        width: 1280,
        height: 900,
        email: "ada@example.test",
        typed_phone: "+1 (202) 555-0199",
        phone: "+12025550199",
    },
    Screen {
        name: "phone",
        width: 390,
        height: 844,
        email: "grace.hopper.with.a.long.address@example.test",
        typed_phone: "+44 20 7946 0958",
        phone: "+442079460958",
    },
];

/// The click-through, one numbered step at a time.
struct Run {
    browser: WebDriver,
    dir: PathBuf,
    origin: String,
    dev: DevUpstream,
    altogic: altogic::Client,
    steps: Cell<usize>,
    screen: &'static Screen,
}

const PASSWORD: &str = "first password";
const NEW_PASSWORD: &str = "second password";

impl Run {
    async fn all_steps(&self) -> StepResult {
        let Screen {
            email,
            phone,
            typed_phone,
            ..
        } = *self.screen;
        self.browser
            .set_window_size(self.screen.width, self.screen.height)
            .await
            .map_err(|e| e.to_string())?;

        self.step("sign up by e-mail", async {
            self.open("/signup").await?;
            self.expect_focus("name").await?;
            self.layout_fits("/signup").await?;
            self.fill("#signup-email", "name", "Ada Lovelace").await?;
            self.fill("#signup-email", "email", email).await?;
            self.fill("#signup-email", "password", PASSWORD).await?;
            self.submit("#signup-email").await?;
            self.wait_page("/signup", "Check your e-mail").await?;
            self.wait_text(&format!("We sent a confirmation link to {email}"))
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
            self.wait_page(
                "/account",
                "Your e-mail address is confirmed and you are signed in.",
            )
            .await?;
            self.wait_text("Ada Lovelace").await?;
            self.expect_text_of("#account-signs-in-with", "e-mail and password")
                .await?;
            self.wait_text(email).await?;
            self.layout_fits("/account").await
        })
        .await?;

        // Point 1: the account page is served from the layer's cache.
        self.step("the account page costs no upstream call when warm", async {
            let before = self.dev.upstream_calls();
            for _ in 0..5 {
                self.browser.refresh().await.map_err(|e| e.to_string())?;
                self.wait_page("/account", "Your account").await?;
            }
            let calls = self.dev.upstream_calls() - before;
            if calls == 0 {
                Ok(())
            } else {
                Err(format!(
                    "5 warm views of /account made {calls} upstream calls"
                ))
            }
        })
        .await?;

        // Point 2: a failed change comes back as a GET of /account with the
        // error in view and the field in error focused; a reload shows the
        // page without it (nothing is posted again).
        self.step(
            "a failed account change shows where the user looks",
            async {
                self.fill("#change-password", "old_password", "not my password")
                    .await?;
                self.fill("#change-password", "new_password", NEW_PASSWORD)
                    .await?;
                self.submit("#change-password").await?;
                self.wait_page("/account", "The current password is not correct.")
                    .await?;
                self.expect_in_view(".error").await?;
                self.expect_focus("old_password").await?;
                self.browser.refresh().await.map_err(|e| e.to_string())?;
                self.wait_page("/account", "Your account").await?;
                self.expect_absent(".error").await?;
                // Point 4: a number that cannot be read gets a hint, on the field.
                self.fill("#change-phone", "new_phone", "(555) 123-4567")
                    .await?;
                self.fill("#change-phone", "password", PASSWORD).await?;
                self.submit("#change-phone").await?;
                self.wait_page("/account", "Use the international format")
                    .await?;
                self.expect_in_view(".error").await?;
                self.expect_focus("new_phone").await
            },
        )
        .await?;

        self.step("sign out", async {
            self.sign_out().await?;
            self.wait_text("You are signed out.").await?;
            self.open("/account").await?;
            self.wait_page("/signin", "With your e-mail").await?;
            self.expect_focus("email").await
        })
        .await?;

        self.step("sign in with the password", async {
            self.fill("#signin-email", "email", email).await?;
            self.fill("#signin-email", "password", "wrong password")
                .await?;
            self.submit("#signin-email").await?;
            self.wait_text("The credentials are not valid.").await?;
            self.expect_focus("password").await?;
            self.fill("#signin-email", "password", PASSWORD).await?;
            self.submit("#signin-email").await?;
            // The sign-in page carried return_to=/account.
            self.wait_page("/account", email).await
        })
        .await?;

        // Point 5.
        self.step("a signed-in user on the sign-in page", async {
            self.open("/signin").await?;
            self.wait_page("/signin", &format!("You are signed in as {email}."))
                .await?;
            self.click("#signed-in-continue").await?;
            self.wait_page("/account", "Your account").await
        })
        .await?;

        self.step("sign in with a magic link", async {
            self.sign_out().await?;
            self.open("/signin/magic").await?;
            self.expect_focus("email").await?;
            self.fill("#magic-link", "email", email).await?;
            self.submit("#magic-link").await?;
            self.wait_text("we sent it a sign-in link").await?;
            self.click("#open-outbox").await?;
            self.wait_outbox("Your sign-in link").await?;
            self.click(r#"a[href*="/_auth/magic"]"#).await?;
            self.wait_page("/auth/continue", "Finish signing in")
                .await?;
            self.click("#authgate-continue").await?;
            self.wait_page(
                "/account",
                "You are signed in with the link we e-mailed you.",
            )
            .await?;
            self.wait_text(email).await
        })
        .await?;

        self.step("sign in with GitHub through the simulator", async {
            self.sign_out().await?;
            self.open("/signin").await?;
            self.providers_line_up().await?;
            self.click("#oauth-github").await?;
            self.wait_for("the GitHub simulator", |url, text| {
                url.starts_with(&format!("{}/_auth/github", self.dev.url()))
                    && text.contains("Sign in with Github (dev simulator)")
            })
            .await?;
            self.fill("form", "name", "Octo Cat").await?;
            self.fill("form", "email", &format!("octo.{email}")).await?;
            self.click(r#"button[value="continue"]"#).await?;
            self.wait_page("/account", "You are signed in.").await?;
            self.wait_text("Octo Cat").await?;
            self.wait_text("You signed in with Github").await
        })
        .await?;

        self.step("sign up by phone with an SMS code", async {
            self.sign_out().await?;
            self.open("/signup/phone").await?;
            self.fill("#signup-phone", "name", "Pat Phone").await?;
            // Typed the local way; stored (and texted) in E.164 (point 4).
            self.fill("#signup-phone", "phone", typed_phone).await?;
            self.fill("#signup-phone", "password", PASSWORD).await?;
            self.submit("#signup-phone").await?;
            self.wait_text(&format!("We texted a verification code to {phone}."))
                .await?;
            self.expect_focus("code").await?;
            self.click("#outbox-link").await?;
            self.wait_outbox("Your verification code").await?;
            let code = self.text_of(".code").await?;
            let encoded: String = url::form_urlencoded::byte_serialize(phone.as_bytes()).collect();
            self.open(&format!("/verify-phone?phone={encoded}")).await?;
            self.fill("#verify-phone", "code", code.trim()).await?;
            self.submit("#verify-phone").await?;
            self.wait_page(
                "/account",
                "Your phone number is verified and you are signed in.",
            )
            .await?;
            self.wait_text(phone).await?;
            self.wait_text("Pat Phone").await?;
            self.expect_text_of("#account-signs-in-with", "phone number and password")
                .await
        })
        .await?;

        self.step(
            "reset the password by e-mail, sign in with the new one",
            async {
                self.sign_out().await?;
                self.open("/forgot-password").await?;
                self.fill("#forgot-email", "email", email).await?;
                self.submit("#forgot-email").await?;
                self.wait_text("we sent it a link to choose a new password")
                    .await?;
                self.click("#open-outbox").await?;
                self.wait_outbox("Reset your password").await?;
                self.click(r#"a[href*="/_auth/reset"]"#).await?;
                self.wait_page("/reset-password", "Set the new password")
                    .await?;
                self.expect_focus("password").await?;
                self.fill("#reset-password", "password", NEW_PASSWORD)
                    .await?;
                self.submit("#reset-password").await?;
                self.wait_page("/signin", "Your password was changed.")
                    .await?;
                self.fill("#signin-email", "email", email).await?;
                self.fill("#signin-email", "password", PASSWORD).await?;
                self.submit("#signin-email").await?;
                self.wait_text("The credentials are not valid.").await?;
                self.fill("#signin-email", "password", NEW_PASSWORD).await?;
                self.submit("#signin-email").await?;
                self.wait_page("/account", email).await
            },
        )
        .await?;

        self.step("sessions: sign out one, then all others", async {
            let mut others = Vec::new();
            for _ in 0..2 {
                let signed_in = self
                    .altogic
                    .sign_in_with_email(email, NEW_PASSWORD)
                    .await
                    .map_err(|e| format!("a second session: {e}"))?;
                others.push(signed_in.session.ok_or("no session")?.token);
            }
            // The sign-in is among the recent auth events on the account
            // page (point 3: in plain words), which links to the sessions
            // page.
            self.open("/account").await?;
            self.wait_text("Recent auth events").await?;
            self.wait_text("Signed in with e-mail (or phone) and password")
                .await?;
            self.click("#sessions-link").await?;
            self.wait_page("/account/sessions", "Active sessions")
                .await?;
            self.layout_fits("/account/sessions").await?;
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
            for token in &others {
                if self.session_alive(token).await? {
                    return Err("a signed-out session is still alive upstream".to_owned());
                }
            }
            Ok(())
        })
        .await?;

        // Point 2: another device signs this browser out ("Sign out all
        // others" on the site); this browser is told on its next page.
        self.step("signed out from another device, and told so", async {
            self.other_device_signs_out_the_others(email).await?;
            self.open("/").await?;
            self.wait_page(
                "/",
                "You were signed out: your session was ended on another device",
            )
            .await?;
            self.wait_text("You are not signed in.").await?;
            self.open("/signin").await?;
            self.fill("#signin-email", "email", email).await?;
            self.fill("#signin-email", "password", NEW_PASSWORD).await?;
            self.submit("#signin-email").await?;
            self.wait_page("/account", email).await
        })
        .await?;

        self.step("sign out everywhere, after a confirmation", async {
            self.open("/account/sessions").await?;
            self.click("#signout-all").await?;
            self.wait_page("/account/sign-out-everywhere", "Sign out everywhere?")
                .await?;
            self.click("#cancel-signout-all").await?;
            self.wait_page("/account/sessions", "Active sessions")
                .await?;
            self.click("#signout-all").await?;
            self.wait_page("/account/sign-out-everywhere", "Sign out everywhere?")
                .await?;
            self.submit("#confirm-signout-all").await?;
            self.wait_page("/", "You are signed out on every device, this one too.")
                .await?;
            self.wait_text("You are not signed in.").await
        })
        .await
    }

    /// Issue 12: the site on Webcom — sign-up with the e-mailed token, the
    /// account page, password sign-in, a provider through Webcom's
    /// redirect mode, a texted code, and deleting the account after a
    /// fresh sign-in (`TOKEN_TOO_OLD`).
    #[cfg(feature = "webcom")]
    async fn webcom_steps(&self, webcom: &authgate::dev::webcom::WebcomDev) -> StepResult {
        use authgate::dev::webcom::WebcomMessageKind;
        const EMAIL: &str = "wanda@example.test";
        const PASSWORD: &str = "webcom password";
        let code_to = |to: &str, kind: WebcomMessageKind| {
            webcom
                .outbox()
                .into_iter()
                .rev()
                .find(|m| m.to == to && m.kind == kind)
                .map(|m| m.code)
                .ok_or_else(|| format!("no {kind:?} code to {to} in the outbox"))
        };

        self.browser
            .set_window_size(self.screen.width, self.screen.height)
            .await
            .map_err(|e| e.to_string())?;
        self.step("webcom: sign up, confirm with the e-mailed code", async {
            self.open("/signup").await?;
            self.expect_focus("name").await?;
            self.fill("#signup-email", "name", "Wanda Webcom").await?;
            self.fill("#signup-email", "email", EMAIL).await?;
            self.fill("#signup-email", "password", PASSWORD).await?;
            self.submit("#signup-email").await?;
            self.wait_page("/signup", "Confirm your e-mail address")
                .await?;
            self.expect_focus("token").await?;
            let token = code_to(EMAIL, WebcomMessageKind::Verification)?;
            self.fill("#verify-email", "token", &token).await?;
            self.submit("#verify-email").await?;
            self.wait_page(
                "/account",
                "Your e-mail address is confirmed and you are signed in.",
            )
            .await?;
            self.expect_text_of("#account-signs-in-with", "e-mail and password")
                .await?;
            self.wait_text("the token stays valid at Webcom until it expires")
                .await?;
            self.layout_fits("/account").await
        })
        .await?;

        self.step("webcom: sign out, sign in with the password", async {
            self.sign_out().await?;
            self.wait_text("You are signed out.").await?;
            self.open("/signin").await?;
            self.expect_focus("email").await?;
            self.fill("#signin-email", "email", EMAIL).await?;
            self.fill("#signin-email", "password", PASSWORD).await?;
            self.submit("#signin-email").await?;
            self.wait_page("/account", EMAIL).await
        })
        .await?;

        self.step("webcom: sign in with GitHub in redirect mode", async {
            self.sign_out().await?;
            self.open("/signin").await?;
            self.providers_line_up().await?;
            self.click("#oauth-github").await?;
            self.wait_for("the Webcom sign-in page", |url, text| {
                url.starts_with(webcom.url()) && text.contains("Webcom dev simulator")
            })
            .await?;
            self.fill("form", "name", "Octo Webcom").await?;
            self.fill("form", "email", "octo@webcom.example").await?;
            self.click(r#"button[value="allow"]"#).await?;
            self.wait_page("/account", "You are signed in.").await?;
            self.wait_text("Octo Webcom").await?;
            self.expect_text_of("#account-signs-in-with", "GitHub")
                .await
        })
        .await?;

        self.step("webcom: sign in with a texted code", async {
            self.sign_out().await?;
            self.open("/signin").await?;
            self.fill("#signin-phone", "phone", "+1 202 555 0188")
                .await?;
            self.submit("#signin-phone").await?;
            self.wait_text("We texted a code to +12025550188.").await?;
            self.expect_focus("code").await?;
            let code = code_to("12025550188", WebcomMessageKind::Otp)?;
            self.fill("#signin-code", "code", &code).await?;
            self.submit("#signin-code").await?;
            self.wait_page("/account", "Your account").await?;
            self.expect_text_of("#account-phone", "+12025550188")
                .await?;
            self.expect_text_of("#account-signs-in-with", "phone number and a texted code")
                .await
        })
        .await?;

        self.step("webcom: delete the account after a fresh sign-in", async {
            self.sign_out().await?;
            self.open("/signin").await?;
            self.fill("#signin-email", "email", EMAIL).await?;
            self.fill("#signin-email", "password", PASSWORD).await?;
            self.submit("#signin-email").await?;
            self.wait_page("/account", EMAIL).await?;
            self.click("#delete-account").await?;
            self.wait_page("/account/delete", "Delete your account?")
                .await?;
            // The sign-in is older than Webcom's fresh-auth window now.
            webcom.advance_clock(Duration::from_secs(10 * 60));
            self.submit("#confirm-delete").await?;
            self.wait_page(
                "/signin",
                "For your safety, please sign in again to continue.",
            )
            .await?;
            // The address is filled in: the password has the focus.
            self.expect_focus("password").await?;
            self.fill("#signin-email", "password", PASSWORD).await?;
            self.submit("#signin-email").await?;
            self.wait_page("/account/delete", "Delete your account?")
                .await?;
            self.submit("#confirm-delete").await?;
            self.wait_page("/", "Your account was deleted.").await?;
            self.wait_text("You are not signed in.").await
        })
        .await
    }

    /// Issue 13: the site on SlashID — hosted login on SlashID's page, the
    /// groups, the admin page, the organization switch, and a 403 (not a
    /// sign-in page) for another group.
    #[cfg(feature = "slashid")]
    async fn slashid_steps(&self, slashid: &authgate::dev::slashid::SlashIdDev) -> StepResult {
        let hosted_login = |email: &'static str, groups: &'static str| async move {
            self.open("/signin").await?;
            self.click("#signin-slashid").await?;
            self.wait_for("SlashID's login page", |url, text| {
                url.starts_with(slashid.url()) && text.contains("Sign in (SlashID dev server)")
            })
            .await?;
            self.fill("form", "email", email).await?;
            self.fill("form", "groups", groups).await?;
            self.click(r#"button[value="allow"]"#).await?;
            self.wait_page("/account", "You are signed in.").await
        };

        self.step("slashid: hosted login as an admin", async {
            hosted_login("ada@example.test", "admin").await?;
            self.expect_text_of("#account-groups", "admin").await?;
            self.expect_text_of("#account-org", "dev-org").await?;
            self.layout_fits("/account").await
        })
        .await?;

        self.step(
            "slashid: the admin page and the organization switch",
            async {
                self.click("#admin-link").await?;
                self.wait_page("/admin", "Only the admin group sees this page")
                    .await?;
                self.open("/account/organizations").await?;
                self.click(".switch-org").await?;
                self.wait_page("/account", "You switched organization.")
                    .await?;
                self.expect_text_of("#account-org", site::SECOND_ORG).await
            },
        )
        .await?;

        self.step(
            "slashid: another group gets 403, not a sign-in page",
            async {
                self.sign_out().await?;
                hosted_login("grace@example.test", "staff").await?;
                self.open("/admin").await?;
                self.wait_page("/admin", "Not allowed").await?;
                self.wait_text("this page is not open to your account")
                    .await?;
                self.open("/").await?;
                self.sign_out().await
            },
        )
        .await
    }

    /// Issue 14: the site on a real OpenID Provider — sign-in on the
    /// provider's login and consent pages, the groups and the admin page,
    /// a page that wants a recent sign-in, the token set refreshed before
    /// the access token expires (seen at the provider: one refresh grant),
    /// sign-out at the provider too (RP-initiated logout), and a sign-out
    /// made at the provider reaching the site (back-channel logout).
    #[cfg(feature = "oidc")]
    async fn oidc_steps(&self, oidc: &ServedOidcSite) -> StepResult {
        let issuer = oidc.issuer.as_str();
        let at_provider = |page: &'static str, needle: &'static str| {
            self.wait_for(page, move |url, text| {
                url.starts_with(issuer) && text.contains(needle)
            })
        };
        let sign_in = |login: &'static str| async move {
            self.open("/signin").await?;
            self.click("#signin-oidc").await?;
            at_provider("the provider's login page", "Sign-in").await?;
            self.fill("form", "login", login).await?;
            self.fill("form", "password", "any password").await?;
            self.submit("form").await?;
            // Consent is asked once per client and account.
            let consent_or_back = self
                .wait_for("the consent page or the account page", |url, text| {
                    (url.starts_with(issuer) && text.contains("Continue"))
                        || text.contains("You are signed in.")
                })
                .await;
            consent_or_back?;
            let url = self.browser.current_url().await.unwrap_or_default();
            if url.starts_with(issuer) {
                self.submit("form").await?;
            }
            self.wait_page("/account", "You are signed in.").await
        };
        let refreshes = || async {
            let http = reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| e.to_string())?;
            let stats: serde_json::Value = http
                .get(format!("{issuer}/_test/stats"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u64, String>(stats["grants"]["refresh_token ok"].as_u64().unwrap_or(0))
        };

        self.step("oidc: sign in on the provider's pages", async {
            sign_in("admin-ada").await?;
            self.expect_text_of("#account-email", "admin-ada@example.test (verified)")
                .await?;
            self.expect_text_of("#account-groups", "admin").await?;
            if self.text_of("#account-signed-in-at").await? == "—" {
                return Err("no auth_time on the user".to_owned());
            }
            self.layout_fits("/account").await
        })
        .await?;

        self.step("oidc: the admin page and a recent sign-in", async {
            self.click("#admin-link").await?;
            self.wait_page("/admin", "Only the admin group sees this page")
                .await?;
            self.open("/account/security").await?;
            self.wait_page("/account/security", "within the last five minutes")
                .await
        })
        .await?;

        self.step(
            "oidc: the token set is refreshed before the access token expires",
            async {
                self.open("/account").await?;
                let before = self.text_of("#account-access-until").await?;
                if refreshes().await? != 0 {
                    return Err("a refresh before its time".to_owned());
                }
                // Due 6 s after the sign-in, which is over by now (66 s
                // tokens, refreshed 60 s early).
                tokio::time::sleep(Duration::from_secs(7)).await;
                self.open("/account").await?;
                self.wait_page("/account", "Your account").await?;
                let after = self.text_of("#account-access-until").await?;
                if after == before {
                    return Err(format!("the access token was not renewed: {after}"));
                }
                // A reload carries the new cookie: served, no second refresh.
                self.open("/account").await?;
                self.wait_page("/account", "Your account").await?;
                match refreshes().await? {
                    1 => Ok(()),
                    n => Err(format!("{n} refresh grants at the provider, not 1")),
                }
            },
        )
        .await?;

        self.step("oidc: sign-out ends the provider's session too", async {
            self.click("#nav-signout").await?;
            at_provider("the provider's logout page", "Do you want to sign-out").await?;
            self.click(r#"button[name="logout"]"#).await?;
            self.wait_page("/", "You are signed out.").await?;
            // The provider's session is gone: signing in asks for a login.
            self.open("/signin").await?;
            self.click("#signin-oidc").await?;
            at_provider("the provider's login page", "Sign-in").await
        })
        .await?;

        self.step(
            "oidc: a sign-out at the provider reaches the site (back-channel logout)",
            async {
                sign_in("grace").await?;
                self.expect_text_of("#account-groups", "none").await?;
                self.browser
                    .goto(&format!("{issuer}/session/end"))
                    .await
                    .map_err(|e| e.to_string())?;
                at_provider("the provider's logout page", "Do you want to sign-out").await?;
                self.click(r#"button[name="logout"]"#).await?;
                at_provider("the provider's sign-out page", "Sign-out Success").await?;
                // The browser still has its cookie; the site refuses it.
                self.open("/account").await?;
                self.wait_page("/signin", "Your session has ended").await
            },
        )
        .await
    }

    /// "Another device": a plain HTTP client signs in to the site with the
    /// account's password, then posts the site's "Sign out all others".
    async fn other_device_signs_out_the_others(&self, email: &str) -> StepResult {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let signed_in = http
            .post(format!("{}/signin", self.origin))
            .header("origin", &self.origin)
            .form(&[("email", email), ("password", NEW_PASSWORD)])
            .send()
            .await
            .map_err(|e| format!("other device: {e}"))?;
        let cookie = signed_in
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|value| value.starts_with("authgate="))
            .and_then(|value| value.split(';').next())
            .ok_or("other device: no session cookie")?
            .to_owned();
        let out = http
            .post(format!(
                "{}/auth/signout?scope=others&return_to=%2Faccount%2Fsessions",
                self.origin
            ))
            .header("origin", &self.origin)
            .header("cookie", cookie)
            .send()
            .await
            .map_err(|e| format!("other device: {e}"))?;
        if out.status().is_redirection() {
            Ok(())
        } else {
            Err(format!("other device: sign-out answered {}", out.status()))
        }
    }

    /// Runs one step and saves a screenshot of where it ended (and the
    /// page source when it failed).
    async fn step(&self, name: &str, body: impl Future<Output = StepResult>) -> StepResult {
        let number = self.steps.get() + 1;
        self.steps.set(number);
        let result = body.await;
        let name = format!("{}: {name}", self.screen.name);
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

    /// Runs `script` with `args` in the page.
    async fn script(
        &self,
        script: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.browser
            .execute(script, args)
            .await
            .map_err(|e| format!("script: {e}"))
    }

    /// The element matching `css` shows `expected`.
    async fn expect_text_of(&self, css: &str, expected: &str) -> StepResult {
        let text = self.text_of(css).await?;
        if text.trim() == expected {
            Ok(())
        } else {
            Err(format!("{css} shows {text:?}, not {expected:?}"))
        }
    }

    /// The focused element is the input named `name`.
    async fn expect_focus(&self, name: &str) -> StepResult {
        let focused = self
            .script(
                "const e = document.activeElement; return e && e.name ? e.name : (e ? e.tagName : '');",
                serde_json::json!([]),
            )
            .await?;
        if focused == name {
            Ok(())
        } else {
            Err(format!(
                "expected the focus on {name:?}, it is on {focused}"
            ))
        }
    }

    /// The first element matching `css` is entirely inside the viewport.
    async fn expect_in_view(&self, css: &str) -> StepResult {
        let answer = self
            .script(
                "const e = document.querySelector(arguments[0]);
                 if (!e) return 'missing';
                 const r = e.getBoundingClientRect();
                 return r.top >= 0 && r.bottom <= window.innerHeight
                   ? 'ok' : `from ${r.top} to ${r.bottom} px in a ${window.innerHeight} px viewport`;",
                serde_json::json!([css]),
            )
            .await?;
        if answer == "ok" {
            Ok(())
        } else {
            Err(format!("{css} is not in view: {answer}"))
        }
    }

    /// Nothing matches `css`.
    async fn expect_absent(&self, css: &str) -> StepResult {
        let found = self
            .script(
                "return document.querySelectorAll(arguments[0]).length;",
                serde_json::json!([css]),
            )
            .await?;
        if found == 0 {
            Ok(())
        } else {
            Err(format!("{found} elements match {css}"))
        }
    }

    /// Point 7: at this screen size the page does not scroll sideways, the
    /// header is one line, and the dev bar has the content's edges.
    async fn layout_fits(&self, page: &str) -> StepResult {
        let layout = self
            .script(
                "const r = e => e.getBoundingClientRect();
                 const brand = r(document.querySelector('header.top .brand'));
                 const nav = r(document.querySelector('header.top nav'));
                 const main = document.querySelector('main');
                 const style = getComputedStyle(main);
                 const left = r(main).left + parseFloat(style.paddingLeft);
                 const right = r(main).right - parseFloat(style.paddingRight);
                 const bar = document.querySelector('.devbar');
                 return {
                   overflow: document.documentElement.scrollWidth - window.innerWidth,
                   header_lines: Math.abs((brand.top + brand.bottom) - (nav.top + nav.bottom)) < 8
                     && nav.left >= brand.right && nav.height < 44 ? 1 : 2,
                   bar_left: bar ? Math.round(r(bar).left - left) : 0,
                   bar_right: bar ? Math.round(right - r(bar).right) : 0,
                 };",
                serde_json::json!([]),
            )
            .await?;
        let fits = layout["overflow"].as_f64().is_some_and(|o| o <= 0.0)
            && layout["header_lines"] == 1
            && layout["bar_left"].as_f64().is_some_and(|d| d.abs() <= 1.0)
            && layout["bar_right"].as_f64().is_some_and(|d| d.abs() <= 1.0);
        if fits {
            Ok(())
        } else {
            Err(format!(
                "{page} at {} px does not fit: {layout}",
                self.screen.width
            ))
        }
    }

    /// Point 7: the provider buttons are one size, one line each, in
    /// columns.
    async fn providers_line_up(&self) -> StepResult {
        let grid = self
            .script(
                "const buttons = [...document.querySelectorAll('.button.provider')];
                 const boxes = buttons.map(b => b.getBoundingClientRect());
                 const sizes = new Set(boxes.map(b => `${Math.round(b.width)}x${Math.round(b.height)}`));
                 return {
                   count: buttons.length,
                   sizes: sizes.size,
                   one_line: buttons.every(b => b.scrollWidth <= b.clientWidth
                     && b.getBoundingClientRect().height < 48),
                 };",
                serde_json::json!([]),
            )
            .await?;
        if grid["count"] == 6 && grid["sizes"] == 1 && grid["one_line"] == true {
            Ok(())
        } else {
            Err(format!(
                "provider buttons at {} px: {grid}",
                self.screen.width
            ))
        }
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
