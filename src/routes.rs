//! The routes the layer answers itself, under the prefix (default `/auth`):
//!
//! | route | what it does |
//! |---|---|
//! | `GET /auth/signin/{provider}?return_to=&prompt=login&max_age=` | a fresh flow id (the OAuth `state`), the upstream's start (URL and its own per-flow data), a sealed flow cookie per flow (provider, validated `return_to`, the upstream's data), 303 to the upstream |
//! | `GET /auth/callback` | the upstream's landings: grant exchange → session cookie → 303 to the validated `return_to`; password reset → encrypted reset cookie → 303 to the reset page; e-mail changed → 303 with a notice; failure → an escaped error page |
//! | `GET /auth/continue`, `POST /auth/continue` | an e-mail link's landing (magic link, address confirmation) waits in an encrypted cookie until the user clicks "Continue" (a same-origin `POST`), so mail scanners that open links neither spend them nor get a session (SECURITY.md T-B6.4; [`AuthConfig::with_email_link_confirmation`](crate::AuthConfig::with_email_link_confirmation)) |
//! | `POST /auth/signout?scope=this\|all\|others&return_to=` | cross-site check, upstream sign-out, cookie cleared with mirrored attributes even if the upstream fails, tombstone, 303 |
//! | `POST /auth/backchannel-logout` | only when the upstream verifies logout tokens ([`Capabilities::back_channel_logout`](crate::upstream::Capabilities::back_channel_logout)): the provider's `logout_token` (a form body of at most 16 KiB) is verified by the upstream, then the session it names (`sid`) or every session of the user (`sub` alone) is signed out in this instance (OpenID Connect Back-Channel Logout 1.0 §2.5–§2.8); 200 (also when nobody was signed in here), else 400 `{"error":"invalid_request"}` (`temporarily_unavailable` when the provider's keys could not be fetched), `no-store` |
//!
//! Callback responses carry `Referrer-Policy: no-referrer` and `no-store`;
//! `HEAD` never spends a token. Other paths under the prefix go to the app.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::context::{Asked, CLEAR_SITE_DATA, CurrentSession, Shared, apply_hygiene};
use crate::cookie::{CookieFinder, MAX_VALUE_LEN};
use crate::events::{AuthEvent, FlowRejection, SignInMethod};
use crate::extract::is_same_origin;
use crate::pages::{PageContext, PageKind, PageLink};
use crate::upstream::{
    CallbackOutcome, CallbackParams, Correlation, FlowId, FlowRecord, Grant, LandingKind, Prompt,
    Session, SignInStart, SignOutOutcome, SignOutScope, User,
};

/// The longest text of a refused landing written to the log.
const MAX_MESSAGE_CHARS: usize = 300;

/// The longest e-mail-link query kept in the link cookie (a real one is a
/// few hundred bytes; the cookie must stay under the browsers' 4 KB).
const MAX_LINK_QUERY: usize = 2048;

/// One of the layer's own routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    SignIn(String),
    Callback,
    Continue,
    SignOut,
    BackChannelLogout,
}

/// Which of the layer's routes `path` is, if any.
pub(crate) fn match_route(shared: &Shared, path: &str) -> Option<Route> {
    let rest = path.strip_prefix(shared.config.route_prefix.as_str())?;
    match rest {
        "/callback" => Some(Route::Callback),
        "/continue" => Some(Route::Continue),
        "/signout" => Some(Route::SignOut),
        "/backchannel-logout" if shared.capabilities.back_channel_logout => {
            Some(Route::BackChannelLogout)
        }
        _ => {
            let provider = rest.strip_prefix("/signin/")?;
            (!provider.is_empty() && !provider.contains('/'))
                .then(|| Route::SignIn(provider.to_owned()))
        }
    }
}

/// A response the layer builds: status, headers, body, cookies. A page's
/// body is drawn by the app's renderer when the response is finished.
struct Page {
    response: Response<Bytes>,
    set_cookies: Vec<String>,
    content: Option<Content>,
}

/// What a page of the layer says, until it is rendered.
struct Content {
    kind: PageKind,
    title: &'static str,
    message: &'static str,
    link: Option<(String, &'static str)>,
    form_action: Option<String>,
    accounts: Option<(String, String)>,
}

impl Page {
    fn new(status: StatusCode) -> Self {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = status;
        Self {
            response,
            set_cookies: Vec::new(),
            content: None,
        }
    }

    fn redirect(location: &str) -> Self {
        let mut page = Self::new(StatusCode::SEE_OTHER);
        match HeaderValue::from_str(location) {
            Ok(value) => {
                page.response.headers_mut().insert(LOCATION, value);
            }
            Err(_) => {
                return Self::html(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "Invalid redirect.",
                    None,
                );
            }
        }
        page
    }

