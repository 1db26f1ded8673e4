//! Fault injection against the user lookup (SECURITY.md R1, R2, R3, R5, R9,
//! T-E1, T-F1, T-H1).
//!
//! A raw-TCP fault server on `127.0.0.1:0` speaks Altogic's user lookup
//! (`GET /_api/rest/v1/auth/user` with `X-Client-Key` and `Session`) and can
//! be switched between behaviours: a valid user, delays, hangs, closed and
//! reset connections, a status zoo, garbage JSON, redirects, huge bodies and
//! a slow drip. A real `authgate::altogic::Client` points at it, and a small
//! axum app behind `AuthLayer` is driven in-process with `oneshot`.
//!
//! Stale-while-error (R2) is also tested on a paused clock with a scripted
//! `Upstream` whose transient errors are real ones, captured from the fault
//! server beforehand on another runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authgate::upstream::{
    BoxFuture, CallbackOutcome, CallbackParams, Capabilities, FlowRecord, Lookup, Session,
    SessionToken, SignInRedirect, SignInStart, SignOutOutcome, SignOutScope, Upstream, User, Valid,
};
use authgate::{
    Auth, AuthConfig, AuthLayer, AuthService, AuthState, CurrentUser, ErrorKind, altogic,
};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use cookie::{Cookie, SameSite};
use http::header::{ACCEPT, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use rand::Rng as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt as _;

const USER_PATH: &str = "/_api/rest/v1/auth/user";
const CLIENT_KEY: &str = "k";
const TOKEN: &str = "tok-1";
const COOKIE_NAME: &str = "authgate";
const USER_JSON: &str = r#"{"_id":"u1","email":"ada@example.test","name":"Ada"}"#;
/// The altogic client's total timeout in these tests.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(500);
/// How long any single request may take: the upstream timeout + 1 s.
const GUARD: Duration = Duration::from_millis(1500);

/// The tests run one at a time: on a small CI machine, T-F1's thousand
/// requests, the 10 MB bodies or a reqwest client being built (it loads the
/// TLS roots) would otherwise starve another test's 500 ms upstream timeout.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The fault server (R9)
// ---------------------------------------------------------------------------

/// What the fault server does once it has read a request.
#[derive(Clone, Debug)]
enum Reply {
    /// 200 with [`USER_JSON`].
    User,
    /// 200 with a user whose `_id` is `user-<Session header>` (T-F1).
    UserFromSession,
    /// A complete answer with `Content-Length`.
    Http {
        status: u16,
        content_type: Option<&'static str>,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// Reads the request, never writes, waits for the client to go away.
    Hang,
    /// Accepts the connection and closes it without reading (FIN).
    Close,
    /// Reads the request, then resets the connection (linger 0: RST).
    Reset,
    /// Writes the status line and headers of a valid answer, then stalls.
    HeadersThenStall,
    /// `Content-Length: 100`, 10 bytes, close.
    ShortBody,
    /// A valid user, one byte per second.
    Drip,
    /// 10 MB of otherwise valid user JSON.
    Huge { chunked: bool },
}

#[derive(Clone, Copy, Debug)]
enum Delay {
    None,
    Fixed(u64),
    Random(u64, u64),
}

#[derive(Clone, Debug)]
struct Plan {
    delay: Delay,
    reply: Reply,
}

impl Plan {
    fn new(reply: Reply) -> Self {
        Self {
            delay: Delay::None,
            reply,
        }
    }

    fn after_ms(mut self, ms: u64) -> Self {
        self.delay = Delay::Fixed(ms);
        self
    }

    fn random_delay_ms(mut self, low: u64, high: u64) -> Self {
        self.delay = Delay::Random(low, high);
        self
    }
}

fn user() -> Plan {
    Plan::new(Reply::User)
}

fn answer(status: u16, content_type: Option<&'static str>, body: &str) -> Plan {
    Plan::new(Reply::Http {
        status,
        content_type,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    })
}

fn json(status: u16, body: &str) -> Plan {
    answer(status, Some("application/json"), body)
}

/// Altogic's wire error: `{"errors":[{"origin","code","message"}]}`.
fn errors(status: u16, code: &str) -> Plan {
    json(
        status,
        &format!(
            r#"{{"errors":[{{"origin":"session_token_error","code":"{code}","message":"The session token is not valid"}}]}}"#
        ),
    )
}

fn html(status: u16) -> Plan {
    answer(
        status,
        Some("text/html; charset=utf-8"),
        "<!doctype html><html><body><h1>Nope</h1><p>invalid_session_token</p></body></html>",
    )
}

fn with_header(mut plan: Plan, name: &'static str, value: &str) -> Plan {
    if let Reply::Http { headers, .. } = &mut plan.reply {
        headers.push((name, value.to_owned()));
    }
    plan
}

/// Counters kept by the fault server.
#[derive(Debug, Default)]
struct Stats {
    /// Accepted connections: every upstream attempt opens one (the server
    /// always closes after answering).
    connections: AtomicU64,
    /// Requests read.
    requests: AtomicU64,
    /// Requests that were not Altogic's user lookup as UPSTREAMS.md §1
    /// describes it (method, path, client key, session header, no cookie).
    protocol_errors: AtomicU64,
    in_flight: AtomicU64,
    high_water: AtomicU64,
}

struct InFlight(Arc<Stats>);

impl InFlight {
    fn enter(stats: &Arc<Stats>) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.high_water.fetch_max(now, Ordering::SeqCst);
        Self(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct FaultServer {
    url: String,
    plan: Arc<Mutex<Plan>>,
    stats: Arc<Stats>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultServer")
            .field("url", &self.url)
            .finish()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultServer {
    async fn start(plan: Plan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let plan = Arc::new(Mutex::new(plan));
        let stats = Arc::new(Stats::default());
        let accept = tokio::spawn({
            let plan = plan.clone();
            let stats = stats.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    stats.connections.fetch_add(1, Ordering::SeqCst);
                    let plan = plan.lock().unwrap().clone();
                    tokio::spawn(serve(stream, plan, stats.clone()));
                }
            }
        });
        Self {
            url,
            plan,
            stats,
            accept,
        }
    }

    fn set(&self, plan: Plan) {
        *self.plan.lock().unwrap() = plan;
    }

    /// Upstream attempts so far.
    fn calls(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    fn high_water(&self) -> u64 {
        self.stats.high_water.load(Ordering::SeqCst)
    }

    fn protocol_errors(&self) -> u64 {
        self.stats.protocol_errors.load(Ordering::SeqCst)
    }

    fn client(&self, timeout: Duration) -> altogic::Client {
        client_for(&self.url, timeout)
    }
}

fn client_for(url: &str, timeout: Duration) -> altogic::Client {
    altogic::Client::builder(url, CLIENT_KEY)
        .with_timeout(timeout)
        .build()
        .unwrap()
}

/// A URL on which nothing listens: bind a port, read it, drop the listener.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_user_lookup(&self) -> bool {
        self.method == "GET"
            && self.path == USER_PATH
            && self.header("x-client-key") == Some(CLIENT_KEY)
            && self.header("session").is_some_and(|s| !s.is_empty())
            && self.header("cookie").is_none()
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Head {
        method,
        path,
        headers,
    })
}

async fn wait_for_eof(stream: &mut TcpStream) {
    let mut sink = [0u8; 256];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

fn head_bytes(
    status: u16,
    content_type: Option<&str>,
    headers: &[(&str, String)],
    length: Option<usize>,
) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Whatever");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    match length {
        Some(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: Option<&str>,
    headers: &[(&str, String)],
    body: &[u8],
) {
    let head = head_bytes(status, content_type, headers, Some(body.len()));
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

async fn serve(mut stream: TcpStream, plan: Plan, stats: Arc<Stats>) {
    if matches!(plan.reply, Reply::Close) {
        return;
    }
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if !head.is_user_lookup() {
        stats.protocol_errors.fetch_add(1, Ordering::SeqCst);
    }
    let _in_flight = InFlight::enter(&stats);
    let delay = match plan.delay {
        Delay::None => 0,
        Delay::Fixed(ms) => ms,
        Delay::Random(low, high) => rand::thread_rng().gen_range(low..=high),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    const JSON: Option<&str> = Some("application/json");
    match plan.reply {
        Reply::User => respond(&mut stream, 200, JSON, &[], USER_JSON.as_bytes()).await,
        Reply::UserFromSession => {
            let id = format!("user-{}", head.header("session").unwrap_or_default());
            let body =
                serde_json::json!({"_id": id, "email": format!("{id}@example.test"), "name": id});
            respond(&mut stream, 200, JSON, &[], body.to_string().as_bytes()).await;
        }
        Reply::Http {
            status,
            content_type,
            headers,
            body,
        } => respond(&mut stream, status, content_type, &headers, &body).await,
        Reply::Hang => wait_for_eof(&mut stream).await,
        Reply::Close => {}
        Reply::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Reply::HeadersThenStall => {
            let head = head_bytes(200, JSON, &[], Some(USER_JSON.len()));
            let _ = stream.write_all(head.as_bytes()).await;
            wait_for_eof(&mut stream).await;
        }
        Reply::ShortBody => {
            let head = head_bytes(200, JSON, &[], Some(100));
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&USER_JSON.as_bytes()[..10]).await;
            let _ = stream.shutdown().await;
        }
        Reply::Drip => {
            let head = head_bytes(200, JSON, &[], Some(USER_JSON.len()));
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for byte in USER_JSON.as_bytes() {
                if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Reply::Huge { chunked } => {
            // Valid JSON if read to the end: only the body cap can refuse it.
            const TOTAL: usize = 10 * 1024 * 1024;
            let prefix = br#"{"_id":"u1","email":"ada@example.test","pad":""#;
            let suffix = br#""}"#;
            let pad = TOTAL - prefix.len() - suffix.len();
            let length = (!chunked).then_some(TOTAL);
            let head = head_bytes(200, JSON, &[], length);
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b'x'; 64 * 1024];
            let mut pieces: Vec<&[u8]> = vec![prefix];
            pieces.extend(std::iter::repeat_n(&block[..], pad / block.len()));
            pieces.push(&block[..pad % block.len()]);
            pieces.push(suffix);
            for piece in pieces {
                let written = if chunked {
                    let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                    framed.extend_from_slice(piece);
                    framed.extend_from_slice(b"\r\n");
                    stream.write_all(&framed).await
                } else {
                    stream.write_all(piece).await
                };
                if written.is_err() {
                    return;
                }
            }
            if chunked {
                let _ = stream.write_all(b"0\r\n\r\n").await;
            }
            let _ = stream.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------
// The app behind the layer
// ---------------------------------------------------------------------------

type App = AuthService<Router>;

fn config() -> AuthConfig {
    AuthConfig::new("http://127.0.0.1:3000").unwrap() // allow-fixed-port: an origin string, nothing binds it
}

async fn account(user: CurrentUser) -> String {
    user.id.clone()
}

async fn maybe(user: Option<CurrentUser>) -> String {
    match user {
        Some(user) => format!("signed in as {}", user.id),
        None => "signed out".to_owned(),
    }
}

async fn state(auth: Auth) -> String {
    match auth.state().await {
        AuthState::SignedIn { user, stale: false } => format!("fresh {}", user.id),
        AuthState::SignedIn { user, stale: true } => format!("stale {}", user.id),
        AuthState::Anonymous => "anonymous".to_owned(),
        AuthState::Unavailable => "unavailable".to_owned(),
        other => format!("{other:?}"),
    }
}

fn app(config: AuthConfig, upstream: impl Upstream) -> (App, AuthLayer) {
    // `RUST_LOG=authgate=debug` shows the lookup failures.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let layer = AuthLayer::new(config, upstream);
    let router = Router::new()
        .route("/account", get(account))
        .route("/maybe", get(maybe))
        .route("/state", get(state));
    (layer.layer(router), layer)
}

/// What a response showed.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    location: Option<String>,
    retry_after: Option<String>,
    /// Every `Set-Cookie` for the session cookie, parsed.
    session_cookies: Vec<Cookie<'static>>,
    body: String,
}

fn page(method: &str, path: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(ACCEPT, "text/html,application/xhtml+xml");
    if let Some(token) = token {
        request = request.header(COOKIE, format!("{COOKIE_NAME}={token}"));
    }
    request.body(Body::empty()).unwrap()
}

async fn send(app: &App, request: Request<Body>) -> Seen {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let header = |name: http::header::HeaderName| -> Option<String> {
        let value = parts.headers.get(name)?;
        Some(value.to_str().unwrap().to_owned())
    };
    let (location, retry_after) = (header(LOCATION), header(RETRY_AFTER));
    let session_cookies = parts
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .filter(|c| c.name() == COOKIE_NAME)
        .collect();
    let status = parts.status;
    let bytes = body.collect().await.unwrap().to_bytes();
    Seen {
        status,
        location,
        retry_after,
        session_cookies,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get_page(app: &App, path: &str, token: &str) -> Seen {
    send(app, page("GET", path, Some(token))).await
}

/// Like [`get_page`], failing if the answer takes longer than [`GUARD`].
async fn guarded(app: &App, path: &str, token: &str) -> Seen {
    tokio::time::timeout(GUARD, get_page(app, path, token))
        .await
        .unwrap_or_else(|_| panic!("GET {path} did not complete within the upstream timeout + 1 s"))
}

/// The response deletes the session cookie, with mirrored attributes.
fn assert_deleted(seen: &Seen, context: &str) {
    assert_eq!(
        seen.session_cookies.len(),
        1,
        "{context}: expected one deletion of the session cookie, got {seen:?}"
    );
    let cookie = &seen.session_cookies[0];
    assert_eq!(cookie.value(), "", "{context}: {cookie}");
    assert_eq!(
        cookie.max_age(),
        Some(cookie::time::Duration::ZERO),
        "{context}: {cookie}"
    );
    assert_eq!(cookie.path(), Some("/"), "{context}: {cookie}");
    assert_eq!(cookie.http_only(), Some(true), "{context}: {cookie}");
    assert_eq!(
        cookie.same_site(),
        Some(SameSite::Lax),
        "{context}: {cookie}"
    );
}

/// The response leaves the session cookie alone.
fn assert_kept(seen: &Seen, context: &str) {
    assert!(
        seen.session_cookies.is_empty(),
        "{context}: the session cookie must be kept, got {:?}",
        seen.session_cookies
    );
}

/// A `CurrentUser` route during an outage: 503 + Retry-After, no redirect,
/// cookie kept.
fn assert_unavailable(seen: &Seen, context: &str) {
    assert_eq!(
        seen.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{context}: {seen:?}"
    );
    let retry = seen
        .retry_after
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry.is_some_and(|s| s > 0),
        "{context}: Retry-After missing: {seen:?}"
    );
    assert!(
        seen.location.is_none(),
        "{context}: an outage must never redirect: {seen:?}"
    );
    assert_kept(seen, context);
}

/// A `CurrentUser` navigation whose session ended: 303 to the sign-in
/// page, which is told why (`notice=session-ended`).
fn assert_sign_in_redirect(seen: &Seen, return_to: &str, context: &str) {
    assert_eq!(seen.status, StatusCode::SEE_OTHER, "{context}: {seen:?}");
    let expected = format!(
        "/signin?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("return_to", return_to)
            .append_pair("notice", "session-ended")
            .finish()
    );
    assert_eq!(
        seen.location.as_deref(),
        Some(expected.as_str()),
        "{context}"
    );
}

fn assert_user(seen: &Seen, id: &str, context: &str) {
    assert_eq!(seen.status, StatusCode::OK, "{context}: {seen:?}");
    assert_eq!(seen.body, id, "{context}");
    assert_kept(seen, context);
}

// ---------------------------------------------------------------------------
// R1: the classification table
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// 200 with the user.
    Valid,
    /// Definitive invalid: sign-in redirect and deletion.
    Invalid,
    /// Transient or ambiguous: 503 + Retry-After, cookie kept.
    Transient,
}

enum Setup {
    Plan(Plan),
    Refused,
    /// A 302 to another local server that would answer with a valid user.
    RedirectToValid,
}

struct Row {
    name: &'static str,
    setup: Setup,
    class: Class,
}

fn row(name: &'static str, class: Class, plan: Plan) -> Row {
    Row {
        name,
        setup: Setup::Plan(plan),
        class,
    }
}

fn r1_rows() -> Vec<Row> {
    use Class::{Invalid, Transient, Valid};
    vec![
        row("200 valid user", Valid, user()),
        row("200 valid user after 100 ms", Valid, user().after_ms(100)),
        // Definitive: a 4xx whose errors carry a session-gone code.
        row(
            "401 invalid_session_token",
            Invalid,
            errors(401, "invalid_session_token"),
        ),
        row(
            "400 missing_session_token",
            Invalid,
            errors(400, "missing_session_token"),
        ),
        row(
            "403 invalid_session_token",
            Invalid,
            errors(403, "invalid_session_token"),
        ),
        row(
            "401 invalid_session_token as a single error object",
            Invalid,
            json(
                401,
                r#"{"errors":{"origin":"session_token_error","code":"invalid_session_token","message":"x"}}"#,
            ),
        ),
        row(
            "401 bare error entry without an errors key",
            Invalid,
            json(
                401,
                r#"{"origin":"session_token_error","code":"invalid_session_token","message":"x"}"#,
            ),
        ),
        // Connection-level faults.
        Row {
            name: "connection refused",
            setup: Setup::Refused,
            class: Transient,
        },
        row("accept then close", Transient, Plan::new(Reply::Close)),
        row("reset (RST)", Transient, Plan::new(Reply::Reset)),
        row("hang forever", Transient, Plan::new(Reply::Hang)),
        row(
            "headers then stall",
            Transient,
            Plan::new(Reply::HeadersThenStall),
        ),
        row("short body", Transient, Plan::new(Reply::ShortBody)),
        row("slow drip, 1 byte/s", Transient, Plan::new(Reply::Drip)),
        row("delay past the timeout", Transient, user().after_ms(900)),
        // Status zoo.
        row("500", Transient, errors(500, "internal_error")),
        row("501", Transient, json(501, "{}")),
        row("502", Transient, html(502)),
        row(
            "503 with Retry-After",
            Transient,
            with_header(html(503), "Retry-After", "30"),
        ),
        row("504", Transient, html(504)),
        row("520 (CDN)", Transient, html(520)),
        row(
            "429",
            Transient,
            with_header(errors(429, "rate_limit"), "Retry-After", "1"),
        ),
        row("408", Transient, answer(408, None, "")),
        row("401 without body", Transient, answer(401, None, "")),
        row(
            "401 with an unknown code",
            Transient,
            errors(401, "not_authorized"),
        ),
        row("401 HTML (WAF)", Transient, html(401)),
        row("403 without body", Transient, answer(403, None, "")),
        row(
            "400 with another code",
            Transient,
            errors(400, "validation_error"),
        ),
        row("404 HTML", Transient, html(404)),
        row("405", Transient, answer(405, None, "")),
        row("407", Transient, answer(407, None, "")),
        row(
            "500 with invalid_session_token",
            Transient,
            errors(500, "invalid_session_token"),
        ),
        row(
            "200 with an errors body",
            Transient,
            errors(200, "invalid_session_token"),
        ),
        Row {
            name: "302 to a server that would answer valid",
            setup: Setup::RedirectToValid,
            class: Transient,
        },
        // Garbage bodies.
        row("200 HTML", Transient, html(200)),
        row("200 empty body", Transient, json(200, "")),
        row("200 {}", Transient, json(200, "{}")),
        row("200 []", Transient, json(200, "[]")),
        row("200 null", Transient, json(200, "null")),
        row(
            r#"200 {"_id":null}"#,
            Transient,
            json(200, r#"{"_id":null}"#),
        ),
        row(r#"200 {"_id":""}"#, Transient, json(200, r#"{"_id":""}"#)),
        row(r#"200 {"_id":42}"#, Transient, json(200, r#"{"_id":42}"#)),
        row(
            r#"200 truncated {"_id":"u1""#,
            Transient,
            json(200, r#"{"_id":"u1""#),
        ),
        row(
            "200 BOM prefix",
            Transient,
            json(200, &format!("\u{feff}{USER_JSON}")),
        ),
        row(
            "200 10 MB with Content-Length",
            Transient,
            Plan::new(Reply::Huge { chunked: false }),
        ),
        row(
            "200 10 MB chunked",
            Transient,
            Plan::new(Reply::Huge { chunked: true }),
        ),
    ]
}

/// One row, ready to run: its servers and two fresh layers over one client.
struct Prepared {
    name: &'static str,
    class: Class,
    server: Option<FaultServer>,
    target: Option<FaultServer>,
    first: App,
    first_layer: AuthLayer,
    second: App,
    second_layer: AuthLayer,
}

/// Starts a row's servers and builds its client and layers. Building a
/// reqwest client loads the TLS roots (CPU-bound, hundreds of ms in a debug
/// build), so every row is prepared before any request starts its 500 ms
/// upstream timeout.
async fn prepare_row(row: Row) -> Prepared {
    let (server, target) = match row.setup {
        Setup::Plan(plan) => (Some(FaultServer::start(plan).await), None),
        Setup::Refused => (None, None),
        Setup::RedirectToValid => {
            let target = FaultServer::start(user()).await;
            let location = format!("{}{USER_PATH}", target.url);
            let plan = with_header(answer(302, None, ""), "Location", &location);
            (Some(FaultServer::start(plan).await), Some(target))
        }
    };
    let url = server.as_ref().map_or_else(refused_url, |s| s.url.clone());
    let client = client_for(&url, UPSTREAM_TIMEOUT);
    let (first, first_layer) = app(config(), client.clone());
    let (second, second_layer) = app(config(), client);
    Prepared {
        name: row.name,
        class: row.class,
        server,
        target,
        first,
        first_layer,
        second,
        second_layer,
    }
}

/// Runs one row on two fresh layers over one fault server: `/account` then
/// `/state` on the first, `/maybe` on the second (so `/maybe` also drives
/// its own upstream call).
async fn run_row(row: Prepared) {
    let Prepared {
        name,
        class,
        server,
        target,
        first,
        first_layer,
        second,
        second_layer,
    } = row;
    let account = guarded(&first, "/account", TOKEN).await;
    let state = guarded(&first, "/state", TOKEN).await;
    let maybe = guarded(&second, "/maybe", TOKEN).await;

    match class {
        Class::Valid => {
            assert_user(&account, "u1", name);
            assert_eq!(state.body, "fresh u1", "{name}");
            assert_eq!(maybe.body, "signed in as u1", "{name}");
            assert_kept(&state, name);
            assert_kept(&maybe, name);
        }
        Class::Invalid => {
            assert_sign_in_redirect(&account, "/account", name);
            assert_deleted(&account, name);
            assert_eq!(state.body, "anonymous", "{name}");
            assert_deleted(&state, name);
            assert_eq!(maybe.status, StatusCode::OK, "{name}");
            assert_eq!(maybe.body, "signed out", "{name}");
            assert_deleted(&maybe, name);
        }
        Class::Transient => {
            assert_unavailable(&account, name);
            assert_eq!(state.body, "unavailable", "{name}");
            assert_kept(&state, name);
            assert_eq!(maybe.status, StatusCode::OK, "{name}");
            assert_eq!(maybe.body, "signed out", "{name}: renders as signed out");
            assert_kept(&maybe, name);
        }
    }
    // One lookup per layer: `/state` reused the first answer (cache,
    // negative cache or failure cooldown).
    assert_eq!(first_layer.resolver().upstream_lookups(), 1, "{name}");
    assert_eq!(second_layer.resolver().upstream_lookups(), 1, "{name}");
    if let Some(server) = &server {
        assert_eq!(server.calls(), 2, "{name}: upstream attempts");
        assert_eq!(
            server.protocol_errors(),
            0,
            "{name}: not Altogic's user lookup"
        );
    }
    if let Some(target) = &target {
        assert_eq!(target.calls(), 0, "{name}: the redirect was followed");
    }
}

/// R1 (table-driven) with the R9 fault toolkit and T-E1: only a definitive
/// invalid answer redirects to sign-in and deletes the cookie; every
/// transient or ambiguous outcome answers 503 + Retry-After, keeps the
/// cookie, and `Option<CurrentUser>` renders signed out. Hang and drip rows
/// finish within the upstream timeout + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_only_a_definitive_invalid_answer_signs_out_every_other_fault_answers_503() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let rows = r1_rows();
    let count = rows.len();
    let mut prepared = Vec::new();
    for row in rows {
        prepared.push(prepare_row(row).await);
    }
    let ready = started.elapsed();
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|row| (row.name, tokio::spawn(run_row(row))))
        .collect();
    let mut failures = Vec::new();
    for (name, task) in tasks {
        if let Err(err) = task.await {
            let message = match err.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
                Err(err) => err.to_string(),
            };
            failures.push(format!("[{name}] {message}"));
        }
    }
    eprintln!(
        "R1 table: {count} fault rows, {} failed, in {:?} ({ready:?} to build the clients)",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "R1 rows failed:\n{}",
        failures.join("\n")
    );
}

/// R1 extra: an upstream base URL that lands on a proxy answering 404 HTML
/// to everything signs nobody out.
#[tokio::test]
async fn r1_a_proxy_answering_404_to_everything_deletes_no_cookie() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(html(404)).await;
    let (app, layer) = app(config(), server.client(UPSTREAM_TIMEOUT));
    let mut deletions = 0;
    let mut requests = 0;
    for i in 0..10 {
        let token = format!("tok-{i}");
        for path in ["/account", "/maybe", "/state"] {
            let seen = guarded(&app, path, &token).await;
            requests += 1;
            deletions += seen.session_cookies.len();
            assert!(seen.location.is_none(), "{path}: {seen:?}");
            if path == "/account" {
                assert_unavailable(&seen, path);
            }
        }
        // An API call (no text/html) is a 503 too, not a 401.
        let api = Request::get("/account")
            .header(COOKIE, format!("{COOKIE_NAME}={token}"))
            .header(ACCEPT, "application/json")
            .body(Body::empty())
            .unwrap();
        let seen = send(&app, api).await;
        requests += 1;
        deletions += seen.session_cookies.len();
        assert_unavailable(&seen, "API call");
    }
    eprintln!(
        "404 proxy: {requests} requests, 10 tokens, {} upstream calls, {deletions} deletions",
        server.calls()
    );
    assert_eq!(deletions, 0);
    assert_eq!(
        server.calls(),
        10,
        "one call per token, then the failure cooldown"
    );
    assert_eq!(layer.resolver().upstream_lookups(), 10);
}

/// R1 "wrong content type" row: a 200 whose body is a valid user object but
/// whose `Content-Type` is `text/html` must be transient, not a user.
#[tokio::test]
async fn r1_user_json_served_as_text_html_is_transient() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(answer(200, Some("text/html"), USER_JSON)).await;
    let (app, _layer) = app(config(), server.client(UPSTREAM_TIMEOUT));
    let seen = guarded(&app, "/account", TOKEN).await;
    assert_unavailable(&seen, "200 text/html with user JSON");
}

/// R9 "duplicate keys" garbage: a user object with two `_id` keys is not a
/// user (T-E1 strict deserialization).
#[tokio::test]
async fn r1_user_json_with_a_duplicate_id_is_transient() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(json(
        200,
        r#"{"_id":"u1","_id":"u2","email":"ada@example.test"}"#,
    ))
    .await;
    let (app, _layer) = app(config(), server.client(UPSTREAM_TIMEOUT));
    let seen = guarded(&app, "/account", TOKEN).await;
    assert_unavailable(&seen, "duplicate _id");
}

/// R5: `ClientBuilder::with_http_client` says "the timeouts set here still
/// apply per request", so a shared reqwest client without a timeout of its
/// own must still be bounded by `with_timeout` against a hanging upstream.
#[tokio::test]
async fn r5_with_http_client_still_applies_the_configured_timeout() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(Plan::new(Reply::Hang)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let client = altogic::Client::builder(&server.url, CLIENT_KEY)
        .with_http_client(http)
        .with_timeout(UPSTREAM_TIMEOUT)
        .build()
        .unwrap();
    let (app, _layer) = app(config(), client);
    let seen = guarded(&app, "/account", TOKEN).await;
    assert_unavailable(&seen, "hanging upstream behind a shared reqwest client");
}

// ---------------------------------------------------------------------------
// R2: stale-while-error
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Valid,
    Invalid,
    Transient,
}

/// An `Upstream` whose lookup answer is set by the test. Its transient
/// errors are real `Status(503)` errors from the altogic client (an
/// `authgate::Error` has no public constructor), captured beforehand.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<Script>>,
    errors: Arc<Mutex<Vec<authgate::Error>>>,
    calls: Arc<AtomicU64>,
}

impl Scripted {
    fn new(errors: Vec<authgate::Error>) -> Self {
        Self {
            script: Arc::new(Mutex::new(Script::Valid)),
            errors: Arc::new(Mutex::new(errors)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn local_error(&self) -> authgate::Error {
        authgate::Error::invalid_input("not used by these tests")
    }
}

fn ada() -> User {
    let mut user = User::new("u1", serde_json::from_str(USER_JSON).unwrap());
    user.email = Some("ada@example.test".to_owned());
    user.name = Some("Ada".to_owned());
    user
}

impl Upstream for Scripted {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }

    fn lookup<'a>(
        &'a self,
        _session: &'a Session,
    ) -> BoxFuture<'a, Result<Lookup, authgate::Error>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let script = *self.script.lock().unwrap();
            match script {
                Script::Valid => Ok(Lookup::Valid(Valid::new(ada()))),
                Script::Invalid => Ok(Lookup::Invalid),
                Script::Transient => Err(self
                    .errors
                    .lock()
                    .unwrap()
                    .pop()
                    .expect("not enough captured 503 errors")),
            }
        })
    }

    fn start_sign_in<'a>(
        &'a self,
        _start: SignInStart<'a>,
    ) -> BoxFuture<'a, Result<SignInRedirect, authgate::Error>> {
        Box::pin(async move { Err(self.local_error()) })
    }

    fn complete_callback<'a>(
        &'a self,
        _params: &'a CallbackParams,
        _flow: Option<&'a FlowRecord>,
    ) -> BoxFuture<'a, Result<CallbackOutcome, authgate::Error>> {
        // Not used by these tests.
        Box::pin(async move { Err(self.local_error()) })
    }

    fn sign_out<'a>(
        &'a self,
        _session: &'a Session,
        _scope: SignOutScope,
        _after: &'a url::Url,
    ) -> BoxFuture<'a, Result<SignOutOutcome, authgate::Error>> {
        Box::pin(async { Ok(SignOutOutcome::Done) })
    }
}

