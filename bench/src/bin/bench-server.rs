//! One variant of the benchmark page behind `GET /`, with N signed-in users
//! prepared in-process before it prints `ready`.
//!
//! ```text
//! bench-server --variant bare|bare-private|authgate|authgate-route-layer|axum-login
//!              [--users N] [--cookies PATH] [--requests K]
//!              [--distinct-users D] [--upstream URL [--upstream-key KEY]]
//!              [--cookie-header browser|session]
//! ```
//!
//! - `bare`: axum with no auth, a fixed name (the limit).
//! - `bare-private`: the same, plus the `Cache-Control: private, no-store`
//!   and `Vary: Cookie` that SECURITY.md N7 requires on user pages.
//! - `authgate`: `AuthLayer::layer(router)` wrapping the whole app (as the
//!   README says), a `DevUpstream` (in-process, or the `dev-upstream`
//!   binary at `--upstream URL`), N sessions created over its REST API
//!   (sign-ups, then sign-ins past D distinct users, default 1,000) and the
//!   cache warmed by one in-process request per cookie, twice (the second
//!   pass must make no upstream lookup).
//! - `authgate-route-layer`: the same, attached with `Router::layer`.
//! - `axum-login`: axum-login 0.18 + tower-sessions 0.14 `MemoryStore`,
//!   attached with `Router::layer` as axum-login documents, min(N, D) users
//!   in an in-memory backend, one in-process login per session.
//!
//! It writes the N `Cookie` header values to `--cookies`, one a line: by
//! default as a browser sends them (a consent cookie, an analytics cookie,
//! then `name=value`), with `--cookie-header session` the session cookie
//! alone; prints `listening on http://127.0.0.1:PORT`, then the RSS
//! before and after the sessions were prepared, then `ready`. It stops on
//! SIGTERM/SIGINT, or after serving K pages with `--requests K` (callgrind
//! needs a normal exit), and then prints what it served.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use authgate::dev::{DEFAULT_CLIENT_KEY, DevUpstream};
use authgate::{AuthConfig, AuthLayer, CurrentUser, altogic};
use authgate_bench::{Args, PASSWORD, render_page, rss_kib, user_email, user_name};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum_login::{AuthManagerLayerBuilder, AuthUser, AuthnBackend, UserId};
use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tower::ServiceExt as _;
use tower_sessions::{MemoryStore, SessionManagerLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Pages served (the handler ran, so the request was signed in).
static PAGES: AtomicU64 = AtomicU64::new(0);
/// Stop after this many pages (0: never).
static LIMIT: AtomicU64 = AtomicU64::new(0);
static STOP: LazyLock<Notify> = LazyLock::new(Notify::new);

fn count_page() {
    let served = PAGES.fetch_add(1, Ordering::Relaxed) + 1;
    if served == LIMIT.load(Ordering::Relaxed) {
        STOP.notify_one();
    }
}

// ---- the handlers ---------------------------------------------------------

/// The name the bare variants render: already in memory, as the signed-in
/// user's name is for the other variants (formatting it per request would
/// flatter them).
static BARE_NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| user_name(0));

async fn bare_page() -> Html<String> {
    count_page();
    Html(render_page(&BARE_NAME))
}

/// The bare page with the two headers SECURITY.md N7 requires on every
/// user-resolved response: what they cost in axum and hyper, with no auth.
async fn bare_private_page() -> impl IntoResponse {
    count_page();
    (
        [
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
            (header::VARY, HeaderValue::from_static("Cookie")),
        ],
        Html(render_page(&BARE_NAME)),
    )
}

async fn authgate_page(user: CurrentUser) -> Html<String> {
    count_page();
    Html(render_page(user.display_name()))
}

// ---- axum-login -----------------------------------------------------------

#[derive(Clone)]
struct LoginUser {
    id: u64,
    name: String,
    auth_hash: [u8; 16],
}

impl std::fmt::Debug for LoginUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginUser").field("id", &self.id).finish()
    }
}

impl AuthUser for LoginUser {
    type Id = u64;

    fn id(&self) -> u64 {
        self.id
    }

    fn session_auth_hash(&self) -> &[u8] {
        &self.auth_hash
    }
}

/// The user directory (a database in a real app).
#[derive(Clone)]
struct Backend {
    users: Arc<HashMap<u64, LoginUser>>,
}

impl AuthnBackend for Backend {
    type User = LoginUser;
    type Credentials = u64;
    type Error = Infallible;

    async fn authenticate(&self, id: u64) -> Result<Option<LoginUser>, Infallible> {
        Ok(self.users.get(&id).cloned())
    }

    async fn get_user(&self, id: &UserId<Self>) -> Result<Option<LoginUser>, Infallible> {
        Ok(self.users.get(id).cloned())
    }
}

type LoginSession = axum_login::AuthSession<Backend>;