    /// A page with fixed texts (never the request's) and a way out.
    fn html(
        status: StatusCode,
        title: &'static str,
        message: &'static str,
        link: Option<(&str, &'static str)>,
    ) -> Self {
        let mut page = Self::new(status);
        page.content = Some(Content {
            kind: PageKind::BadRequest,
            title,
            message,
            link: link.map(|(href, text)| (href.to_owned(), text)),
            form_action: None,
            accounts: None,
        });
        let headers = page.response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        page
    }

    /// What the page is about, for the app's renderer.
    fn kind(mut self, kind: PageKind) -> Self {
        if let Some(content) = &mut self.content {
            content.kind = kind;
        }
        self
    }

    /// The page of a held e-mail link: one button that posts to `action`.
    fn email_link_confirmation(action: &str) -> Self {
        let mut page = Self::html(
            StatusCode::OK,
            "Finish signing in",
            "You opened a sign-in link from an e-mail. Continue to sign in on this device.",
            None,
        )
        .kind(PageKind::EmailLinkConfirmation);
        if let Some(content) = &mut page.content {
            content.form_action = Some(action.to_owned());
        }
        page
    }

    /// The question before an e-mail link switches a signed-in browser to
    /// another account (SECURITY.md T-B6.4).
    fn account_switch(action: &str, now: &str, next: &str) -> Self {
        let mut page = Self::html(
            StatusCode::OK,
            "Switch account?",
            "The link you opened signs in to another account than the one signed in here.",
            None,
        )
        .kind(PageKind::AccountSwitch);
        if let Some(content) = &mut page.content {
            content.form_action = Some(action.to_owned());
            content.accounts = Some((now.to_owned(), next.to_owned()));
        }
        page
    }

    fn cookie(mut self, line: String) -> Self {
        self.set_cookies.push(line);
        self
    }

    fn finish(mut self, shared: &Shared) -> Response<Bytes> {
        if let Some(content) = self.content.take() {
            let retry_after = self
                .response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let context = PageContext {
                kind: content.kind,
                status: self.response.status(),
                title: content.title,
                message: content.message,
                link: content
                    .link
                    .as_ref()
                    .map(|(href, text)| PageLink { href, text }),
                retry_after,
                form_action: content.form_action.as_deref(),
                accounts: content
                    .accounts
                    .as_ref()
                    .map(|(now, next)| (now.as_str(), next.as_str())),
                // The auth routes resolve no user before their pages.
                user: None,
            };
            *self.response.body_mut() = Bytes::from(shared.render_page(&context));
        }
        let headers = self.response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        apply_hygiene(headers, &self.set_cookies, Asked::No);
        self.response
    }
}

fn method_not_allowed(allow: &'static str) -> Page {
    let mut page = Page::html(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "This address does not accept that method.",
        Some(("/", "Back to the site")),
    )
    .kind(PageKind::MethodNotAllowed);
    page.response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    page
}

fn single_param<'a>(params: &'a CallbackParams, name: &str) -> Option<&'a str> {
    params.single(name).ok().flatten()
}

/// Answers one of the layer's routes.
pub(crate) async fn handle(shared: Arc<Shared>, route: Route, parts: Parts) -> Response<Bytes> {
    let page = match route {
        Route::SignIn(provider) => sign_in(&shared, &provider, &parts).await,
        Route::Callback => callback(&shared, &parts).await,
        Route::Continue => continue_email_link(&shared, &parts).await,
        Route::SignOut => sign_out(&shared, &parts).await,
        // Answered by `back_channel_logout`, which reads the body.
        Route::BackChannelLogout => method_not_allowed("POST"),
    };
    page.finish(&shared)
}

/// How many flows one browser keeps in flight.
const MAX_FLOWS: usize = 4;

/// The names of the per-flow cookies a request carries, in header order.
fn flow_cookie_names(shared: &Shared, parts: &Parts) -> Vec<String> {
    let prefix = format!("{}.", shared.flow_name);
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim()))
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cookie of a flow found by its id: `{session}-flow.{h}`, `h` = 16
/// characters of base64url(SHA-256(id)), so parallel sign-ins in one
/// browser each have their own cookie.
fn flow_cookie_name(shared: &Shared, flow: &str) -> String {
    use base64::Engine as _;
    let digest = Sha256::digest(flow.as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    format!("{}.{}", shared.flow_name, &hash[..16])
}

/// The [`Correlation::Single`] flows in flight in this browser, oldest
/// first, without the expired ones.
fn single_flows(shared: &Shared, parts: &Parts) -> Vec<FlowRecord> {
    let (flows, _) = open_sealed::<Vec<FlowRecord>>(
        shared,
        parts,
        &shared.flow_finder,
        &shared.flow_name,
        "flow",
    );
    let oldest = unix_now().saturating_sub(shared.config.flow_ttl.as_secs());
    let mut flows = flows.unwrap_or_default();
    flows.retain(|f| f.started >= oldest && f.correlation == Correlation::Single);
    flows
}

/// The `Set-Cookie` line that stores the Single flows (or removes them).
fn single_flows_cookie(shared: &Shared, mut flows: Vec<FlowRecord>) -> Option<String> {
    let ttl = shared.config.flow_ttl;
    while !flows.is_empty() {
        let sealed = shared.keys.seal(&shared.flow_name, "flow", &flows, ttl)?;
        if sealed.len() <= MAX_VALUE_LEN {
            return Some(shared.attributes.build(&shared.flow_name, sealed, ttl));
        }
        flows.remove(0);
    }
    Some(shared.attributes.removal(&shared.flow_name))
}

fn sign_in_unavailable(status: StatusCode) -> Page {
    let mut page = Page::html(
        status,
        "Sign-in unavailable",
        "The sign-in could not be started. Please try again in a moment.",
        Some(("/", "Back to the site")),
    )
    .kind(PageKind::Unavailable);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        page.response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    }
    page
}

