//! The extractors: [`CurrentUser`] (and `Option<CurrentUser>`), the
//! [`Auth`] handle, and the [`SameOrigin`] guard for form posts.

use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CONTENT_TYPE, ORIGIN, REFERER};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use url::Url;

use crate::config::AuthConfig;
use crate::context::{AuthSlot, CurrentSession, RequestAuth};
use crate::cookie::{WireValue, encode_token};
use crate::error::Error;
use crate::events::{AuthEvent, FlowRejection};
use crate::pages::{PageContext, PageKind, PageLink};
use crate::rejection::{
    Answer, CrossSiteRequest, CurrentUserRejection, MissingAuthLayer, NotSignedIn,
    UpstreamUnavailable,
};
use crate::resolve::{AuthState, CookieChange};
use crate::upstream::{Grant, Secret, Session, SessionToken, SignOutOutcome, SignOutScope, User};

fn request_auth(parts: &Parts) -> Result<&Arc<RequestAuth>, MissingAuthLayer> {
    AuthSlot::of(&parts.extensions).ok_or(MissingAuthLayer)
}

/// The signed-in user. Rejects with [`CurrentUserRejection`]: a page
/// navigation without a user is sent to the sign-in page, other requests get
/// 401, and an upstream outage with no usable cached user is a 503 (never a
/// redirect).
///
/// ```
/// use authgate::CurrentUser;
///
/// async fn account(user: CurrentUser) -> String {
///     format!("Hello, {}", user.display_name())
/// }
/// ```
///
/// `Option<CurrentUser>` is `None` when signed out, and also during an
/// outage past the stale window (the cookie is kept; [`Auth::state`] tells
/// the two apart).
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Arc<User>);

impl Deref for CurrentUser {
    type Target = User;

    fn deref(&self) -> &User {
        &self.0
    }
}

/// A page of the layer for an extractor's rejection, in the app's look.
fn layer_page(
    auth: &RequestAuth,
    kind: PageKind,
    status: StatusCode,
    title: &str,
    message: &str,
    retry_after: Option<u32>,
) -> String {
    let user = auth.resolved_user();
    auth.shared.render_page(&PageContext {
        kind,
        status,
        title,
        message,
        link: Some(PageLink {
            href: "/",
            text: "Back to the site",
        }),
        retry_after,
        form_action: None,
        accounts: None,
        user: user.as_deref(),
    })
}

/// A page of the layer in the app's look for a browser that wants one
/// (`None`: answer in plain text), for the guards of other modules.
pub(crate) fn request_page(
    parts: &Parts,
    kind: PageKind,
    status: StatusCode,
    title: &str,
    message: &str,
) -> Option<String> {
    let auth = request_auth(parts).ok()?;
    wants_html(parts).then(|| layer_page(auth, kind, status, title, message, None))
}

/// A GET/HEAD that a browser makes to show a page.
fn is_navigation(parts: &Parts) -> bool {
    matches!(parts.method, Method::GET | Method::HEAD) && wants_html(parts)
}

fn header<'p>(parts: &'p Parts, name: &str) -> &'p str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A browser showing the answer as a page (not `fetch`).
fn wants_html(parts: &Parts) -> bool {
    header(parts, "sec-fetch-mode") == "navigate"
        || header(parts, ACCEPT.as_str()).contains("text/html")
}

/// A form the browser submitted as a page (`<form method="post">`).
fn is_form_submission(parts: &Parts) -> bool {
    let content_type = header(parts, CONTENT_TYPE.as_str());
    !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && wants_html(parts)
        && (content_type.starts_with("application/x-www-form-urlencoded")
            || content_type.starts_with("multipart/form-data"))
}

/// The path of a same-origin URL (an htmx `HX-Current-URL`, a `Referer`),
/// to come back to after signing in.
fn same_origin_path(url: &str, config: &AuthConfig) -> Option<String> {
    let url = Url::parse(url).ok()?;
    (url.origin() == config.public_origin.origin()).then(|| {
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        path
    })
}

