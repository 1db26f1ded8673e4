//! The routes the layer answers itself, under the prefix (default `/auth`):
//!
//! | route | what it does |
//! |---|---|
//! | `GET /auth/signin/{provider}?return_to=` | seals a flow cookie (provider, validated `return_to`) and 303s to the upstream's sign-in page |
//! | `GET /auth/callback` | the upstream's landings: grant exchange → session cookie → 303 to the validated `return_to`; password reset → encrypted reset cookie → 303 to the reset page; e-mail changed → 303 with a notice; failure → an escaped error page |
//! | `GET /auth/continue`, `POST /auth/continue` | an e-mail link's landing (magic link, address confirmation) waits in an encrypted cookie until the user clicks "Continue" (a same-origin `POST`), so mail scanners that open links neither spend them nor get a session (SECURITY.md T-B6.4; [`AuthConfig::with_email_link_confirmation`](crate::AuthConfig::with_email_link_confirmation)) |
//! | `POST /auth/signout?scope=this\|all\|others&return_to=` | cross-site check, upstream sign-out, cookie cleared with mirrored attributes even if the upstream fails, tombstone, 303 |
//!
//! Callback responses carry `Referrer-Policy: no-referrer` and `no-store`;
//! `HEAD` never spends a token. Other paths under the prefix go to the app.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};

use crate::context::{Shared, apply_hygiene};
use crate::cookie::{CookieFinder, SessionCookie};
use crate::events::{AuthEvent, FlowRejection};
use crate::extract::is_same_origin;
use crate::upstream::{CallbackOutcome, CallbackParams, FlowRecord, SignOutScope};

/// The longest message from the upstream shown on an error page.
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
}

/// Which of the layer's routes `path` is, if any.
pub(crate) fn match_route(shared: &Shared, path: &str) -> Option<Route> {
    let rest = path.strip_prefix(shared.config.route_prefix.as_str())?;
    match rest {
        "/callback" => Some(Route::Callback),
        "/continue" => Some(Route::Continue),
        "/signout" => Some(Route::SignOut),
        _ => {
            let provider = rest.strip_prefix("/signin/")?;
            (!provider.is_empty() && !provider.contains('/'))
                .then(|| Route::SignIn(provider.to_owned()))
        }
    }
}

/// A response the layer builds: status, headers, body, cookies.
struct Page {
    response: Response<Bytes>,
    set_cookies: Vec<String>,
}

