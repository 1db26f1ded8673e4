//! Rejections of the extractors: [`CurrentUserRejection`] and its leaves.

use std::fmt;

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

/// The request did not pass through [`AuthLayer`](crate::AuthLayer).
/// A 500 whose body names the layer to install.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct MissingAuthLayer;

impl MissingAuthLayer {
    /// The status: 500.
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The body text.
    pub fn body_text(&self) -> &'static str {
        "authgate: the auth context is missing; wrap the app in authgate::AuthLayer (e.g. `AuthLayer::new(config, upstream).layer(app)`)"
    }
}

impl fmt::Display for MissingAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.body_text())
    }
}

impl std::error::Error for MissingAuthLayer {}

impl IntoResponse for MissingAuthLayer {
    fn into_response(self) -> Response {
        tracing::error!("{}", self.body_text());
        (self.status(), self.body_text()).into_response()
    }
}

/// Nobody is signed in. The answer fits how the request was made:
///
/// | request | answer |
/// |---|---|
/// | page navigation (`GET`/`HEAD`, `Sec-Fetch-Mode: navigate` or `Accept: text/html`) | 303 to the sign-in page with `return_to` |
/// | htmx (`HX-Request: true`) | 401 with `HX-Redirect` to the sign-in page (htmx would follow a 303 and swap the sign-in page into a fragment) |
/// | a form post (`application/x-www-form-urlencoded` or `multipart/form-data`, as a page) | 303 to the sign-in page with `notice=session-ended` and the form's page (same-origin `Referer`) as `return_to` |
/// | anything else (`fetch`, an API client) | 401 `application/problem+json` (RFC 9457) |
#[derive(Debug, Clone)]
pub struct NotSignedIn {
    pub(crate) answer: Answer,
}

#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Redirect(String),
    HxRedirect(String),
    Problem,
}

impl NotSignedIn {
    /// 303 for a navigation or a form post, else 401.
    pub fn status(&self) -> StatusCode {
        match self.answer {
            Answer::Redirect(_) => StatusCode::SEE_OTHER,
            Answer::HxRedirect(_) | Answer::Problem => StatusCode::UNAUTHORIZED,
        }
    }

    /// The sign-in page the browser is sent to (by `Location` or
    /// `HX-Redirect`), if it is sent anywhere.
    pub fn location(&self) -> Option<&str> {
        match &self.answer {
            Answer::Redirect(location) | Answer::HxRedirect(location) => Some(location),
            Answer::Problem => None,
        }
    }

    /// The problem body (RFC 9457) of a 401.
    pub fn body_text(&self) -> &'static str {
        r#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"Sign in to continue.","error":"not_signed_in"}"#
    }
}

impl fmt::Display for NotSignedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not signed in")
    }
}

impl std::error::Error for NotSignedIn {}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        let location = self.location().map(HeaderValue::from_str);
        let mut response = match (&self.answer, location) {
            (Answer::Redirect(_), Some(Ok(location))) => {
                let mut response = StatusCode::SEE_OTHER.into_response();
                response.headers_mut().insert(LOCATION, location);
                response
            }
            (Answer::HxRedirect(_), Some(Ok(location))) => {
                let mut response = StatusCode::UNAUTHORIZED.into_response();
                response.headers_mut().insert("hx-redirect", location);
                response
            }
            _ => {
                let mut response = (StatusCode::UNAUTHORIZED, self.body_text()).into_response();
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                response
            }
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The upstream could not be asked and no cached user is usable: a 503
/// with `Retry-After`, never a redirect (no loops, nobody signed out by an
/// outage).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct UpstreamUnavailable {
    /// The page for a browser navigation, drawn by the app's renderer.
    html: Option<String>,
}

impl UpstreamUnavailable {
    /// The status: 503.
    pub fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    /// The body text.
    pub fn body_text(&self) -> &'static str {
        "The sign-in service is unavailable right now. You are still signed in; please try again in a moment."
    }

    /// Seconds to wait before retrying.
    pub fn retry_after(&self) -> u32 {
        5
    }
}

impl fmt::Display for UpstreamUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the auth upstream is unavailable")
    }
}

impl std::error::Error for UpstreamUnavailable {}

impl UpstreamUnavailable {
    /// With the page a browser navigation gets.
    pub(crate) fn with_page(html: Option<String>) -> Self {
        Self { html }
    }
}

impl IntoResponse for UpstreamUnavailable {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after();
        let mut response = match self.html {
            Some(html) => (status, axum::response::Html(html)).into_response(),
            None => (status, self.body_text()).into_response(),
        };
        let headers = response.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// Why [`CurrentUser`](crate::CurrentUser) rejected the request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CurrentUserRejection {
    /// See [`MissingAuthLayer`].
    MissingAuthLayer(MissingAuthLayer),
    /// See [`NotSignedIn`].
    NotSignedIn(NotSignedIn),
    /// See [`UpstreamUnavailable`].
    UpstreamUnavailable(UpstreamUnavailable),
}

impl CurrentUserRejection {
    /// The HTTP status of the rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingAuthLayer(r) => r.status(),
            Self::NotSignedIn(r) => r.status(),
            Self::UpstreamUnavailable(r) => r.status(),
        }
    }

    /// The body text of the rejection.
    pub fn body_text(&self) -> &'static str {
        match self {
            Self::MissingAuthLayer(r) => r.body_text(),
            Self::NotSignedIn(r) => r.body_text(),
            Self::UpstreamUnavailable(r) => r.body_text(),
        }
    }
}

impl fmt::Display for CurrentUserRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAuthLayer(r) => r.fmt(f),
            Self::NotSignedIn(r) => r.fmt(f),
            Self::UpstreamUnavailable(r) => r.fmt(f),
        }
    }
}

impl std::error::Error for CurrentUserRejection {}

impl From<MissingAuthLayer> for CurrentUserRejection {
    fn from(r: MissingAuthLayer) -> Self {
        Self::MissingAuthLayer(r)
    }
}

impl From<NotSignedIn> for CurrentUserRejection {
    fn from(r: NotSignedIn) -> Self {
        Self::NotSignedIn(r)
    }
}

impl From<UpstreamUnavailable> for CurrentUserRejection {
    fn from(r: UpstreamUnavailable) -> Self {
        Self::UpstreamUnavailable(r)
    }
}

impl IntoResponse for CurrentUserRejection {
    fn into_response(self) -> Response {
        match self {
            Self::MissingAuthLayer(r) => r.into_response(),
            Self::NotSignedIn(r) => r.into_response(),
            Self::UpstreamUnavailable(r) => r.into_response(),
        }
    }
}

/// A state-changing request that did not come from the app's own pages
/// (SECURITY.md T-D1): 403.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CrossSiteRequest {
    /// The page for a browser navigation, drawn by the app's renderer.
    html: Option<String>,
}

impl CrossSiteRequest {
    /// The body text.
    pub fn body_text(&self) -> &'static str {
        "This form was sent from another site and was refused."
    }
}

impl fmt::Display for CrossSiteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cross-site request refused")
    }
}

impl std::error::Error for CrossSiteRequest {}

impl CrossSiteRequest {
    /// With the page a browser navigation gets.
    pub(crate) fn with_page(html: Option<String>) -> Self {
        Self { html }
    }
}

impl IntoResponse for CrossSiteRequest {
    fn into_response(self) -> Response {
        let mut response = match self.html {
            Some(html) => (StatusCode::FORBIDDEN, axum::response::Html(html)).into_response(),
            None => (StatusCode::FORBIDDEN, self.body_text()).into_response(),
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