/// Real 503 errors from the altogic client against the fault server, made
/// on a runtime of their own so the test's paused clock never meets I/O.
fn captured_503s(count: usize) -> Vec<authgate::Error> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = FaultServer::start(with_header(html(503), "Retry-After", "30")).await;
            let client = server.client(Duration::from_secs(5));
            let token = SessionToken::new(TOKEN).unwrap();
            let mut errors = Vec::new();
            for _ in 0..count {
                let err = client.get_user(&token).await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    ErrorKind::Status(StatusCode::SERVICE_UNAVAILABLE)
                );
                assert!(err.is_transient());
                errors.push(err);
            }
            errors
        })
    })
    .join()
    .unwrap()
}

/// A paused clock with T=0 at creation; `at(t)` advances to T=t seconds.
struct Clock(Instant);

impl Clock {
    fn start() -> Self {
        Self(Instant::now())
    }

    async fn at(&self, seconds: u64) {
        let target = self.0 + Duration::from_secs(seconds);
        let now = Instant::now();
        assert!(target >= now, "the clock only moves forward");
        tokio::time::advance(target - now).await;
    }
}

/// TTL 30 s, max-stale 300 s (past the TTL), default 2 s failure cooldown.
fn r2_config() -> AuthConfig {
    config()
        .with_cache_ttl(Duration::from_secs(30))
        .with_stale_window(Duration::from_secs(300))
}