async fn sign_in(shared: &Shared, provider: &str, parts: &Parts) -> Page {
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    if !shared.capabilities.has_provider(provider) {
        return Page::html(
            StatusCode::NOT_FOUND,
            "Unknown provider",
            "This sign-in provider is not available.",
            Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
        )
        .kind(PageKind::UnknownProvider);
    }
    let params = CallbackParams::parse(parts.uri.query().unwrap_or(""));
    let return_to = shared.return_to_or(
        single_param(&params, "return_to"),
        &shared.config.after_sign_in,
    );
    let flow = FlowId::generate();
    let mut start = SignInStart::new(provider, &flow, &shared.callback_url);
    if single_param(&params, "prompt") == Some("login") {
        start.prompt = Prompt::Login;
    }
    // A malformed `max_age` is dropped, not refused: the provider then
    // decides, as without one (the page asking for it still checks
    // `auth_time`).
    start.max_age = single_param(&params, "max_age")
        .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let redirect = match shared.resolver.upstream().start_sign_in(start).await {
        Ok(redirect) => redirect,
        Err(err) => {
            tracing::warn!(error = %err, provider, "authgate: the upstream could not start a sign-in");
            return sign_in_unavailable(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let redirect_url = redirect.url.clone();
    let record = FlowRecord::new(provider, &return_to, flow, redirect);
    let record_correlation = record.correlation;
    let ttl = shared.config.flow_ttl;
    let cookie = match record.correlation {
        Correlation::Single => {
            let mut flows = single_flows(shared, parts);
            flows.push(record);
            let excess = flows.len().saturating_sub(MAX_FLOWS);
            flows.drain(..excess);
            single_flows_cookie(shared, flows)
        }
        _ => {
            let name = flow_cookie_name(shared, record.flow.as_str());
            shared
                .keys
                .seal(&name, "flow", &record, ttl)
                .filter(|sealed| sealed.len() <= MAX_VALUE_LEN)
                .map(|sealed| shared.attributes.build(&name, sealed, ttl))
        }
    };
    let Some(cookie) = cookie else {
        return sign_in_unavailable(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut page = Page::redirect(redirect_url.as_str()).cookie(cookie);
    if record_correlation != Correlation::Single {
        // At most a few flows in flight: the oldest cookies go (browsers
        // send older cookies first, RFC 6265 §5.4), so abandoned starts
        // cannot grow the `Cookie` header without bound.
        let names = flow_cookie_names(shared, parts);
        let excess = (names.len() + 1).saturating_sub(MAX_FLOWS);
        for name in names.into_iter().take(excess) {
            page.set_cookies.push(shared.attributes.removal(&name));
        }
    }
    page
}

/// The fixed text of a refused landing's page, by reason: never the
/// upstream's words (SECURITY.md T-B1).
fn refusal_message(reason: FlowRejection) -> &'static str {
    match reason {
        FlowRejection::MissingFlow | FlowRejection::TamperedFlow => {
            "No sign-in was started in this browser. Please start again."
        }
        FlowRejection::ReplayedGrant => {
            "This link has expired or was already used. Please sign in again."
        }
        FlowRejection::MalformedLanding => "This sign-in link is malformed.",
        FlowRejection::ConsentDenied => {
            "The sign-in was cancelled at the sign-in provider. You can try again or use another way to sign in."
        }
        FlowRejection::ProviderMismatch => {
            "No sign-in with this provider was started in this browser. Please start again."
        }
        _ => {
            "The sign-in service refused this sign-in. Please try again, or use another way to sign in."
        }
    }
}

/// The refusal of a landing whose parameters cannot be read one way only
/// (reported).
fn malformed_landing(shared: &Shared) -> Page {
    shared.resolver.emit(AuthEvent::FlowRejected {
        reason: FlowRejection::MalformedLanding,
        session: None,
    });
    Page::html(
        StatusCode::BAD_REQUEST,
        "Sign-in failed",
        refusal_message(FlowRejection::MalformedLanding),
        Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
    )
    .kind(PageKind::LandingRefused(LandingKind::Unknown))
}

/// The flow a landing belongs to, as the core found and checked it.
enum FoundFlow {
    /// The landing names its flow (`state` or `flow`) and the flow's own
    /// cookie holds the matching record.
    Named { record: FlowRecord, cookie: String },
    /// No flow id came back: the browser's Single flows, oldest first.
    Single(Vec<FlowRecord>),
}

/// Finds the flow of a landing by the parameter that names it, before the
/// upstream sees anything (SEAM.md §2.3; SECURITY.md T-B1): the cookie
/// named after the id must open, hold the same id (compared in constant
/// time), have been found the way it was started, and be for the provider
/// the landing names, if it names one.
fn find_flow(
    shared: &Shared,
    parts: &Parts,
    params: &CallbackParams,
) -> Result<FoundFlow, Box<Page>> {
    let carriers = [
        ("state", Correlation::State),
        ("flow", Correlation::CallbackQuery),
    ];
    if carriers
        .iter()
        .any(|(name, _)| params.single(name).is_err())
    {
        // A repeated flow id: never pick one (SECURITY.md T-B6.1).
        return Err(Box::new(malformed_landing(shared)));
    }
    let named = carriers
        .into_iter()
        .find_map(|(name, how)| single_param(params, name).map(|id| (id, how)));
    let Some((id, how)) = named else {
        return Ok(FoundFlow::Single(single_flows(shared, parts)));
    };
    if params.has_duplicates() {
        // The core checks named flows itself: no parameter may be chosen
        // between two values (SECURITY.md T-B1, T-B6.1).
        return Err(Box::new(malformed_landing(shared)));
    }
    let name = flow_cookie_name(shared, id);
    let finder = CookieFinder::new(&name);
    let (record, present) = open_sealed::<FlowRecord>(shared, parts, &finder, &name, "flow");
    let removal = shared.attributes.removal(&name);
    let provider = single_param(params, "provider");
    let checked = record.filter(|r| {
        r.flow.matches(id) && r.correlation == how && provider.is_none_or(|p| p == r.provider)
    });
    match checked {
        Some(record) => Ok(FoundFlow::Named {
            record,
            cookie: name,
        }),
        None => {
            shared.resolver.emit(AuthEvent::FlowRejected {
                reason: if present {
                    FlowRejection::TamperedFlow
                } else {
                    FlowRejection::MissingFlow
                },
                session: None,
            });
            let page = Page::html(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                refusal_message(FlowRejection::MissingFlow),
                Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
            )
            .kind(PageKind::LandingRefused(LandingKind::OAuth));
            Err(Box::new(if present { page.cookie(removal) } else { page }))
        }
    }
}

async fn callback(shared: &Shared, parts: &Parts) -> Page {
    match parts.method {
        // A prefetcher or link scanner: never spend the token.
        Method::HEAD => return Page::new(StatusCode::OK),
        Method::GET => {}
        _ => return method_not_allowed("GET, HEAD"),
    }
    let params = landing_params(parts.uri.query().unwrap_or(""), parts);
    if shared.config.confirm_email_links && shared.resolver.upstream().is_email_link(&params) {
        return hold_email_link(shared, parts.uri.query().unwrap_or(""));
    }
    match find_flow(shared, parts, &params) {
        Ok(found) => complete(shared, parts, &params, found, None).await,
        Err(refused) => *refused,
    }
}

/// Reads one of the layer's sealed cookies: its value, and whether the
/// cookie was there at all. One that is there but does not open
/// (tampered, another key, expired) is reported.
fn open_sealed<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    parts: &Parts,
    finder: &CookieFinder,
    name: &str,
    purpose: &str,
) -> (Option<T>, bool) {
    let sealed = finder.raw(&parts.headers);
    let value = sealed.and_then(|sealed| shared.keys.open(name, purpose, sealed));
    if sealed.is_some() && value.is_none() {
        shared.resolver.emit(AuthEvent::FlowRejected {
            reason: FlowRejection::TamperedFlow,
            session: None,
        });
    }
    (value, sealed.is_some())
}

/// The refusal of a state-changing request from another site (reported),
/// or `None` when it comes from the app's own pages.
fn refuse_cross_site(
    shared: &Shared,
    parts: &Parts,
    title: &'static str,
    message: &'static str,
    link: Option<(&str, &'static str)>,
) -> Option<Page> {
    if is_same_origin(&parts.headers, &shared.config.public_origin) {
        return None;
    }
    shared.resolver.emit(AuthEvent::FlowRejected {
        reason: FlowRejection::CrossSite,
        session: None,
    });
    Some(Page::html(StatusCode::FORBIDDEN, title, message, link).kind(PageKind::CrossSiteRefused))
}

/// Where a held e-mail link waits for its click.
fn continue_path(shared: &Shared) -> String {
    format!("{}/continue", shared.config.route_prefix)
}

/// A landing's query with the browser's `User-Agent` (for the session's
/// device).
fn landing_params(query: &str, parts: &Parts) -> CallbackParams {
    let user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    CallbackParams::parse(query).with_user_agent(user_agent)
}

/// Keeps an e-mail link's landing in an encrypted cookie and sends the
/// browser to the confirmation page: nothing is spent until a click.
fn hold_email_link(shared: &Shared, query: &str) -> Page {
    let ttl = shared.config.flow_ttl;
    let sealed = (query.len() <= MAX_LINK_QUERY)
        .then(|| shared.keys.seal(&shared.link_name, "link", &query, ttl))
        .flatten();
    let Some(sealed) = sealed else {
        return Page::html(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "This sign-in link is malformed.",
            Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
        );
    };
    let link = shared.attributes.build(&shared.link_name, sealed, ttl);
    let location = shared.config.absolute(&continue_path(shared));
    Page::redirect(&location).cookie(link)
}

/// `{prefix}/continue`: shows the held e-mail link's button (`GET`), and
/// completes the landing on its same-origin `POST`.
async fn continue_email_link(shared: &Shared, parts: &Parts) -> Page {
    let sign_in_page = shared.config.sign_in_page.as_str();
    let (query, present) = open_sealed::<String>(
        shared,
        parts,
        &shared.link_finder,
        &shared.link_name,
        "link",
    );
    let remove_link = shared.attributes.removal(&shared.link_name);
    let expired = || {
        Page::html(
            StatusCode::BAD_REQUEST,
            "Sign-in link expired",
            "This sign-in link has expired or was already used. Please sign in again.",
            Some((sign_in_page, "Back to sign in")),
        )
        .kind(PageKind::LandingRefused(LandingKind::MagicLink))
    };
    match parts.method {
        Method::HEAD => Page::new(StatusCode::OK),
        Method::GET => match query {
            Some(_) => Page::email_link_confirmation(&continue_path(shared)),
            None if present => expired().cookie(remove_link),
            None => expired(),
        },
        Method::POST => {
            // The held link stays for the real user's own click.
            if let Some(refused) = refuse_cross_site(
                shared,
                parts,
                "Sign-in refused",
                "This request came from another site and was refused.",
                Some((sign_in_page, "Back to sign in")),
            ) {
                return refused;
            }
            let answer = CallbackParams::parse(parts.uri.query().unwrap_or(""));
            match single_param(&answer, "account") {
                Some("switch") => return answer_switch(shared, parts, true).await,
                Some("stay") => return answer_switch(shared, parts, false).await,
                _ => {}
            }
            let Some(query) = query else {
                return expired().cookie(remove_link);
            };
            let params = landing_params(&query, parts);
            let found = FoundFlow::Single(Vec::new());
            complete(shared, parts, &params, found, Some(remove_link)).await
        }
        _ => method_not_allowed("GET, HEAD, POST"),
    }
}

/// Exchanges a landing with the upstream and answers with its outcome. A
/// named flow's cookie is removed on every answer but an outage (the
/// user may retry), a Single flow when it is used or failed; `link` (the
/// removal of an e-mail link's cookie) goes on every answer.
async fn complete(
    shared: &Shared,
    parts: &Parts,
    params: &CallbackParams,
    found: FoundFlow,
    link: Option<String>,
) -> Page {
    let sign_in_page = shared.config.sign_in_page.as_str();
    let upstream = shared.resolver.upstream();
    let (flow, mut cleanup) = match &found {
        FoundFlow::Named { record, cookie } => {
            (Some(record), vec![shared.attributes.removal(cookie)])
        }
        // The most recent flow: the upstream needs to know that one exists;
        // which one is picked once it says who signed in.
        FoundFlow::Single(flows) => (flows.last(), Vec::new()),
    };
    cleanup.extend(link);
    let outcome = match upstream.complete_callback(params, flow).await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::warn!(error = %err, "authgate: callback could not reach the upstream");
            let mut page = Page::html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                "The sign-in service did not answer. Please try again in a moment.",
                Some((sign_in_page, "Back to sign in")),
            )
            .kind(PageKind::Unavailable);
            page.response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return page;
        }
    };
    let single_used = |flows: &[FlowRecord], index: usize| {
        let mut rest = flows.to_vec();
        rest.remove(index);
        single_flows_cookie(shared, rest)
    };
    let page = match outcome {
        CallbackOutcome::SignedIn(grant) => {
            let (return_to, flows_cookie) = match (&found, &grant.method) {
                (FoundFlow::Named { record, .. }, _) => (Some(record.return_to.clone()), None),
                (FoundFlow::Single(flows), SignInMethod::OAuth(provider)) => {
                    let picked = flows
                        .iter()
                        .rposition(|f| f.provider.eq_ignore_ascii_case(provider));
                    let Some(index) = picked else {
                        return refuse_provider(shared, grant.session).await;
                    };
                    (
                        Some(flows[index].return_to.clone()),
                        single_used(flows, index),
                    )
                }
                (FoundFlow::Single(_), _) => (None, None),
            };
            let return_to = shared
                .return_to
                .validate_or(return_to.as_deref(), &shared.config.after_sign_in);
            let session = grant.session.clone();
            let (previous, had) = shared.current_session(&parts.headers);
            if matches!(
                grant.method,
                SignInMethod::MagicLink | SignInMethod::EmailConfirmation
            ) && let Some(previous) = &previous
                && let Some(page) = ask_before_switching(shared, previous, &grant, &return_to).await
            {
                let mut page = page;
                page.set_cookies.extend(cleanup);
                return page;
            }
            let method = grant.method.clone();
            match shared.sign_in(previous.as_ref(), had, grant) {
                Ok(lines) => {
                    let mut page = Page::redirect(&signed_in_location(shared, return_to, &method));
                    page.set_cookies.extend(lines);
                    page.set_cookies.extend(flows_cookie);
                    page
                }
                Err(err) => return session_too_large(shared, session, &err).await,
            }
        }
        CallbackOutcome::PasswordReset(key) => {
            let ttl = shared.config.flow_ttl;
            let Some(sealed) = shared
                .keys
                .seal(&shared.reset_name, "reset", &key.expose(), ttl)
            else {
                return Page::html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Reset unavailable",
                    "The reset could not be started.",
                    None,
                );
            };
            let reset = shared.attributes.build(&shared.reset_name, sealed, ttl);
            let location = shared.config.absolute(&shared.config.reset_password_page);
            Page::redirect(&location).cookie(reset)
        }
        CallbackOutcome::EmailChanged => {
            // This browser's cached profile shows the old address: name the
            // user in the event, then forget the profile everywhere here.
            let mut user_id = None;
            if let (Some(current), _) = shared.current_session(&parts.headers) {
                user_id = shared
                    .resolver
                    .resolve(&current.key, &current.session)
                    .await
                    .state
                    .user()
                    .map(|u| u.id.clone());
                if let Some(id) = &user_id {
                    shared.resolver.refresh_user(id);
                }
            }
            shared.resolver.emit(AuthEvent::EmailChanged { user_id });
            let location = shared.config.absolute(&shared.config.notice_page);
            Page::redirect(&with_notice(location, "email-changed"))
        }
        CallbackOutcome::Failed {
            status,
            message,
            rejection,
            landing,
        } => {
            let reason = rejection.unwrap_or(FlowRejection::UpstreamRefused);
            // The upstream's text may be anything an attacker put in the
            // landing's URL: the log gets it (capped, one line), the page a
            // fixed message (SECURITY.md T-B1).
            let detail: String = message
                .chars()
                .take(MAX_MESSAGE_CHARS)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            tracing::info!(%status, %reason, ?landing, detail, "authgate: a landing was refused");
            // The browser's own session, if it has one: the app can tell its
            // user ("a link was used twice").
            let session = shared
                .current_session(&parts.headers)
                .0
                .map(|current| shared.resolver.session_hash(&current.key));
            shared
                .resolver
                .emit(AuthEvent::FlowRejected { reason, session });
            let mut page = refused_landing(shared, parts, flow, landing, reason, status).await;
            // The flow the upstream was given is spent.
            if let FoundFlow::Single(flows) = &found
                && !flows.is_empty()
            {
                page.set_cookies.extend(single_used(flows, flows.len() - 1));
            }
            page
        }
    };
    let mut page = page;
    page.set_cookies.extend(cleanup);
    page
}