/// The sign-in page with `return_to` (and a notice).
fn sign_in_location(config: &AuthConfig, return_to: Option<&str>, notice: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(return_to) = return_to {
        query.append_pair("return_to", return_to);
    }
    if let Some(notice) = notice {
        query.append_pair("notice", notice);
    }
    let query = query.finish();
    let mut location = config.sign_in_page.clone();
    if !query.is_empty() {
        location.push(if location.contains('?') { '&' } else { '?' });
        location.push_str(&query);
    }
    location
}

/// How to tell this request that nobody is signed in (issue 10 point 7):
/// an htmx request gets `HX-Redirect` (a 303 would be followed by htmx and
/// swapped into a fragment); a page navigation a 303 to the sign-in page;
/// a form post whose session ended a 303 with a notice (its URL cannot be
/// reopened with a GET, so the form's page is the way back); anything else
/// (`fetch`, an API client) a 401 problem (RFC 9457).
///
/// `ended` (the browser's session ended, e.g. signed out from another
/// device) adds `notice=session-ended` to a navigation's redirect, so the
/// sign-in page can say why.
fn not_signed_in(parts: &Parts, config: &AuthConfig, ended: bool) -> NotSignedIn {
    let request_path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let safe = matches!(parts.method, Method::GET | Method::HEAD);
    let answer = if header(parts, "hx-request") == "true" {
        let back = if safe {
            Some(request_path.to_owned())
        } else {
            same_origin_path(header(parts, "hx-current-url"), config)
        };
        Answer::HxRedirect(sign_in_location(config, back.as_deref(), None))
    } else if is_navigation(parts) {
        let notice = ended.then_some("session-ended");
        Answer::Redirect(sign_in_location(config, Some(request_path), notice))
    } else if is_form_submission(parts) {
        let back = same_origin_path(header(parts, REFERER.as_str()), config);
        Answer::Redirect(sign_in_location(
            config,
            back.as_deref(),
            Some("session-ended"),
        ))
    } else {
        Answer::Problem
    };
    NotSignedIn { answer }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = CurrentUserRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let auth = request_auth(parts)?;
        match auth.resolve().await.state {
            AuthState::SignedIn { user, .. } => Ok(CurrentUser(user)),
            AuthState::Unavailable => {
                let page = wants_html(parts).then(|| {
                    layer_page(
                        auth,
                        PageKind::Unavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Sign-in service unavailable",
                        "The sign-in service is unavailable right now. You are still signed in; please try again in a moment.",
                        Some(5),
                    )
                });
                Err(UpstreamUnavailable::with_page(page).into())
            }
            AuthState::Anonymous => {
                let ended = auth.session_ended().await;
                Err(not_signed_in(parts, &auth.shared.config, ended).into())
            }
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for CurrentUser {
    type Rejection = MissingAuthLayer;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let auth = request_auth(parts)?;
        Ok(auth.resolve().await.state.user().cloned().map(CurrentUser))
    }
}

/// The request's auth handle: its state, sign-in, sign-out, the token for
/// upstream calls, and the pending password reset.
///
/// ```
/// # #[cfg(feature = "altogic")] mod example {
/// use authgate::{Auth, altogic};
/// use axum::response::Redirect;
///
/// async fn sign_in(auth: Auth, altogic: altogic::Client) -> Redirect {
///     match altogic.sign_in_with_email("ada@example.com", "secret").await {
///         Ok(response) => {
///             if let Some(grant) = response.into_grant() {
///                 auth.sign_in(grant);
///             }
///             Redirect::to("/account")
///         }
///         Err(_) => Redirect::to("/signin?error=1"),
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Auth {
    inner: Arc<RequestAuth>,
    /// The request's session cookie value, read when the handle was made;
    /// decoded on first use (a sealed session costs an AES-GCM open).
    wire: Option<Box<[u8]>>,
    current: Arc<OnceLock<Option<CurrentSession>>>,
    reset_key: Option<Secret>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cookie value is a bearer credential: never printed.
        f.debug_struct("Auth")
            .field("session_cookie", &self.wire.as_ref().map(|_| "<redacted>"))
            .field("reset_key", &self.reset_key)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The handle of a request that went through the layer, for code that
    /// is not an axum extractor (plain tower services).
    pub fn from_request<B>(request: &http::Request<B>) -> Option<Self> {
        let inner = AuthSlot::of(request.extensions())?.clone();
        Some(Self::new(inner, request.headers()))
    }

    fn new(inner: Arc<RequestAuth>, headers: &HeaderMap) -> Self {
        let shared = &inner.shared;
        let reset_key = shared
            .reset_finder
            .raw(headers)
            .and_then(|value| {
                shared
                    .keys
                    .open::<String>(&shared.reset_name, "reset", value)
            })
            .map(Secret::new);
        let scan = shared.cookie_finder.scan(headers);
        let wire = WireValue::of(&scan).map(|wire| wire.as_bytes().into());
        Self {
            inner,
            wire,
            current: Arc::new(OnceLock::new()),
            reset_key,
        }
    }

    /// The request's session, decoded once.
    fn current(&self) -> Option<&CurrentSession> {
        self.current
            .get_or_init(|| {
                let key = self.wire.as_ref()?;
                let session = self.inner.shared.codec.decode(key)?;
                Some(CurrentSession {
                    key: key.clone(),
                    session,
                })
            })
            .as_ref()
    }

    /// Resolves (once per request) and returns who is signed in.
    pub async fn state(&self) -> AuthState {
        self.inner.resolve().await.state
    }

    /// The user, when signed in (fresh or stale).
    pub async fn user(&self) -> Option<Arc<User>> {
        self.inner.resolve().await.state.user().cloned()
    }

    /// True when the browser's session cookie named a session that has
    /// ended: the upstream said it is no longer valid (signed out from
    /// another device, expired, or revoked here). The layer removes the
    /// cookie on this response. Resolves first (once per request). An app
    /// shows "You were signed out" on the next page with it; a malformed
    /// or absent cookie is `false`.
    pub async fn session_ended(&self) -> bool {
        self.inner.session_ended().await
    }

    /// The session token the request's cookie carries, to call the upstream
    /// on the user's behalf. Never log it. After a rotation in this request
    /// it is the old token: use [`session`](Self::session) for the current
    /// one.
    pub fn token(&self) -> Option<&SessionToken> {
        self.current().map(|current| &current.session.token)
    }

    /// The current session: resolves first (once per request), so a
    /// session the upstream rotated is the new one.
    pub async fn session(&self) -> Option<Session> {
        let resolution = self.inner.resolve().await;
        if let CookieChange::Set(next) = &resolution.cookie {
            return self.inner.shared.codec.decode(next.wire.as_bytes());
        }
        self.current().map(|current| current.session.clone())
    }

    /// The configuration of the layer.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.shared.config
    }

    /// A validated absolute redirect target for `input`, or the configured
    /// after-sign-in page.
    pub fn return_to(&self, input: Option<&str>) -> String {
        let shared = &self.inner.shared;
        shared.return_to_or(input, &shared.config.after_sign_in)
    }

    /// Signs the browser in with a session from the upstream: sets the
    /// session cookie on the response (a new value, replacing any previous
    /// one) and primes the cache with the user.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SessionTooLarge`](crate::ErrorKind::SessionTooLarge)
    /// when the session does not fit the session cookie even in chunks
    /// ([`AuthConfig::with_session_cookie_ceiling`]): nothing is set, and
    /// the new upstream session is ended in the background (a retry cannot
    /// help; show the user a page that says so).
    pub fn sign_in(&self, grant: Grant) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let session = grant.session.clone();
        match shared.sign_in(self.current(), self.inner.presence(), grant) {
            Ok(lines) => {
                self.inner.with_changes(|changes| {
                    changes.set_cookies.extend(lines);
                    changes.session_written = true;
                });
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, "authgate: the new session does not fit the session cookie; ending it upstream");
                shared.end_in_background(session);
                Err(err)
            }
        }
    }

    /// Signs out. The cookie is cleared (except for
    /// [`SignOutScope::Others`]) and the local cache forgets the session
    /// even when the upstream call fails; that failure is returned so the
    /// page can say so. An upstream that must finish the sign-out in the
    /// browser (OpenID Connect RP-initiated logout) answers
    /// [`SignOutOutcome::Redirect`]: send the browser there.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), with
    /// nothing changed, for a scope the upstream cannot end; otherwise the
    /// upstream's failure, after signing out locally.
    pub async fn sign_out(&self, scope: SignOutScope) -> Result<SignOutOutcome, Error> {
        let shared = &self.inner.shared;
        if !shared.capabilities.supports_sign_out(scope) {
            return Err(Error::unsupported());
        }
        let Some(current) = self.current() else {
            self.clear_session_cookie();
            return Ok(SignOutOutcome::Done);
        };
        let after = url::Url::parse(&shared.config.absolute(&shared.config.after_sign_out))
            .unwrap_or_else(|_| shared.config.public_origin.clone());
        // Through the request's own resolution: a rotation it makes is the
        // session signed out, and (for `Others`) the cookie set on the way
        // out.
        let resolution = self.inner.resolve().await;
        let result = shared
            .end_session(current, &resolution, scope, &after)
            .await;
        if scope != SignOutScope::Others {
            self.clear_session_cookie();
        }
        result
    }

    fn clear_session_cookie(&self) {
        let shared = &self.inner.shared;
        let lines = shared.codec.removal_lines(self.inner.presence());
        self.inner.with_changes(|changes| {
            changes.set_cookies.extend(lines);
            changes.session_written = true;
            changes.clear_site_data = true;
        });
    }

    /// Forgets this browser's cached user, so the next request reads it
    /// fresh from the upstream: call it after changing the profile (name,
    /// e-mail, phone).
    pub fn refresh(&self) {
        if let Some(current) = self.current() {
            self.inner.shared.resolver.forget(&current.key);
        }
    }

    /// Forgets the cached profile of every session of this user on this
    /// instance (other browsers too), so all of them show a profile change
    /// on their next request.
    pub async fn refresh_everywhere(&self) {
        if let Some(user) = self.user().await {
            self.inner.shared.resolver.refresh_user(&user.id);
        }
    }

    /// Refuses every other session of this user from now on, here and in
    /// lookups already in flight: call it after a change that ends the
    /// user's other sessions upstream (a password or e-mail change).
    pub async fn revoke_other_sessions(&self) {
        if let Some(user) = self.user().await {
            let keep = self.current().map(|current| &*current.key);
            self.inner.shared.resolver.revoke_user(&user.id, keep);
        }
    }

    /// Clears the session cookie and forgets the session here, without an
    /// upstream call: for a session already ended upstream (e.g. this
    /// browser's own session ended by id).
    pub fn sign_out_locally(&self) {
        if let Some(current) = self.current() {
            let resolver = &self.inner.shared.resolver;
            resolver.revoke_session(&current.key, &current.session);
            resolver.emit(AuthEvent::SignedOut {
                user_id: None,
                scope: SignOutScope::This,
                session: resolver.session_hash(&current.key),
            });
        }
        self.clear_session_cookie();
    }

    /// Forgets and tombstones another session at once, after ending it
    /// upstream (e.g. with the Altogic client's `sign_out_session_by_id`),
    /// so that browser is signed out on its next request instead of after
    /// the cache TTL. For upstreams whose cookie holds the token itself
    /// ([`SessionStorage::Plain`](crate::upstream::SessionStorage::Plain));
    /// a sealed cookie cannot be found from its token.
    pub fn revoke(&self, token: &SessionToken) {
        let resolver = &self.inner.shared.resolver;
        let key = encode_token(token);
        resolver.revoke(key.as_bytes(), None);
        resolver.emit(AuthEvent::SignedOut {
            user_id: None,
            scope: SignOutScope::This,
            session: resolver.session_hash(key.as_bytes()),
        });
    }

    /// The password-reset key that a `reset-pwd` landing stored in the
    /// encrypted reset cookie, if one is pending.
    pub fn password_reset_key(&self) -> Option<Secret> {
        self.reset_key.clone()
    }

    /// Sets a new password with the pending reset key: `reset` makes the
    /// upstream call with the key (the typed client's own operation, e.g.
    /// the Altogic client's `reset_pwd_with_token`); on success the reset
    /// cookie is cleared and every cached session of the user is revoked.
    /// Does not sign anyone in (SECURITY.md T-B6.2).
    ///
    /// ```no_run
    /// # #[cfg(feature = "altogic")]
    /// # async fn run(auth: authgate::Auth, altogic: authgate::altogic::Client) -> Result<(), authgate::Error> {
    /// auth.reset_password_with(|key| async move {
    ///     altogic.reset_pwd_with_token(&key, "new password").await
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when no
    /// reset is pending; otherwise what `reset` returned.
    pub async fn reset_password_with<F, Fut>(&self, reset: F) -> Result<(), Error>
    where
        F: FnOnce(Secret) -> Fut,
        Fut: Future<Output = Result<(), Error>>,
    {
        let Some(key) = self.password_reset_key() else {
            return Err(Error::new(crate::error::ErrorKind::InvalidInput));
        };
        reset(key).await?;
        let shared = &self.inner.shared;
        let line = shared.attributes.removal(&shared.reset_name);
        self.inner
            .with_changes(|changes| changes.set_cookies.push(line));
        if let Some(user) = self.user().await {
            shared.resolver.revoke_user(&user.id, None);
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = MissingAuthLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::new(request_auth(parts)?.clone(), &parts.headers))
    }
}