/// Warms the cache at T=0.
async fn warm(app: &App, upstream: &Scripted) {
    upstream.set(Script::Valid);
    let seen = get_page(app, "/state", TOKEN).await;
    assert_eq!(seen.body, "fresh u1");
    assert_eq!(upstream.calls(), 1);
}

/// R2 tests 1 and 2 on a paused clock: at T=31 a 503 serves the stale user
/// with one upstream attempt and the cookie intact; past the stale window
/// `CurrentUser` answers 503 + Retry-After, cookie still intact.
#[tokio::test(start_paused = true)]
async fn r2_1_and_2_upstream_503_after_ttl_serves_stale_then_503_past_the_window() {
    let _serial = SERIAL.lock().await;
    let upstream = Scripted::new(captured_503s(3));
    let (app, _layer) = app(r2_config(), upstream.clone());
    let clock = Clock::start();
    warm(&app, &upstream).await;

    // R2.1: T=31, upstream 503.
    clock.at(31).await;
    upstream.set(Script::Transient);
    let seen = get_page(&app, "/account", TOKEN).await;
    assert_user(&seen, "u1", "T=31 stale");
    for path in ["/state", "/state", "/account", "/maybe"] {
        let seen = get_page(&app, path, TOKEN).await;
        assert_kept(&seen, path);
        assert_eq!(seen.status, StatusCode::OK);
    }
    assert_eq!(get_page(&app, "/state", TOKEN).await.body, "stale u1");
    assert_eq!(upstream.calls(), 2, "one upstream attempt at T=31");

    // T=301: past the TTL by less than the window (measured from the TTL,
    // as `with_stale_window` documents): still stale, one more attempt.
    clock.at(301).await;
    let seen = get_page(&app, "/state", TOKEN).await;
    assert_eq!(seen.body, "stale u1");
    assert_kept(&seen, "T=301");
    assert_eq!(upstream.calls(), 3);

    // R2.2: T=331, past TTL + window, still failing.
    clock.at(331).await;
    let seen = get_page(&app, "/account", TOKEN).await;
    assert_unavailable(&seen, "T=331");
    assert_eq!(get_page(&app, "/state", TOKEN).await.body, "unavailable");
    let seen = get_page(&app, "/maybe", TOKEN).await;
    assert_eq!(seen.body, "signed out");
    assert_kept(&seen, "T=331 /maybe");
    assert_eq!(upstream.calls(), 4);
}