/// Where a refused landing leads (issue 10 point 2): a password-reset link
/// to the app's own reset-failure page when it has one; a browser that is
/// signed in anyway (a confirmation link opened twice, a used magic link)
/// back to its page with a notice, not to an error; anyone else to a page
/// whose title and way out fit the landing. Notices carry the reason
/// (`?notice=replayed-grant`).
async fn refused_landing(
    shared: &Shared,
    parts: &Parts,
    flow: Option<&FlowRecord>,
    landing: LandingKind,
    reason: FlowRejection,
    status: StatusCode,
) -> Page {
    let config = &shared.config;
    let notice = reason.to_string();
    if landing == LandingKind::PasswordReset
        && let Some(page) = &config.reset_failure_page
    {
        return Page::redirect(&with_notice(config.absolute(page), &notice));
    }
    if let (Some(current), _) = shared.current_session(&parts.headers) {
        let resolution = shared
            .resolver
            .resolve(&current.key, &current.session)
            .await;
        if resolution.state.is_signed_in() {
            let back = shared
                .return_to
                .validate_or(flow.map(|f| f.return_to.as_str()), &config.after_sign_in);
            return Page::redirect(&with_notice(back, &notice));
        }
    }
    let (title, way_out) = match landing {
        LandingKind::OAuth | LandingKind::Unknown => ("Sign-in failed", "Back to sign in"),
        LandingKind::MagicLink => ("Sign-in link not accepted", "Back to sign in"),
        LandingKind::EmailConfirmation => ("Address not confirmed", "Back to sign in"),
        LandingKind::EmailChange => ("E-mail change not confirmed", "Back to sign in"),
        LandingKind::PasswordReset => ("Password reset link not accepted", "Ask for a new link"),
    };
    let status = if status.is_client_error() || status.is_server_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    Page::html(
        status,
        title,
        refusal_message(reason),
        Some((config.sign_in_page.as_str(), way_out)),
    )
    .kind(PageKind::LandingRefused(landing))
}

