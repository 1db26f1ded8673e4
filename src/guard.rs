//! Authorization by group: [`RequireGroup`], a route layer that lets
//! through only signed-in users of a group. Upstream-neutral: it reads
//! [`User::groups`](crate::User::groups), which each upstream fills from
//! its own source (SlashID's groups claim, a test kit user's groups).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts as _;
use axum::response::{IntoResponse, Response};
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Request, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{CurrentUser, request_page};
use crate::pages::PageKind;

/// A route layer that lets through only a signed-in user who is in a group
/// ([`User::groups`](crate::User::groups)):
///
/// - signed in and in the group: the route runs;
/// - signed in, not in the group: **403**, never a sign-in redirect (signing
///   in again cannot help; RFC 9110 §15.5.4), with authgate's page
///   ([`PageKind::Forbidden`]) for a browser and plain text otherwise;
/// - signed out, or the upstream unavailable: [`CurrentUser`]'s own
///   rejection (a sign-in redirect or 401; a 503).
///
/// ```
/// use authgate::RequireGroup;
/// use axum::{Router, routing::get};
///
/// let admin: Router = Router::new()
///     .route("/admin", get(|| async { "admins only" }))
///     .route_layer(RequireGroup::new("admin"));
/// # let _ = admin;
/// ```
///
/// In a handler, `user.groups.iter().any(|g| g == "admin")` on a
/// [`CurrentUser`] does the same check.
#[derive(Clone)]
pub struct RequireGroup {
    group: Arc<str>,
}

impl RequireGroup {
    /// Requires membership of `group` (compared exactly).
    pub fn new(group: impl Into<Arc<str>>) -> Self {
        Self {
            group: group.into(),
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl fmt::Debug for RequireGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequireGroup").field(&self.group).finish()
    }
}

impl<S> Layer<S> for RequireGroup {
    type Service = RequireGroupService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireGroupService {
            inner,
            group: self.group.clone(),
        }
    }
}

/// The service of [`RequireGroup`].
#[derive(Clone)]
pub struct RequireGroupService<S> {
    inner: S,
    group: Arc<str>,
}

impl<S> fmt::Debug for RequireGroupService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireGroupService")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

const FORBIDDEN_TEXT: &str = "You are signed in, but this page is not open to your account.";

impl<S, B> Service<Request<B>> for RequireGroupService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was made ready runs the request (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let group = self.group.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let user = match CurrentUser::from_request_parts(&mut parts, &()).await {
                Ok(user) => user,
                Err(rejection) => return Ok(rejection.into_response()),
            };
            if user.groups.iter().any(|g| **g == *group) {
                return inner.call(Request::from_parts(parts, body)).await;
            }
            tracing::debug!(group = %group, "authgate: a signed-in user outside the group was refused");
            let page = request_page(
                &parts,
                PageKind::Forbidden,
                StatusCode::FORBIDDEN,
                "Not allowed",
                FORBIDDEN_TEXT,
            );
            let mut response = match page {
                Some(html) => (StatusCode::FORBIDDEN, axum::response::Html(html)).into_response(),
                None => (StatusCode::FORBIDDEN, FORBIDDEN_TEXT).into_response(),
            };
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        })
    }
}