/// R2 test 3 on a paused clock: the upstream is back at T=120, the next
/// request refreshes and `stale` is cleared; the refreshed entry is fresh
/// again for a TTL.
#[tokio::test(start_paused = true)]
async fn r2_3_upstream_back_refreshes_and_clears_stale() {
    let _serial = SERIAL.lock().await;
    let upstream = Scripted::new(captured_503s(1));
    let (app, _layer) = app(r2_config(), upstream.clone());
    let clock = Clock::start();
    warm(&app, &upstream).await;

    clock.at(31).await;
    upstream.set(Script::Transient);
    assert_eq!(get_page(&app, "/state", TOKEN).await.body, "stale u1");
    assert_eq!(upstream.calls(), 2);

    clock.at(120).await;
    upstream.set(Script::Valid);
    let seen = get_page(&app, "/state", TOKEN).await;
    assert_eq!(seen.body, "fresh u1");
    assert_kept(&seen, "T=120");
    assert_eq!(upstream.calls(), 3);

    clock.at(121).await;
    assert_eq!(get_page(&app, "/state", TOKEN).await.body, "fresh u1");
    assert_user(&get_page(&app, "/account", TOKEN).await, "u1", "T=121");
    assert_eq!(upstream.calls(), 3, "served from the refreshed entry");
}