/// Where a landing that signed the browser in goes: `return_to`, with the
/// sign-in's notice when the app asked for them
/// ([`AuthConfig::with_sign_in_notices`](crate::AuthConfig::with_sign_in_notices)).
fn signed_in_location(shared: &Shared, return_to: String, method: &SignInMethod) -> String {
    if !shared.config.sign_in_notices {
        return return_to;
    }
    let notice = match method {
        SignInMethod::MagicLink => "signed-in-with-link",
        SignInMethod::EmailConfirmation => "email-confirmed",
        _ => "signed-in",
    };
    with_notice(return_to, notice)
}

/// `location` with `notice=` added to its query (before any fragment).
fn with_notice(mut location: String, notice: &str) -> String {
    let fragment = location.find('#').map(|at| location.split_off(at));
    location.push(if location.contains('?') { '&' } else { '?' });
    location.push_str("notice=");
    location.extend(url::form_urlencoded::byte_serialize(notice.as_bytes()));
    location.extend(fragment);
    location
}

/// A session an e-mail link opened while another account is signed in,
/// kept sealed until the user chooses.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingSwitch {
    /// The new session's cookie value.
    wire: String,
    magic_link: bool,
    return_to: String,
}

/// SECURITY.md T-B6.4, issue 10 point 4: an e-mail link that would switch
/// a signed-in browser to a *different* account says so first. The new
/// session waits sealed in the pending cookie; the page names both
/// accounts. `None` when the link signs in the account already signed in
/// (or nobody is signed in): then it signs in at once.
async fn ask_before_switching(
    shared: &Shared,
    previous: &CurrentSession,
    grant: &Grant,
    return_to: &str,
) -> Option<Page> {
    let resolution = shared
        .resolver
        .resolve(&previous.key, &previous.session)
        .await;
    let now = resolution.state.user()?;
    let next = grant.user.as_ref();
    if next.is_some_and(|next| next.id == now.id) {
        return None;
    }
    let pending = PendingSwitch {
        wire: shared.codec.encode(&grant.session).ok()?,
        magic_link: grant.method == SignInMethod::MagicLink,
        return_to: return_to.to_owned(),
    };
    let ttl = shared.config.flow_ttl;
    let sealed = shared
        .keys
        .seal(&shared.pending_name, "pending", &pending, ttl)
        .filter(|sealed| sealed.len() <= MAX_VALUE_LEN)?;
    let cookie = shared.attributes.build(&shared.pending_name, sealed, ttl);
    // Accounts are told apart by their address, not a name anyone can
    // choose.
    let label = |user: &User| -> String {
        user.email
            .clone()
            .or_else(|| user.phone.clone())
            .unwrap_or_else(|| user.display_name().to_owned())
    };
    let next_name = next.map_or_else(|| "another account".to_owned(), label);
    Some(Page::account_switch(&continue_path(shared), &label(now), &next_name).cookie(cookie))
}

