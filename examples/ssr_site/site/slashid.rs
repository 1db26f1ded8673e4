//! The site on SlashID (`AUTHGATE_UPSTREAM=slashid`): the same pages and
//! routes as on Altogic, with the sign-in SlashID offers — its hosted login
//! (the layer's `/auth/signin/slashid`, a code flow with PKCE) and an
//! anonymous person — and what a SlashID session carries: groups, the
//! organization, an organization switch, and an `/admin` page only the
//! `admin` group may open (`authgate::RequireGroup`).
//!
//! A SlashID session is a signed JWT: the layer verifies it locally (no
//! network on a warm or a cold request once the key set is cached), and
//! sign-out revokes it at SlashID (`POST /token/revoke`).

use std::sync::Arc;

use authgate::rejection::CurrentUserRejection;
use authgate::slashid::{self, Organization};
use authgate::{CurrentUser, RequireGroup, SameOrigin, User};
use axum::Router;
use axum::extract::{Form, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::render::unavailable;
use super::{Problem, Site};

type View = super::View<slashid::Client>;

/// The pages and forms of the SlashID site (the layer answers `/auth/*`).
pub(crate) fn routes() -> Router<Arc<Site>> {
    let admin = Router::new()
        .route("/admin", get(admin))
        .route_layer(RequireGroup::new("admin"));
    Router::new()
        .route("/signin", get(sign_in_page))
        .route("/signup", get(sign_up_page))
        .route("/signin/guest", post(sign_in_as_guest))
        .route("/account", get(account))
        .route(
            "/account/organizations",
            get(organizations).post(switch_organization),
        )
        .route("/account/security", get(security))
        .merge(admin)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SignInQuery {
    return_to: Option<String>,
}

/// `GET /signin?return_to=`: SlashID's hosted login, or a guest.
async fn sign_in_page(view: View, Query(query): Query<SignInQuery>) -> Response {
    if let Some(signed_in) = view.signed_in_already(query.return_to.as_deref(), "/signin") {
        return signed_in;
    }
    view.page(
        StatusCode::OK,
        "slashid_signin.html",
        context! { return_to => query.return_to, signing_up => false },
    )
}

/// `GET /signup`: SlashID's hosted login creates the account too.
async fn sign_up_page(view: View) -> Response {
    if let Some(signed_in) = view.signed_in_already(None, "/signup") {
        return signed_in;
    }
    view.page(
        StatusCode::OK,
        "slashid_signin.html",
        context! { signing_up => true },
    )
}

/// `POST /signin/guest`: an anonymous person (SlashID
/// `createAnonymousUser`).
async fn sign_in_as_guest(_: SameOrigin, view: View) -> Response {
    let result = view.client.create_anonymous_person(None).await;
    let problem = match result {
        Ok(grant) => match view.auth.sign_in(grant) {
            Ok(()) => {
                return view.redirect_with_notice("/account", "You are signed in as a guest.");
            }
            Err(err) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("You could not be signed in: {err}."),
            ),
        },
        Err(err) => Problem::from_error(&err),
    };
    view.form_error(
        "slashid_signin.html",
        &problem,
        context! { error => problem, signing_up => false },
    )
}

/// How a SlashID user signs in, in their words.
fn signs_in_with(user: &User) -> String {
    if user.anonymous {
        return "a guest account (on this browser only)".to_owned();
    }
    let methods: Vec<String> = slashid::UserClaims::of(user)
        .map(|claims| claims.authenticated_methods)
        .unwrap_or_default()
        .iter()
        .map(|method| match method.as_str() {
            "email_link" => "an e-mail link".to_owned(),
            "otp_via_sms" => "a texted code".to_owned(),
            "webauthn" => "a passkey".to_owned(),
            "password" => "a password".to_owned(),
            other => other.replace('_', " "),
        })
        .collect();
    if methods.is_empty() {
        "SlashID".to_owned()
    } else {
        format!("SlashID ({})", methods.join(", "))
    }
}

/// `GET /account`: the layer's user — verified from the JWT, no upstream
/// call — with its groups and organization, and the recent auth events.
async fn account(mut view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    let user = match view.signed_in(user) {
        Ok(user) => user,
        Err(page) => return *page,
    };
    let account = Arc::clone(&user.0);
    let events = view.site.events.recent_for(&account.id);
    let is_admin = account.groups.iter().any(|g| g == "admin");
    view.user = Some(Arc::clone(&account));
    view.page(
        StatusCode::OK,
        "slashid_account.html",
        context! {
            account => Value::from_serialize(&*account),
            signs_in_with => signs_in_with(&account),
            is_admin,
            events,
        },
    )
}

/// One row of the organizations table.
#[derive(Serialize)]
struct OrgRow {
    id: String,
    name: String,
    current: bool,
}

/// `GET /account/organizations`: the person's organizations (SlashID
/// `GET /me`, the one page that asks), with a switch.
async fn organizations(view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    let (user, token) = match (user, view.auth.token().cloned()) {
        (Ok(user), Some(token)) => (user, token),
        (Err(CurrentUserRejection::UpstreamUnavailable(rejection)), _) => {
            return unavailable(&view, rejection.retry_after());
        }
        (Err(rejection), _) => return rejection.into_response(),
        (Ok(_), None) => return Redirect::to("/signin").into_response(),
    };
    let problem = view.form_error.as_ref().map(|error| error.message.clone());
    match view.client.get_organizations(&token).await {
        Ok(orgs) => {
            let rows: Vec<OrgRow> = orgs
                .iter()
                .map(|org: &Organization| OrgRow {
                    id: org.id.clone(),
                    name: org.org_name.clone().unwrap_or_else(|| org.id.clone()),
                    current: user.org.as_deref() == Some(org.id.as_str()),
                })
                .collect();
            view.page(
                StatusCode::OK,
                "slashid_organizations.html",
                context! { organizations => rows, problem },
            )
        }
        Err(err) => {
            let problem = Problem::from_error(&err);
            view.form_error(
                "slashid_organizations.html",
                &problem,
                context! { organizations => Vec::<OrgRow>::new(), problem => problem.message },
            )
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct SwitchForm {
    organization: String,
}

/// `POST /account/organizations` (`organization`): a token of the same
/// person in that organization (SlashID `getTokenForOrganization`) replaces
/// the session cookie; the old organization's cached session is forgotten.
async fn switch_organization(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<SwitchForm>,
) -> Response {
    let (Ok(_), Some(token)) = (user, view.auth.token().cloned()) else {
        return Redirect::to("/signin?return_to=%2Faccount%2Forganizations&notice=session-ended")
            .into_response();
    };
    let switched = view
        .client
        .token_for_organization(&token, form.organization.trim())
        .await;
    match switched.and_then(|grant| view.auth.sign_in(grant)) {
        Ok(()) => view.redirect_with_notice("/account", "You switched organization."),
        Err(err) => {
            let problem = Problem::from_error(&err);
            view.redirect_with(
                "/account/organizations",
                &super::flash::Flash::error("organizations", "", &problem, None),
            )
        }
    }
}

/// How recent a sign-in `/account/security` wants.
const STEP_UP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// `GET /account/security`: a page that wants a recent sign-in (the
/// server's side of SlashID's step-up, the seed's browser-only `mfa()`).
/// A token issued more than five minutes ago sends the browser through
/// SlashID's hosted login again (`prompt=login`), back to this page.
async fn security(view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    let user = match view.signed_in(user) {
        Ok(user) => user,
        Err(page) => return *page,
    };
    let Ok(claims) = slashid::UserClaims::of(&user) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if !claims.is_recent(STEP_UP_MAX_AGE, None, std::time::SystemTime::now()) {
        return Redirect::to("/auth/signin/slashid?prompt=login&return_to=%2Faccount%2Fsecurity")
            .into_response();
    }
    let methods = claims.authenticated_methods.join(", ");
    view.page(
        StatusCode::OK,
        "slashid_security.html",
        context! { methods, signed_in_at => claims.issued_at.map(readable) },
    )
}

/// `2026-11-30 18:26 UTC`.
fn readable(at: std::time::SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
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
