//! Flash messages: a notice, or a form's error, carried across one
//! redirect (post/redirect/get), so a reload never posts a form again and
//! the message shows at the top of the page the user lands on.
//!
//! They travel the way axum apps carry them: an encrypted cookie through
//! axum-extra's [`PrivateCookieJar`], keyed by
//! [`AuthLayer::cookie_jar_key`](authgate::AuthLayer::cookie_jar_key), so
//! the site keeps one secret (`AUTHGATE_KEY`) for both. The cookie lives a
//! minute at most and is removed by the page that shows it.

use axum::http::HeaderValue;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, PrivateCookieJar, SameSite};
use serde::{Deserialize, Serialize};

use super::Problem;

/// How long a flash waits for its page.
const MAX_AGE: time::Duration = time::Duration::seconds(60);

/// What one redirect carries.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Flash {
    /// A sentence for the top of the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) notice: Option<String>,
    /// A form's error: the page shows it at the top, with that form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<FormError>,
}

/// The error of one form, for the page that shows the form again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FormError {
    /// Which form (`password`, `email`, `phone`, `sessions`).
    pub(crate) form: String,
    /// The field to focus (see [`Problem::field`]).
    pub(crate) field: String,
    /// The sentence.
    pub(crate) message: String,
    /// The upstream's code, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<String>,
    /// What the user typed in the form's main field, to fill it again
    /// (never a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
}

impl Flash {
    /// A notice.
    pub(crate) fn notice(text: impl Into<String>) -> Self {
        Self {
            notice: Some(text.into()),
            error: None,
        }
    }

    /// `problem` on `form`, focusing its field (or `main_field`), with the
    /// typed `value` to fill in again.
    pub(crate) fn error(
        form: &str,
        main_field: &str,
        problem: &Problem,
        value: Option<&str>,
    ) -> Self {
        Self {
            notice: None,
            error: Some(FormError {
                form: form.to_owned(),
                field: problem.field.unwrap_or(main_field).to_owned(),
                message: problem.message.clone(),
                code: problem.code.clone(),
                value: value.map(str::to_owned),
            }),
        }
    }
}

/// The flash cookie's name: `__Host-` on HTTPS, so no subdomain can plant
/// one.
pub(crate) fn cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-flash" } else { "flash" }
}

/// The flash in the request's jar, if any opens and parses.
pub(crate) fn read(jar: &PrivateCookieJar, secure: bool) -> Option<Flash> {
    let cookie = jar.get(cookie_name(secure))?;
    serde_json::from_str(cookie.value()).ok()
}

/// A 303 to `to` that carries `flash`.
pub(crate) fn redirect(jar: PrivateCookieJar, secure: bool, to: &str, flash: &Flash) -> Response {
    let Ok(json) = serde_json::to_string(flash) else {
        return Redirect::to(to).into_response();
    };
    let cookie = Cookie::build((cookie_name(secure), json))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(MAX_AGE);
    (jar.add(cookie), Redirect::to(to)).into_response()
}

/// Removes the flash cookie on `response` (its page shows it now).
pub(crate) fn clear(response: &mut Response, secure: bool) {
    let removal = Cookie::build((cookie_name(secure), ""))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::ZERO);
    if let Ok(value) = HeaderValue::from_str(&removal.to_string()) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}