/// R2 test 4 on a paused clock: at T=31 a definitive invalid answer signs
/// out at once (sign-in redirect + deletion), no stale user; the negative
/// entry is not served past its TTL.
#[tokio::test(start_paused = true)]
async fn r2_4_definitive_invalid_after_ttl_redirects_to_sign_in_and_deletes() {
    let _serial = SERIAL.lock().await;
    let upstream = Scripted::new(Vec::new());
    let (app, _layer) = app(
        r2_config().with_negative_ttl(Duration::from_secs(10)),
        upstream.clone(),
    );
    let clock = Clock::start();
    warm(&app, &upstream).await;

    clock.at(31).await;
    upstream.set(Script::Invalid);
    let seen = get_page(&app, "/account", TOKEN).await;
    assert_sign_in_redirect(&seen, "/account", "T=31 invalid");
    assert_deleted(&seen, "T=31 invalid");
    let seen = get_page(&app, "/state", TOKEN).await;
    assert_eq!(seen.body, "anonymous");
    assert_deleted(&seen, "T=31 /state");
    let seen = get_page(&app, "/maybe", TOKEN).await;
    assert_eq!(seen.body, "signed out");
    assert_deleted(&seen, "T=31 /maybe");
    assert_eq!(upstream.calls(), 2, "the negative entry answers the others");

    // T=42: the negative entry (10 s) has expired; the upstream is asked
    // again.
    clock.at(42).await;
    upstream.set(Script::Valid);
    assert_eq!(get_page(&app, "/state", TOKEN).await.body, "fresh u1");
    assert_eq!(upstream.calls(), 3);
}