/// `POST {prefix}/continue?account=switch|stay`: the answer to
/// [`ask_before_switching`]. Switching signs the pending session in (and
/// ends the one it replaces); staying ends the pending session upstream.
async fn answer_switch(shared: &Shared, parts: &Parts, switch: bool) -> Page {
    let (pending, _) = open_sealed::<PendingSwitch>(
        shared,
        parts,
        &shared.pending_finder,
        &shared.pending_name,
        "pending",
    );
    let remove = shared.attributes.removal(&shared.pending_name);
    let session = pending
        .as_ref()
        .and_then(|p| shared.codec.decode(p.wire.as_bytes()));
    let (Some(pending), Some(session)) = (pending, session) else {
        return Page::html(
            StatusCode::BAD_REQUEST,
            "Sign-in link expired",
            "This choice has expired. Please open the link again.",
            Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
        )
        .kind(PageKind::LandingRefused(LandingKind::MagicLink))
        .cookie(remove);
    };
    if !switch {
        end_new_session(shared, &session).await;
        let back = with_notice(pending.return_to, "account-switch-cancelled");
        return Page::redirect(&back).cookie(remove);
    }
    let method = if pending.magic_link {
        SignInMethod::MagicLink
    } else {
        SignInMethod::EmailConfirmation
    };
    let (previous, had) = shared.current_session(&parts.headers);
    match shared.sign_in(
        previous.as_ref(),
        had,
        Grant::from_session(session.clone(), method.clone()),
    ) {
        Ok(lines) => {
            let location = signed_in_location(shared, pending.return_to, &method);
            let mut page = Page::redirect(&location).cookie(remove);
            page.set_cookies.extend(lines);
            page
        }
        Err(err) => session_too_large(shared, session, &err)
            .await
            .cookie(remove),
    }
}