impl Page {
    fn new(status: StatusCode) -> Self {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = status;
        Self {
            response,
            set_cookies: Vec::new(),
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

    fn html(status: StatusCode, title: &str, message: &str, link: Option<(&str, &str)>) -> Self {
        let mut page = Self::new(status);
        let link = link.map_or(String::new(), |(href, text)| {
            format!(r#"<p><a href="{}">{}</a></p>"#, escape(href), escape(text))
        });
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{message}</p>{link}</body></html>",
            title = escape(title),
            message = escape(message),
        );
        *page.response.body_mut() = Bytes::from(body);
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

    /// The page of a held e-mail link: one button that posts to `action`.
    fn email_link_confirmation(action: &str) -> Self {
        let mut page = Self::html(StatusCode::OK, "", "", None);
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Finish signing in</title><style>\
             body{{font-family:system-ui,sans-serif;max-width:30rem;margin:4rem auto;padding:0 1rem;line-height:1.5}}\
             button{{font:inherit;padding:.6rem 1.6rem;border:0;border-radius:.4rem;background:#2453d4;color:#fff;cursor:pointer}}\
             small{{color:#555}}</style></head><body><h1>Finish signing in</h1>\
             <p>You opened a sign-in link from an e-mail. Continue to sign in on this device.</p>\
             <form method=\"post\" action=\"{action}\"><button type=\"submit\" id=\"authgate-continue\">Continue</button></form>\
             <p><small>Did not ask to sign in? Close this page: nothing happens without the button.</small></p>\
             </body></html>",
            action = escape(action),
        );
        *page.response.body_mut() = Bytes::from(body);
        page
    }

    fn cookie(mut self, line: String) -> Self {
        self.set_cookies.push(line);
        self
    }

    fn finish(mut self) -> Response<Bytes> {
        let headers = self.response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        apply_hygiene(headers, &self.set_cookies, false);
        self.response
    }
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn method_not_allowed(allow: &'static str) -> Page {
    let mut page = Page::html(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "This address does not accept that method.",
        None,
    );
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
        Route::SignIn(provider) => sign_in(&shared, &provider, &parts),
        Route::Callback => callback(&shared, &parts).await,
        Route::Continue => continue_email_link(&shared, &parts).await,
        Route::SignOut => sign_out(&shared, &parts).await,
    };
    page.finish()
}

fn sign_in(shared: &Shared, provider: &str, parts: &Parts) -> Page {
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    let upstream = shared.resolver.upstream();
    let Some(provider) = upstream.providers().iter().find(|p| **p == provider) else {
        return Page::html(
            StatusCode::NOT_FOUND,
            "Unknown provider",
            "This sign-in provider is not available.",
            None,
        );
    };
    let params = CallbackParams::parse(parts.uri.query().unwrap_or(""));
    let return_to = shared.return_to_or(
        single_param(&params, "return_to"),
        &shared.config.after_sign_in,
    );
    let flow = FlowRecord {
        provider: (*provider).to_owned(),
        return_to,
    };
    let sealed = shared
        .keys
        .seal(&shared.flow_name, "flow", &flow, shared.config.flow_ttl);
    let (Some(sealed), Ok(url)) = (sealed, upstream.sign_in_url(provider, &flow)) else {
        return Page::html(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in unavailable",
            "The sign-in could not be started.",
            None,
        );
    };
    let cookie = shared
        .attributes
        .build(&shared.flow_name, sealed, shared.config.flow_ttl);
    Page::redirect(url.as_str()).cookie(cookie)
}

async fn callback(shared: &Shared, parts: &Parts) -> Page {
    match parts.method {
        // A prefetcher or link scanner: never spend the token.
        Method::HEAD => return Page::new(StatusCode::OK),
        Method::GET => {}
        _ => return method_not_allowed("GET, HEAD"),
    }
    let (flow, _) = open_sealed::<FlowRecord>(
        shared,
        parts,
        &shared.flow_finder,
        &shared.flow_name,
        "flow",
    );
    let remove_flow = shared.attributes.removal(&shared.flow_name);
    let params = landing_params(parts.uri.query().unwrap_or(""), parts);
    if shared.config.confirm_email_links && shared.resolver.upstream().is_email_link(&params) {
        return hold_email_link(shared, parts.uri.query().unwrap_or(""));
    }
    complete(shared, parts, &params, flow.as_ref(), remove_flow).await
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
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> Option<Page> {
    if is_same_origin(&parts.headers, &shared.config.public_origin) {
        return None;
    }
    shared.resolver.emit(AuthEvent::FlowRejected {
        reason: FlowRejection::CrossSite,
        session: None,
    });
    Some(Page::html(StatusCode::FORBIDDEN, title, message, link))
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
            let Some(query) = query else {
                return expired().cookie(remove_link);
            };
            let params = landing_params(&query, parts);
            complete(shared, parts, &params, None, remove_link).await
        }
        _ => method_not_allowed("GET, HEAD, POST"),
    }
}

/// Exchanges a landing with the upstream and answers with its outcome;
/// `cleanup` (the removal of the cookie that carried the landing's state)
/// goes on every answer.
async fn complete(
    shared: &Shared,
    parts: &Parts,
    params: &CallbackParams,
    flow: Option<&FlowRecord>,
    cleanup: String,
) -> Page {
    let sign_in_page = shared.config.sign_in_page.as_str();
    let upstream = shared.resolver.upstream();
    let outcome = match upstream.complete_callback(params, flow).await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::warn!(error = %err, "authgate: callback could not reach the upstream");
            let mut page = Page::html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                "The sign-in service did not answer. Please try again in a moment.",
                Some((sign_in_page, "Back to sign in")),
            );
            page.response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return page;
        }
    };
    match outcome {
        CallbackOutcome::SignedIn(grant) => {
            let return_to = shared.return_to.validate_or(
                flow.map(|f| f.return_to.as_str()),
                &shared.config.after_sign_in,
            );
            let previous = match shared.cookie_finder.find(&parts.headers) {
                SessionCookie::Present(token) => Some(token),
                _ => None,
            };
            let session = shared.sign_in(previous.as_ref(), grant);
            Page::redirect(&return_to).cookie(session).cookie(cleanup)
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
            Page::redirect(&location).cookie(reset).cookie(cleanup)
        }
        CallbackOutcome::EmailChanged => {
            // This browser's cached profile shows the old address: name the
            // user in the event, then forget the profile everywhere here.
            let mut user_id = None;
            if let SessionCookie::Present(token) = shared.cookie_finder.find(&parts.headers) {
                user_id = shared
                    .resolver
                    .resolve(&token)
                    .await
                    .state
                    .user()
                    .map(|u| u.id.clone());
                if let Some(id) = &user_id {
                    shared.resolver.refresh_user(id);
                }
            }
            shared.resolver.emit(AuthEvent::EmailChanged { user_id });
            let mut location = shared.config.absolute(&shared.config.notice_page);
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str("notice=email-changed");
            Page::redirect(&location).cookie(cleanup)
        }
        CallbackOutcome::Failed {
            status,
            message,
            rejection,
        } => {
            match rejection {
                Some(reason) => shared.resolver.emit(AuthEvent::FlowRejected {
                    reason,
                    session: None,
                }),
                None => tracing::info!(%status, "authgate: the upstream reported a failed sign-in"),
            }
            let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
            let status = if status.is_client_error() || status.is_server_error() {
                status
            } else {
                StatusCode::BAD_REQUEST
            };
            Page::html(
                status,
                "Sign-in failed",
                &message,
                Some((sign_in_page, "Back to sign in")),
            )
            .cookie(cleanup)
        }
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
        None,
    ) {
        return refused;
    }
    let params = CallbackParams::parse(parts.uri.query().unwrap_or(""));
    let Some(scope) = SignOutScope::parse(single_param(&params, "scope").unwrap_or("")) else {
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
    let removal = shared.attributes.removal(&shared.session_name);
    let SessionCookie::Present(token) = shared.cookie_finder.find(&parts.headers) else {
        // Nobody to sign out: idempotent, no upstream call.
        return Page::redirect(&location).cookie(removal);
    };
    let resolver = &shared.resolver;
    // Usually a cache hit; names the user in the event and for the
    // user-wide evictions below.
    let user_id = resolver
        .resolve(&token)
        .await
        .state
        .user()
        .map(|u| u.id.clone());
    if let Err(err) = resolver.upstream().sign_out(&token, scope).await {
        tracing::warn!(error = %err, "authgate: upstream sign-out failed; signed out locally");
    }
    match (scope, &user_id) {
        (SignOutScope::Others, Some(id)) => resolver.revoke_user(id, Some(&token)),
        (SignOutScope::All, Some(id)) => resolver.revoke_user(id, None),
        _ => {}
    }
    resolver.emit(AuthEvent::SignedOut {
        user_id,
        scope,
        session: resolver.session_hash(&token),
    });
    if scope == SignOutScope::Others {
        return Page::redirect(&location);
    }
    resolver.revoke(&token);
    let mut page = Page::redirect(&location).cookie(removal);
    page.response
        .headers_mut()
        .insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    page
}