/// R2 test 5 on a paused clock: signed out at T=10, upstream down at T=31,
/// the old cookie replayed → no stale user for that token.
#[tokio::test(start_paused = true)]
async fn r2_5_a_signed_out_token_is_never_served_stale() {
    let _serial = SERIAL.lock().await;
    let upstream = Scripted::new(captured_503s(1));
    let (app, _layer) = app(r2_config(), upstream.clone());
    let clock = Clock::start();
    warm(&app, &upstream).await;

    clock.at(10).await;
    let mut sign_out = page("POST", "/auth/signout", Some(TOKEN));
    sign_out.headers_mut().insert(
        "sec-fetch-site",
        http::HeaderValue::from_static("same-origin"),
    );
    let seen = send(&app, sign_out).await;
    assert_eq!(seen.status, StatusCode::SEE_OTHER, "{seen:?}");
    assert_deleted(&seen, "sign-out");

    clock.at(31).await;
    upstream.set(Script::Transient);
    let seen = get_page(&app, "/account", TOKEN).await;
    assert_sign_in_redirect(&seen, "/account", "replayed after sign-out");
    assert_eq!(get_page(&app, "/state", TOKEN).await.body, "anonymous");
}

/// R2 tests 1–4 end to end over real HTTP (real time, small TTLs): after the
/// TTL a 503 serves the stale user; past the window `CurrentUser` answers
/// 503, cookie intact; the upstream back refreshes; a definitive invalid
/// answer after the TTL signs out.
#[tokio::test]
async fn r2_over_http_stale_then_unavailable_then_refreshed_then_signed_out() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(user()).await;
    let config = config()
        .with_cache_ttl(Duration::from_millis(200))
        .with_stale_window(Duration::from_millis(800))
        .with_failure_cooldown(Duration::ZERO);
    let (app, layer) = app(config, server.client(UPSTREAM_TIMEOUT));

    assert_user(&guarded(&app, "/account", TOKEN).await, "u1", "warm");
    let warmed = Instant::now();
    assert_eq!(server.calls(), 1);

    // R2.1: past the TTL (200 ms, up to 10 % less), upstream 503.
    tokio::time::sleep_until(warmed + Duration::from_millis(300)).await;
    server.set(with_header(html(503), "Retry-After", "30"));
    assert_user(&guarded(&app, "/account", TOKEN).await, "u1", "stale");
    assert_eq!(server.calls(), 2, "one upstream attempt");
    let seen = guarded(&app, "/state", TOKEN).await;
    assert_eq!(seen.body, "stale u1");
    assert_kept(&seen, "stale /state");
    assert_eq!(server.calls(), 3, "no cooldown: one attempt per request");

    // R2.2: past TTL + window (≤ 1000 ms after warming).
    tokio::time::sleep_until(warmed + Duration::from_millis(1300)).await;
    assert_unavailable(&guarded(&app, "/account", TOKEN).await, "past the window");
    assert_eq!(server.calls(), 4);

    // R2.3: the upstream is back.
    server.set(user());
    let seen = guarded(&app, "/state", TOKEN).await;
    assert_eq!(seen.body, "fresh u1");
    let refreshed = Instant::now();
    assert_eq!(server.calls(), 5);

    // R2.4: after the TTL the upstream says the session is invalid.
    tokio::time::sleep_until(refreshed + Duration::from_millis(300)).await;
    server.set(errors(401, "invalid_session_token"));
    let seen = guarded(&app, "/account", TOKEN).await;
    assert_sign_in_redirect(&seen, "/account", "invalid after TTL");
    assert_deleted(&seen, "invalid after TTL");
    assert_eq!(server.calls(), 6);
    assert_eq!(layer.resolver().upstream_lookups(), 6);
    assert_eq!(server.protocol_errors(), 0);
}