/// An OAuth landing whose provider no flow of this browser was started
/// for (login CSRF with a Single upstream): the session just created is
/// ended, nobody is signed in.
async fn refuse_provider(shared: &Shared, session: Session) -> Page {
    shared.resolver.emit(AuthEvent::FlowRejected {
        reason: FlowRejection::ProviderMismatch,
        session: None,
    });
    end_new_session(shared, &session).await;
    Page::html(
        StatusCode::BAD_REQUEST,
        "Sign-in failed",
        refusal_message(FlowRejection::ProviderMismatch),
        Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
    )
    .kind(PageKind::LandingRefused(LandingKind::OAuth))
}

/// A session over the cookie ceiling (SECURITY.md T-C4): the session just
/// created is ended and the page says why; a retry cannot help, so this
/// is not a 503.
async fn session_too_large(shared: &Shared, session: Session, err: &crate::Error) -> Page {
    tracing::error!(error = %err, "authgate: the new session does not fit the session cookie; ending it upstream");
    end_new_session(shared, &session).await;
    Page::html(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Sign-in failed",
        "Your account's session is too large for this site's cookies, so you could not be signed in. Trying again will not help; please tell the site's administrators.",
        Some((shared.config.sign_in_page.as_str(), "Back to sign in")),
    )
    .kind(PageKind::SessionTooLarge)
}

async fn end_new_session(shared: &Shared, session: &Session) {
    let upstream = shared.resolver.upstream();
    if let Err(err) = upstream
        .sign_out(session, SignOutScope::This, &shared.callback_url)
        .await
    {
        tracing::warn!(error = %err, "authgate: the refused session could not be ended upstream");
    }
}