/// Whether a request comes from the app's own pages: `Sec-Fetch-Site:
/// same-origin` (or `none`, a user action), else an `Origin` equal to the
/// public origin. With neither header the answer is no (fail-safe).
pub fn is_same_origin(headers: &HeaderMap, public_origin: &Url) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match headers.get(ORIGIN) {
        Some(origin) => {
            origin.as_bytes() == public_origin.origin().ascii_serialization().as_bytes()
        }
        None => false,
    }
}

/// Rejects state-changing requests (anything but GET, HEAD, OPTIONS) that
/// do not come from the app's own pages, by `Sec-Fetch-Site` or `Origin`
/// (SECURITY.md T-D1). Put it first in a form handler's arguments.
///
/// ```
/// use authgate::{Auth, SameOrigin};
///
/// async fn change_password(_: SameOrigin, auth: Auth) { /* ... */ }
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SameOrigin;

impl<S: Send + Sync> FromRequestParts<S> for SameOrigin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let auth = request_auth(parts).map_err(IntoResponse::into_response)?;
        if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
            || is_same_origin(&parts.headers, &auth.shared.config.public_origin)
        {
            Ok(SameOrigin)
        } else {
            auth.shared.resolver.emit(AuthEvent::FlowRejected {
                reason: FlowRejection::CrossSite,
                session: None,
            });
            let page = wants_html(parts).then(|| {
                layer_page(
                    auth,
                    PageKind::CrossSiteRefused,
                    StatusCode::FORBIDDEN,
                    "Request refused",
                    "This form was sent from another site and was refused.",
                    None,
                )
            });
            Err(CrossSiteRequest::with_page(page).into_response())
        }
    }
}
