//! The extractors: [`CurrentUser`] (and `Option<CurrentUser>`), the
//! [`Auth`] handle, and the [`SameOrigin`] guard for form posts.

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, ORIGIN};
use http::request::Parts;
use http::{HeaderMap, Method};
use url::Url;

use crate::config::AuthConfig;
use crate::context::{AuthSlot, RequestAuth};
use crate::error::Error;
use crate::events::{AuthEvent, FlowRejection};
use crate::rejection::{
    CrossSiteRequest, CurrentUserRejection, MissingAuthLayer, NotSignedIn, UpstreamUnavailable,
};
use crate::resolve::AuthState;
use crate::upstream::{Grant, Secret, SessionToken, SignOutScope, User};

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

/// A GET/HEAD that a browser makes to show a page.
fn is_navigation(parts: &Parts) -> bool {
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return false;
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    header("sec-fetch-mode") == "navigate" || header(ACCEPT.as_str()).contains("text/html")
}

fn not_signed_in(parts: &Parts, config: &AuthConfig) -> NotSignedIn {
    let sign_in = is_navigation(parts).then(|| {
        let return_to = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut location = config.sign_in_page.clone();
        location.push(if location.contains('?') { '&' } else { '?' });
        location.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .append_pair("return_to", return_to)
                .finish(),
        );
        location
    });
    NotSignedIn { sign_in }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = CurrentUserRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let auth = request_auth(parts)?;
        match auth.resolve().await.state {
            AuthState::SignedIn { user, .. } => Ok(CurrentUser(user)),
            AuthState::Unavailable => Err(UpstreamUnavailable.into()),
            AuthState::Anonymous => Err(not_signed_in(parts, &auth.shared.config).into()),
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
/// ```
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<RequestAuth>,
    token: Option<SessionToken>,
    reset_key: Option<Secret>,
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
        let token = match shared.cookie_finder.find(headers) {
            crate::cookie::SessionCookie::Present(token) => Some(token),
            _ => None,
        };
        Self {
            inner,
            token,
            reset_key,
        }
    }

    /// Resolves (once per request) and returns who is signed in.
    pub async fn state(&self) -> AuthState {
        self.inner.resolve().await.state
    }

    /// The user, when signed in (fresh or stale).
    pub async fn user(&self) -> Option<Arc<User>> {
        self.inner.resolve().await.state.user().cloned()
    }

    /// The request's session token, to call the upstream on the user's
    /// behalf. Never log it.
    pub fn token(&self) -> Option<&SessionToken> {
        self.token.as_ref()
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
    pub fn sign_in(&self, grant: Grant) {
        let line = self.inner.shared.sign_in(self.token.as_ref(), grant);
        self.inner.with_changes(|changes| {
            changes.set_cookies.push(line);
            changes.session_written = true;
        });
    }

    /// Signs out. The cookie is cleared (except for
    /// [`SignOutScope::Others`]) and the local cache forgets the session
    /// even when the upstream call fails; that failure is returned so the
    /// page can say so.
    pub async fn sign_out(&self, scope: SignOutScope) -> Result<(), Error> {
        let Some(token) = self.token.as_ref() else {
            self.clear_session_cookie();
            return Ok(());
        };
        let shared = &self.inner.shared;
        let user_id = self.user().await.map(|user| user.id.clone());
        let result = shared.resolver.upstream().sign_out(token, scope).await;
        if let Err(err) = &result {
            tracing::warn!(error = %err, "authgate: upstream sign-out failed; cleared locally");
        }
        match scope {
            SignOutScope::This => shared.resolver.revoke(token),
            SignOutScope::All | SignOutScope::Others => {
                if let Some(user_id) = &user_id {
                    let keep = (scope == SignOutScope::Others).then_some(token);
                    shared.resolver.revoke_user(user_id, keep);
                }
                if scope == SignOutScope::All {
                    shared.resolver.revoke(token);
                }
            }
        }
        if scope != SignOutScope::Others {
            self.clear_session_cookie();
        }
        shared.resolver.emit(AuthEvent::SignedOut {
            user_id,
            scope,
            session: shared.resolver.session_hash(token),
        });
        result
    }

    fn clear_session_cookie(&self) {
        let shared = &self.inner.shared;
        let line = shared.attributes.removal(&shared.session_name);
        self.inner.with_changes(|changes| {
            changes.set_cookies.push(line);
            changes.session_written = true;
        });
    }

    /// Forgets this browser's cached user, so the next request reads it
    /// fresh from the upstream: call it after changing the profile (name,
    /// e-mail, phone).
    pub fn refresh(&self) {
        if let Some(token) = &self.token {
            self.inner.shared.resolver.forget(token);
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

    /// Clears the session cookie and forgets the session here, without an
    /// upstream call: for a session already ended upstream (e.g. this
    /// browser's own session ended by id).
    pub fn sign_out_locally(&self) {
        if let Some(token) = &self.token {
            self.revoke(token);
        }
        self.clear_session_cookie();
    }

    /// Forgets and tombstones another session at once, after ending it
    /// upstream (e.g. with
    /// [`altogic::Client::sign_out_session_by_id`](crate::altogic::Client::sign_out_session_by_id)),
    /// so that browser is signed out on its next request instead of after
    /// the cache TTL.
    pub fn revoke(&self, token: &SessionToken) {
        let resolver = &self.inner.shared.resolver;
        resolver.revoke(token);
        resolver.emit(AuthEvent::SignedOut {
            user_id: None,
            scope: SignOutScope::This,
            session: resolver.session_hash(token),
        });
    }

    /// The password-reset key that a `reset-pwd` landing stored in the
    /// encrypted reset cookie, if one is pending.
    pub fn password_reset_key(&self) -> Option<Secret> {
        self.reset_key.clone()
    }

    /// Sets a new password with the pending reset key and clears the reset
    /// cookie. Does not sign anyone in (SECURITY.md T-B6.2).
    pub async fn reset_password(&self, new_password: &str) -> Result<(), Error> {
        let Some(key) = self.password_reset_key() else {
            return Err(Error::new(crate::error::ErrorKind::InvalidInput));
        };
        let shared = &self.inner.shared;
        shared
            .resolver
            .upstream()
            .reset_password(&key, new_password)
            .await?;
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
            Err(CrossSiteRequest.into_response())
        }
    }
}