async fn sign_out(shared: &Shared, parts: &Parts) -> Page {
    if parts.method != Method::POST {
        return method_not_allowed("POST");
    }
    if let Some(refused) = refuse_cross_site(
        shared,
        parts,
        "Sign-out refused",
        "This sign-out request came from another site and was refused.",
        Some(("/", "Back to the site")),
    ) {
        return refused;
    }
    let params = CallbackParams::parse(parts.uri.query().unwrap_or(""));
    let scope = SignOutScope::parse(single_param(&params, "scope").unwrap_or(""))
        .filter(|scope| shared.capabilities.supports_sign_out(*scope));
    let Some(scope) = scope else {
        return Page::html(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Unknown sign-out scope.",
            None,
        );
    };
    let location = shared.return_to_or(
        single_param(&params, "return_to"),
        &shared.config.after_sign_out,
    );
    let (current, had) = shared.current_session(&parts.headers);
    let removal = shared.codec.removal_lines(had);
    let Some(current) = current else {
        // Nobody to sign out: idempotent, no upstream call.
        let mut page = Page::redirect(&location);
        page.set_cookies.extend(removal);
        return page;
    };
    let after = url::Url::parse(&location).unwrap_or_else(|_| shared.config.public_origin.clone());
    let resolution = shared
        .resolver
        .resolve(&current.key, &current.session)
        .await;
    let outcome = shared
        .end_session(&current, &resolution, scope, &after)
        .await;
    let location = match outcome {
        Ok(SignOutOutcome::Redirect(url)) => url.to_string(),
        _ => location,
    };
    let mut page = Page::redirect(&location);
    if scope == SignOutScope::Others {
        // This browser stays signed in: with its rotated session, if the
        // resolution rotated it.
        page.set_cookies
            .extend(shared.codec_lines(&resolution.cookie, had));
        return page;
    }
    page.set_cookies.extend(removal);
    if let Some(value) = &shared.clear_site_data {
        page.response
            .headers_mut()
            .insert(CLEAR_SITE_DATA, value.clone());
    }
    page
}

/// The largest back-channel logout request body read. A logout token is a
/// signed JWT of well under 2 KiB; more is refused unread.
pub(crate) const MAX_LOGOUT_BODY: usize = 16 * 1024;

/// How long the provider has to send the body.
const LOGOUT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the upstream has to verify a logout token (a key-set fetch
/// included).
const LOGOUT_VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST {prefix}/backchannel-logout` (OpenID Connect Back-Channel Logout
/// 1.0 §2.5–§2.8): the provider posts `logout_token=<JWT>` as a form; the
/// upstream verifies it; the session it names (`sid`), or every session of
/// the user (`sub` alone), is signed out here. A server-to-server call:
/// no cookies are read or set, and the answer is JSON, never a page.
pub(crate) async fn back_channel_logout<B>(
    shared: Arc<Shared>,
    parts: Parts,
    body: B,
) -> Response<Bytes>
where
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;

    if parts.method != Method::POST {
        let mut response = logout_answer(StatusCode::METHOD_NOT_ALLOWED, None);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    // §2.5: the token is sent as `application/x-www-form-urlencoded`.
    let form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_LOGOUT_BODY as u64) {
        tracing::warn!("authgate: a back-channel logout body over the limit, refused unread");
        return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    }
    let limited = http_body_util::Limited::new(body, MAX_LOGOUT_BODY);
    let bytes = match tokio::time::timeout(LOGOUT_BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) => {
            let too_large = err.is::<http_body_util::LengthLimitError>();
            tracing::warn!(
                too_large,
                "authgate: a back-channel logout body could not be read"
            );
            return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
        Err(_) => {
            tracing::warn!("authgate: a back-channel logout body took too long");
            return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
    };
    let mut tokens = url::form_urlencoded::parse(&bytes)
        .filter(|(name, _)| name == "logout_token")
        .map(|(_, value)| value);
    let token = match (tokens.next(), tokens.next()) {
        (Some(token), None) if !token.is_empty() => token,
        _ => {
            tracing::warn!("authgate: a back-channel logout without exactly one logout_token");
            return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
    };
    let upstream = shared.resolver.upstream();
    let verified =
        tokio::time::timeout(LOGOUT_VERIFY_TIMEOUT, upstream.back_channel_logout(&token)).await;
    let revocation = match verified {
        Ok(Ok(revocation)) => revocation,
        Ok(Err(err)) if err.is_transient() => {
            tracing::warn!(error = %err, "authgate: a back-channel logout could not be verified now");
            return logout_unavailable();
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "authgate: a back-channel logout token was refused");
            return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
        Err(_) => {
            tracing::warn!("authgate: verifying a back-channel logout token timed out");
            return logout_unavailable();
        }
    };
    let resolver = &shared.resolver;
    // §2.7: `sid` names one session at the provider (of `sub`, when both
    // are given); `sub` alone, every session of the user.
    match (&revocation.sid, &revocation.sub) {
        (Some(sid), _) => resolver.revoke_session_id(sid),
        (None, Some(sub)) => resolver.revoke_user(sub, None),
        (None, None) => {
            tracing::warn!("authgate: the upstream verified a logout token naming nobody");
            return logout_answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
    }
    resolver.emit(AuthEvent::BackChannelLogout {
        user_id: revocation.sub,
        session_id: revocation.sid,
    });
    logout_answer(StatusCode::OK, None)
}

fn logout_unavailable() -> Response<Bytes> {
    let mut response = logout_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        Some("temporarily_unavailable"),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// A back-channel logout answer: empty on success, else
/// `{"error":"<code>"}` (§2.8), never cached.
fn logout_answer(status: StatusCode, error: Option<&'static str>) -> Response<Bytes> {
    let body = error.map_or_else(Bytes::new, |code| {
        Bytes::from(format!("{{\"error\":\"{code}\"}}"))
    });
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if error.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}