// ---------------------------------------------------------------------------
// R3: single flight; T-F1: no cross-user mix-ups
// ---------------------------------------------------------------------------

/// Fires `count` concurrent requests released together by a barrier; each
/// returns its token and what it saw.
async fn concurrent(app: &App, tokens: Vec<String>, path: &'static str) -> Vec<(String, Seen)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let app = app.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let seen =
                    tokio::time::timeout(Duration::from_secs(10), get_page(&app, path, &token))
                        .await
                        .expect("a concurrent request hung");
                (token, seen)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// R3 test 1: 100 concurrent requests, one token, upstream delay 200 ms →
/// one upstream call, every response shows the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_1_hundred_concurrent_requests_for_one_token_make_one_upstream_call() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(user().after_ms(200)).await;
    let (app, layer) = app(config(), server.client(UPSTREAM_TIMEOUT));
    let results = concurrent(&app, vec![TOKEN.to_owned(); 100], "/account").await;
    for (_, seen) in &results {
        assert_user(seen, "u1", "single flight");
    }
    eprintln!(
        "single flight: {} requests, {} upstream call(s)",
        results.len(),
        server.calls()
    );
    assert_eq!(server.calls(), 1);
    assert_eq!(layer.resolver().upstream_lookups(), 1);
}

/// R3 test 2: the same during a 503 → one call, all 503 + Retry-After, no
/// deletion; within the cooldown no new call; past it the error is not
/// remembered and the upstream is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_2_hundred_concurrent_requests_during_a_503_make_one_call_and_all_answer_503() {
    let _serial = SERIAL.lock().await;
    let server =
        FaultServer::start(with_header(html(503), "Retry-After", "30").after_ms(200)).await;
    let config = config().with_failure_cooldown(Duration::from_millis(300));
    let (app, layer) = app(config, server.client(UPSTREAM_TIMEOUT));
    let results = concurrent(&app, vec![TOKEN.to_owned(); 100], "/account").await;
    for (_, seen) in &results {
        assert_unavailable(seen, "single flight 503");
    }
    let failed_at = Instant::now();
    eprintln!(
        "single flight during a 503: {} requests, {} upstream call(s), all 503",
        results.len(),
        server.calls()
    );
    assert_eq!(server.calls(), 1);

    assert_unavailable(
        &guarded(&app, "/account", TOKEN).await,
        "within the cooldown",
    );
    assert_eq!(server.calls(), 1, "cooldown");

    tokio::time::sleep_until(failed_at + Duration::from_millis(450)).await;
    server.set(user());
    assert_user(
        &guarded(&app, "/account", TOKEN).await,
        "u1",
        "after the cooldown",
    );
    assert_eq!(server.calls(), 2);
    assert_eq!(layer.resolver().upstream_lookups(), 2);
}