async fn login_page(session: LoginSession) -> Response {
    match session.user {
        Some(user) => {
            count_page();
            Html(render_page(&user.name)).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// Signs user `id` in (used in-process before serving).
async fn login(mut session: LoginSession, Path(id): Path<u64>) -> StatusCode {
    match session.authenticate(id).await {
        Ok(Some(user)) if session.login(&user).await.is_ok() => StatusCode::NO_CONTENT,
        _ => StatusCode::UNAUTHORIZED,
    }
}

// ---- preparing sessions ---------------------------------------------------

fn cookie_request(cookie: &str) -> Request {
    Request::get("/")
        .header(header::ACCEPT, "text/html")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap_or_else(|_| unreachable!("a valid request"))
}

/// Creates `n` sessions on the dev upstream: signs up `distinct` users
/// (one session each), then signs them in again in turn for the rest.
/// Returns the tokens in order (session `i` belongs to user `i % distinct`).
async fn sign_up(
    client: &altogic::Client,
    n: usize,
    distinct: usize,
) -> Result<Vec<String>, BoxError> {
    let mut tokens = vec![String::new(); n];
    for (range, sign_up) in [(0..distinct.min(n), true), (distinct.min(n)..n, false)] {
        let mut results = futures_util::stream::iter(range)
            .map(|i| {
                let client = client.clone();
                async move {
                    let email = user_email(i % distinct);
                    let response = if sign_up {
                        let name = serde_json::Value::String(user_name(i));
                        client
                            .sign_up_with_email(&email, PASSWORD, Some(name))
                            .await?
                    } else {
                        client.sign_in_with_email(&email, PASSWORD).await?
                    };
                    let session = response.session.ok_or("no session in the answer")?;
                    Ok::<_, BoxError>((i, session.token.expose().to_owned()))
                }
            })
            .buffer_unordered(16);
        while let Some(result) = results.next().await {
            let (i, token) = result?;
            tokens[i] = token;
        }
    }
    Ok(tokens)
}

/// Sends one request per cookie through `app` in-process and checks that
/// each was served the page with the right name (cookie `i` is user
/// `i % distinct`).
async fn warm<S>(app: S, cookies: &[String], distinct: usize) -> Result<(), BoxError>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut results = futures_util::stream::iter(cookies.iter().enumerate())
        .map(|(i, cookie)| {
            let app = app.clone();
            let request = cookie_request(cookie);
            async move {
                let response = app.oneshot(request).await?;
                let status = response.status();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await?
                    .to_bytes();
                let name = user_name(i % distinct);
                if status != StatusCode::OK
                    || !body.windows(name.len()).any(|w| w == name.as_bytes())
                {
                    return Err(format!(
                        "warm-up request {i}: status {status}, no {name:?} in the page"
                    )
                    .into());
                }
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(32);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

// ---- serving ----------------------------------------------------------------

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| panic!("SIGTERM handler: {e}"));
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = STOP.notified() => {}
    }
}

enum App {
    Router(Router),
    Wrapped(authgate::AuthService<Router>),
}

async fn serve(listener: tokio::net::TcpListener, app: App) -> std::io::Result<()> {
    match app {
        App::Router(router) => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
        App::Wrapped(service) => {
            let make = axum::ServiceExt::<Request>::into_make_service(service);
            axum::serve(listener, make)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
    }
}

/// What a browser sends besides the session: a consent and an analytics
/// cookie. The scan walks every pair, so a session-only header hides part
/// of its cost.
const BROWSER_COOKIES: &str = "cookieconsent_status=dismissed; _ga=GA1.1.1418365342.1732924800; ";

fn write_cookies(path: Option<&str>, cookies: &[String], browser: bool) -> Result<(), BoxError> {
    let Some(path) = path else { return Ok(()) };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let prefix = if browser { BROWSER_COOKIES } else { "" };
    for cookie in cookies {
        writeln!(file, "{prefix}{cookie}")?;
    }
    file.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse(&[])?;
    let variant = args.get("variant").unwrap_or("authgate").to_owned();
    let users: usize = args.num("users", 1000)?;
    // The dev upstream's sign-up scans every user (O(n) each), so 100,000
    // distinct users would take minutes: past this many, sessions are
    // spread over the same users (each session is still its own cache
    // entry or session record).
    let distinct: usize = args.num("distinct-users", 1000)?.clamp(1, users.max(1));
    let limit: u64 = args.num("requests", 0)?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    let started = Instant::now();

    let mut upstream = None;
    let mut layer = None;
    let (app, cookies, rss_users) = match variant.as_str() {
        "bare" | "bare-private" => {
            let app = if variant == "bare" {
                Router::new().route("/", get(bare_page))
            } else {
                Router::new().route("/", get(bare_private_page))
            };
            // A cookie of the same shape as authgate's, so every variant
            // parses the same request bytes.
            let cookies = (0..users.max(1))
                .map(|i| format!("authgate={i:043}"))
                .collect();
            (App::Router(app), cookies, rss_kib())
        }
        "authgate" | "authgate-route-layer" => {
            // The dev upstream in another process (`--upstream`, as
            // scripts/bench.sh runs it, so RSS is the app's alone) or in
            // this one.
            let (url, key) = match args.get("upstream") {
                Some(url) => (
                    url.to_owned(),
                    args.get("upstream-key")
                        .unwrap_or(DEFAULT_CLIENT_KEY)
                        .to_owned(),
                ),
                None => {
                    let dev = DevUpstream::spawn().await?;
                    let url_key = (dev.url().to_owned(), dev.client_key().to_owned());
                    upstream = Some(dev);
                    url_key
                }
            };
            let client = altogic::Client::new(&url, &key)?;
            let tokens = sign_up(&client, users, distinct).await?;
            let rss_users = rss_kib();
            let config = AuthConfig::new(&format!("http://{addr}"))?
                .with_key([0x42u8; 64])?
                // Warm for the whole run, however slow (callgrind): the
                // bench measures the cache-hit path. 1,000 users refreshed
                // once a minute would be ~0.01 % of the requests anyway.
                .with_cache_ttl(Duration::from_secs(3600))
                // The 64 MiB default holds ~60,000 dev-upstream users.
                .with_cache_max_bytes(4 << 30);
            let cookie_name = config.session_cookie_name();
            let auth = AuthLayer::new(config, client);
            let cookies: Vec<String> = tokens
                .iter()
                .map(|t| format!("{cookie_name}={t}"))
                .collect();
            let router = Router::new().route("/", get(authgate_page));
            let app = if variant == "authgate" {
                // `with_state(())` turns the handlers into routes once, as
                // `Router::into_make_service` does; a router wrapped by a
                // layer would otherwise redo it on every request.
                let app = auth.layer(router.with_state(()));
                warm(app.clone(), &cookies, distinct).await?;
                // Again: every session must now be a cache hit.
                warm(app.clone(), &cookies, distinct).await?;
                App::Wrapped(app)
            } else {
                let app = router.layer(auth.clone());
                warm(app.clone(), &cookies, distinct).await?;
                warm(app.clone(), &cookies, distinct).await?;
                App::Router(app)
            };
            let lookups = auth.resolver().upstream_lookups();
            if lookups != users as u64 {
                return Err(format!(
                    "warm-up made {lookups} upstream lookups for {users} sessions"
                )
                .into());
            }
            layer = Some(auth);
            (app, cookies, rss_users)
        }
        "axum-login" => {
            let directory: HashMap<u64, LoginUser> = (0..distinct)
                .map(|i| {
                    let mut auth_hash = [0u8; 16];
                    auth_hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    let user = LoginUser {
                        id: i as u64,
                        name: user_name(i),
                        auth_hash,
                    };
                    (i as u64, user)
                })
                .collect();
            let rss_users = rss_kib();
            let backend = Backend {
                users: Arc::new(directory),
            };
            let sessions = SessionManagerLayer::new(MemoryStore::default()).with_secure(false);
            let auth = AuthManagerLayerBuilder::new(backend, sessions).build();
            let app = Router::new()
                .route("/", get(login_page))
                .route("/__bench/login/{id}", post(login))
                .layer(auth);
            let mut cookies = Vec::with_capacity(users);
            for i in 0..users {
                let request = Request::post(format!("/__bench/login/{}", i % distinct))
                    .body(Body::empty())
                    .unwrap_or_else(|_| unreachable!("a valid request"));
                let response = app.clone().oneshot(request).await?;
                let cookie = response
                    .headers()
                    .get(header::SET_COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .filter(|_| response.status() == StatusCode::NO_CONTENT)
                    .ok_or_else(|| format!("login {i}: {}", response.status()))?;
                cookies.push(cookie.to_owned());
            }
            warm(app.clone(), &cookies, distinct).await?;
            (App::Router(app), cookies, rss_users)
        }
        other => return Err(format!("unknown variant {other:?}").into()),
    };
    let browser = args.get("cookie-header").unwrap_or("browser") != "session";
    write_cookies(args.get("cookies"), &cookies, browser)?;
    let rss_ready = rss_kib();
    // Count only what is served from now on (the warm-up ran the handler).
    PAGES.store(0, Ordering::Relaxed);
    LIMIT.store(limit, Ordering::Relaxed);
    drop(cookies);
    println!("variant {variant} sessions {users} distinct_users {distinct}");
    println!(
        "rss_kib users {rss_users} ready {rss_ready} (sessions prepared in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!("ready");
    std::io::stdout().flush()?;

    serve(listener, app).await?;

    let lookups = layer
        .as_ref()
        .map_or(0, |l| l.resolver().upstream_lookups());
    let calls = upstream
        .as_ref()
        .map_or("n/a".to_owned(), |u| u.upstream_calls().to_string());
    println!(
        "served pages {} upstream_lookups {lookups} in_process_upstream_calls {calls} rss_kib {}",
        PAGES.load(Ordering::Relaxed),
        rss_kib()
    );
    std::io::stdout().flush()?;
    // Skip tearing down the runtime, the caches and the dev upstream: a
    // callgrind run then ends right after the last request.
    std::process::exit(0)
}
