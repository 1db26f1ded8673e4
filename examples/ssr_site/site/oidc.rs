//! The site on any OpenID Provider (`AUTHGATE_UPSTREAM=oidc`): Keycloak,
//! Auth0, Zitadel, Okta, Google, or the local `oidc-provider` that
//! `scripts/ssr-site-oidc.sh` starts. The provider owns sign-in and
//! sign-up on its own pages; the layer runs the code flow with PKCE
//! (`/auth/signin/oidc`), keeps the token set sealed in the session cookie,
//! refreshes it before the access token expires, and on sign-out revokes
//! the refresh token and sends the browser to the provider's logout page
//! (RP-initiated logout). The provider can also sign a session out from
//! its side (`POST /auth/backchannel-logout`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authgate::rejection::CurrentUserRejection;
use authgate::{CurrentUser, RequireGroup};
use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use minijinja::{Value, context};
use serde::Deserialize;

use super::Site;

type View = super::View<authgate::oidc::Client>;

/// How recent a sign-in `/account/security` wants.
const STEP_UP_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// The pages of the OpenID Connect site (the layer answers `/auth/*`).
pub(crate) fn routes() -> Router<Arc<Site>> {
    let admin = Router::new()
        .route("/admin", get(admin))
        .route_layer(RequireGroup::new("admin"));
    Router::new()
        .route("/signin", get(sign_in_page))
        .route("/signup", get(sign_up_page))
        .route("/account", get(account))
        .route("/account/security", get(security))
        .merge(admin)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SignInQuery {
    return_to: Option<String>,
}

/// The provider's host, to name it on the buttons.
fn provider_host(view: &View) -> String {
    url::Url::parse(view.client.issuer())
        .ok()
        .and_then(|url| {
            let host = url.host_str()?.to_owned();
            Some(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "your OpenID Provider".to_owned())
}

/// `GET /signin?return_to=`: one button to the provider's sign-in.
async fn sign_in_page(view: View, Query(query): Query<SignInQuery>) -> Response {
    if let Some(signed_in) = view.signed_in_already(query.return_to.as_deref(), "/signin") {
        return signed_in;
    }
    let provider = provider_host(&view);
    view.page(
        StatusCode::OK,
        "oidc_signin.html",
        context! { return_to => query.return_to, signing_up => false, provider },
    )
}

/// `GET /signup`: accounts are made at the provider.
async fn sign_up_page(view: View) -> Response {
    if let Some(signed_in) = view.signed_in_already(None, "/signup") {
        return signed_in;
    }
    let provider = provider_host(&view);
    view.page(
        StatusCode::OK,
        "oidc_signin.html",
        context! { signing_up => true, provider },
    )
}

/// A time as the pages show it.
fn readable(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

fn signed_in_at(auth_time: Option<u64>) -> Option<String> {
    auth_time.map(|secs| readable(UNIX_EPOCH + Duration::from_secs(secs)))
}

/// `GET /account`: the user from the ID token the layer verified (no call
/// to the provider while the cache is warm), the access token's end (the
/// layer refreshes it before then), and the recent auth events.
async fn account(mut view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    let user = match view.signed_in(user) {
        Ok(user) => user,
        Err(page) => return *page,
    };
    let account = Arc::clone(&user.0);
    let session = view.auth.session().await;
    let access_until = session.as_ref().and_then(|s| s.expires_at).map(readable);
    let refreshes = session.as_ref().is_some_and(|s| s.refresh_token.is_some());
    let events = view.site.events.recent_for(&account.id);
    let is_admin = account.groups.iter().any(|g| g == "admin");
    let provider = provider_host(&view);
    view.user = Some(Arc::clone(&account));
    view.page(
        StatusCode::OK,
        "oidc_account.html",
        context! {
            account => Value::from_serialize(&*account),
            signed_in_at => signed_in_at(account.auth_time),
            access_until,
            refreshes,
            is_admin,
            provider,
            events,
        },
    )
}

/// `GET /account/security`: a page that wants a sign-in from the last five
/// minutes (`auth_time`, OpenID Connect Core §2). An older one goes
/// through the provider again with `prompt=login&max_age=300`, back here.
async fn security(view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    let user = match view.signed_in(user) {
        Ok(user) => user,
        Err(page) => return *page,
    };
    if !user.authenticated_within(STEP_UP_MAX_AGE) {
        return Redirect::to(
            "/auth/signin/oidc?prompt=login&max_age=300&return_to=%2Faccount%2Fsecurity",
        )
        .into_response();
    }
    view.page(
        StatusCode::OK,
        "oidc_security.html",
        context! { signed_in_at => signed_in_at(user.auth_time) },
    )
}

/// `GET /admin`: only the `admin` group gets here; anyone else signed in
/// gets 403 from `RequireGroup` (never a sign-in redirect).
async fn admin(view: View, user: CurrentUser) -> Response {
    view.page(
        StatusCode::OK,
        "slashid_admin.html",
        context! { groups => user.groups.clone() },
    )
}