/// R3 test 3: the request that started the lookup is cancelled after 50 ms
/// while two others wait (upstream delay 300 ms) → they still get the user,
/// one upstream call, and the result is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_3_a_cancelled_leader_does_not_fail_its_waiters() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(user().after_ms(300)).await;
    let (app, layer) = app(config(), server.client(UPSTREAM_TIMEOUT));
    let spawn = |app: &App| {
        let app = app.clone();
        tokio::spawn(async move { get_page(&app, "/account", TOKEN).await })
    };
    let leader = spawn(&app);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiters = [spawn(&app), spawn(&app)];
    tokio::time::sleep(Duration::from_millis(30)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for waiter in waiters {
        let seen = tokio::time::timeout(GUARD, waiter)
            .await
            .expect("a waiter hung after its leader was cancelled")
            .unwrap();
        assert_user(&seen, "u1", "waiter");
    }
    assert_eq!(server.calls(), 1);
    assert_user(&get_page(&app, "/account", TOKEN).await, "u1", "cached");
    eprintln!(
        "cancelled leader: 2 waiters served, {} upstream call(s)",
        server.calls()
    );
    assert_eq!(server.calls(), 1);
    assert_eq!(layer.resolver().upstream_lookups(), 1);
}

/// R3 test 4: the leader gets invalid JSON → every waiter gets 503 (cookie
/// kept), and nothing is poisoned: after the cooldown the next request
/// resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_4_invalid_json_for_the_leader_gives_waiters_503_and_poisons_nothing() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(json(200, r#"{"_id":"u1""#).after_ms(200)).await;
    let config = config().with_failure_cooldown(Duration::from_millis(200));
    let (app, _layer) = app(config, server.client(UPSTREAM_TIMEOUT));
    let results = concurrent(&app, vec![TOKEN.to_owned(); 20], "/account").await;
    for (_, seen) in &results {
        assert_unavailable(seen, "garbage for the leader");
    }
    assert_eq!(server.calls(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set(user());
    assert_user(
        &guarded(&app, "/account", TOKEN).await,
        "u1",
        "after garbage",
    );
    assert_eq!(server.calls(), 2);
}

/// T-F1 / R3 test 5: 50 distinct tokens × 20 concurrent requests, random
/// upstream delay 50–200 ms, each token a distinct user → every response
/// carries its own user, exactly 50 upstream calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t_f1_fifty_tokens_times_twenty_requests_each_get_their_own_user() {
    let _serial = SERIAL.lock().await;
    let server =
        FaultServer::start(Plan::new(Reply::UserFromSession).random_delay_ms(50, 200)).await;
    let (app, layer) = app(config(), server.client(UPSTREAM_TIMEOUT));
    let tokens: Vec<String> = (0..50)
        .flat_map(|i| std::iter::repeat_n(format!("tok-{i:02}"), 20))
        .collect();
    let results = concurrent(&app, tokens, "/account").await;
    let mut mixed = 0;
    for (token, seen) in &results {
        assert_eq!(seen.status, StatusCode::OK, "{token}: {seen:?}");
        if seen.body != format!("user-{token}") {
            mixed += 1;
        }
    }
    eprintln!(
        "T-F1: {} requests over 50 tokens, {} upstream calls, {mixed} responses with another user",
        results.len(),
        server.calls()
    );
    assert_eq!(mixed, 0);
    assert_eq!(server.calls(), 50);
    assert_eq!(layer.resolver().upstream_lookups(), 50);
    assert_eq!(server.protocol_errors(), 0);
}

// ---------------------------------------------------------------------------
// R5 / T-H1: the upstream concurrency cap
// ---------------------------------------------------------------------------

/// T-H1 / R5: with a cap of 4 lookups and a 100 ms queue timeout, 40
/// distinct tokens against a 1 s upstream → the upstream never sees more
/// than 4 at once, 4 requests get their user, the overflow gets a quick 503
/// (well before the upstream would answer), and nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t_h1_upstream_concurrency_cap_holds_and_overflow_gets_a_quick_503() {
    let _serial = SERIAL.lock().await;
    let server = FaultServer::start(Plan::new(Reply::UserFromSession).after_ms(1000)).await;
    let config = config().with_upstream_concurrency(4, Duration::from_millis(100));
    let (app, layer) = app(config, server.client(Duration::from_secs(3)));
    let barrier = Arc::new(tokio::sync::Barrier::new(40));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let token = format!("tok-{i:02}");
                barrier.wait().await;
                let started = Instant::now();
                let seen = tokio::time::timeout(
                    Duration::from_secs(5),
                    get_page(&app, "/account", &token),
                )
                .await
                .expect("hung");
                (token, seen, started.elapsed())
            })
        })
        .collect();
    let mut served = 0;
    let mut unavailable = 0;
    let mut slowest_503 = Duration::ZERO;
    for task in tasks {
        let (token, seen, elapsed) = task.await.unwrap();
        assert_kept(&seen, &token);
        match seen.status {
            StatusCode::OK => {
                assert_eq!(seen.body, format!("user-{token}"));
                served += 1;
            }
            _ => {
                assert_unavailable(&seen, &token);
                unavailable += 1;
                slowest_503 = slowest_503.max(elapsed);
            }
        }
    }
    eprintln!(
        "concurrency cap 4: 40 tokens, {served} served, {unavailable} quick 503s (slowest {slowest_503:?}), \
         upstream high-water {}, {} upstream calls",
        server.high_water(),
        server.calls()
    );
    assert!(
        server.high_water() <= 4,
        "high-water {}",
        server.high_water()
    );
    assert_eq!(served, 4);
    assert_eq!(unavailable, 36);
    assert!(
        slowest_503 < Duration::from_millis(800),
        "overflow waited for the upstream: {slowest_503:?}"
    );
    assert_eq!(server.calls(), 4);
    assert_eq!(layer.resolver().upstream_lookups(), 4);
}
