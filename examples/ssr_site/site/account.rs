//! The account page: the layer's user (no upstream call: the cache is the
//! point), password, e-mail and phone changes and the user's recent auth
//! events; and the sessions page, with the upstream's list of sessions and
//! their sign-out buttons (the "all others" and "everywhere" buttons post
//! to the layer's `/auth/signout`).

use std::sync::Arc;

use authgate::rejection::CurrentUserRejection;
use authgate::{CurrentUser, SameOrigin, SessionToken};
use axum::extract::Form;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::flash::Flash;
use super::render::unavailable;
use super::{Problem, View, filled, phone};

/// Where a form post without a session is sent.
const SIGN_IN_AGAIN: &str = "/signin?return_to=%2Faccount&notice=session-ended";

/// The account page, where its forms' answers go back to.
const ACCOUNT: &str = "/account";

/// The sessions page.
const SESSIONS: &str = "/account/sessions";

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct PasswordForm {
    old_password: String,
    new_password: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct ChangeForm {
    new_email: String,
    new_phone: String,
    password: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct EndSessionForm {
    session_id: String,
}

/// One row of the sessions table.
#[derive(Serialize)]
struct SessionRow {
    id: String,
    device: String,
    created: String,
    /// When it last opened a page of this site (since the site started).
    last_active: Option<String>,
    current: bool,
}

/// `GET /account`. Without a user the `CurrentUser` rejection answers
/// (303 to sign in for a page, 401 for an API call); during an outage with
/// no usable cached user, the site's own 503 page.
pub(crate) async fn page(view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    match view.signed_in(user) {
        Ok(user) => render(view, user),
        Err(page) => *page,
    }
}

/// The signed-in user and their token for a form post, or the response
/// that replaces the handler (sign in again, or the 503 page).
fn require(
    view: &View,
    user: Result<CurrentUser, CurrentUserRejection>,
) -> Result<(CurrentUser, SessionToken), Box<Response>> {
    match (user, view.auth.token()) {
        (Ok(user), Some(token)) => Ok((user, token.clone())),
        (Err(CurrentUserRejection::UpstreamUnavailable(rejection)), _) => {
            Err(Box::new(unavailable(view, rejection.retry_after())))
        }
        _ => Err(Box::new(Redirect::to(SIGN_IN_AGAIN).into_response())),
    }
}

/// Renders the account page; a failed change (the flash's form error)
/// shows at the top with its form. No upstream call: the layer's
/// `CurrentUser` is the account (fresh within the cache TTL; a change made
/// here refreshes it at once through `Auth::refresh`).
fn render(mut view: View, current: CurrentUser) -> Response {
    let account = Arc::clone(&current.0);
    let has_password = account.provider.as_deref().is_none_or(|p| p == "Altogic");
    // How the user signs in, in their words (not the vendor's name).
    let signs_in_with = match account.provider.as_deref() {
        None | Some("Altogic") if account.email.is_some() => "e-mail and password".to_owned(),
        None | Some("Altogic") => "phone number and password".to_owned(),
        Some(provider) => provider.to_owned(),
    };
    let events = view.site.events.recent_for(&account.id);
    view.user = Some(Arc::clone(&account));
    view.page(
        StatusCode::OK,
        "account.html",
        context! {
            account => Value::from_serialize(&*account),
            events,
            has_password,
            signs_in_with,
        },
    )
}

/// `GET /account/sessions`: the sessions list, the one page that asks the
/// upstream (it is the upstream's list).
pub(crate) async fn sessions_page(
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
) -> Response {
    match require(&view, user) {
        Ok((_, token)) => render_sessions(view, &token).await,
        Err(response) => *response,
    }
}

/// Renders the sessions page, with the flash's error above the list.
async fn render_sessions(view: View, token: &SessionToken) -> Response {
    let sessions = view.altogic().get_all_sessions(token).await;
    let mut problem = view
        .form_error
        .as_ref()
        .filter(|error| error.form == "sessions")
        .map(|error| error.message.clone());
    let rows: Vec<SessionRow> = match sessions {
        Ok(sessions) => sessions
            .iter()
            .map(|session| SessionRow {
                id: session.id(),
                device: session.device(),
                created: session
                    .creation_dtm
                    .as_deref()
                    .map_or_else(|| "—".to_owned(), readable_time),
                last_active: view.site.activity.last_seen(&session.id()),
                current: session.token == *token,
            })
            .collect(),
        Err(err) if err.is_invalid_session() => {
            // Ended elsewhere while still cached here: sign this browser out
            // (no upstream call: the session is already gone there).
            view.auth.sign_out_locally();
            return Redirect::to(SIGN_IN_AGAIN).into_response();
        }
        Err(err) => {
            let unavailable = Problem::from_error(&err);
            problem = Some(unavailable.message);
            let mut response = view.page(
                unavailable.status,
                "sessions.html",
                context! { sessions => Vec::<SessionRow>::new(), problem },
            );
            if unavailable.status == StatusCode::SERVICE_UNAVAILABLE {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            return response;
        }
    };
    view.page(
        StatusCode::OK,
        "sessions.html",
        context! { sessions => rows, problem },
    )
}

/// `2024-05-01T09:30:12.345Z` → `2024-05-01 09:30 UTC`; anything else as is.
fn readable_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(date), Some(time)) if rfc3339.ends_with('Z') => format!("{date} {time} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// `POST /account/password` (`old_password`, `new_password`). Every
/// answer is a 303 back to `/account` (post/redirect/get): a notice, or the
/// error at the top of the page with its form.
pub(crate) async fn change_password(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let (_, token) = match require(&view, user) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let problem = if form.old_password.is_empty() {
        Problem::invalid("Enter your current password.").on("current_password")
    } else if form.new_password.is_empty() {
        Problem::invalid("Enter a new password.").on("new_password")
    } else {
        match view
            .altogic()
            .change_password(&token, &form.new_password, &form.old_password)
            .await
        {
            Ok(()) => return view.redirect_with_notice(ACCOUNT, "Your password was changed."),
            Err(err) => Problem::from_error(&err),
        }
    };
    view.redirect_with(
        ACCOUNT,
        &Flash::error("password", "current_password", &problem, None),
    )
}

/// `POST /account/email` (`new_email`, `password`): changed at once, or
/// (confirmation on) a link goes to the new address. A 303 back to
/// `/account` either way.
pub(crate) async fn change_email(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<ChangeForm>,
) -> Response {
    let (user, token) = match require(&view, user) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let new_email = form.new_email.trim();
    let problem = match filled(new_email) {
        None => Problem::invalid("Enter the new e-mail address.").on("email"),
        Some(_) if form.password.is_empty() => {
            Problem::invalid("Enter your current password.").on("current_password")
        }
        Some(new_email) => {
            match view
                .altogic()
                .change_email(&token, &form.password, new_email)
                .await
            {
                Ok(updated) if updated.email != user.email => {
                    // Changed at once (confirmation off): forget this
                    // browser's cached user so `/` shows the new address.
                    view.auth.refresh();
                    return view.redirect_with_notice(ACCOUNT, "Your e-mail address was changed.");
                }
                Ok(_) => {
                    return view.redirect_with_notice(
                        ACCOUNT,
                        "We sent a link to your new e-mail address. Your address changes when you open it.",
                    );
                }
                Err(err) => Problem::from_error(&err),
            }
        }
    };
    view.redirect_with(
        ACCOUNT,
        &Flash::error("email", "email", &problem, Some(new_email)),
    )
}

/// `POST /account/phone` (`new_phone`, `password`): the number is read and
/// normalised to E.164 first; changed at once, or (confirmation on) a code
/// goes to the new number and the code form shows.
pub(crate) async fn change_phone(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<ChangeForm>,
) -> Response {
    let (user, token) = match require(&view, user) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let typed = form.new_phone.trim();
    let problem = match phone::normalize(typed) {
        _ if typed.is_empty() => Problem::invalid("Enter the new phone number.").on("phone"),
        Err(problem) => problem,
        Ok(_) if form.password.is_empty() => {
            Problem::invalid("Enter your current password.").on("current_password")
        }
        Ok(new_phone) => {
            match view
                .altogic()
                .change_phone(&token, &form.password, &new_phone)
                .await
            {
                Ok(updated) if updated.phone != user.phone => {
                    view.auth.refresh();
                    return view.redirect_with_notice(ACCOUNT, "Your phone number was changed.");
                }
                Ok(_) => {
                    let to = format!(
                        "/verify-phone?phone={}",
                        url::form_urlencoded::byte_serialize(new_phone.as_bytes())
                            .collect::<String>()
                    );
                    return view
                        .redirect_with_notice(&to, &format!("We texted a code to {new_phone}."));
                }
                Err(err) => Problem::from_error(&err),
            }
        }
    };
    view.redirect_with(
        ACCOUNT,
        &Flash::error("phone", "phone", &problem, Some(typed)),
    )
}

/// `POST /account/sessions/end` (`session_id`): ends one session by its id
/// (`Session::id`, a hash: forms never carry tokens), then tombstones it in
/// the layer's cache so that browser is signed out on its next request, not
/// after the cache TTL. A 303 back to the sessions page either way.
pub(crate) async fn end_session(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<EndSessionForm>,
) -> Response {
    let (_, token) = match require(&view, user) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let ended = view
        .altogic()
        .sign_out_session_by_id(&token, &form.session_id)
        .await;
    let problem = match ended {
        // This browser's own session (the page offers a plain sign-out for
        // it; a hand-made post may still name it). It has ended upstream
        // already: clear the cookie and the cached user, no upstream call.
        Ok(Some(ended)) if ended == token => {
            view.auth.sign_out_locally();
            return Redirect::to("/?notice=signed-out").into_response();
        }
        Ok(Some(ended)) => {
            view.auth.revoke(&ended);
            return view.redirect_with_notice(SESSIONS, "That session was signed out.");
        }
        Ok(None) => Problem::new(
            StatusCode::NOT_FOUND,
            "That session was already signed out.",
        ),
        Err(err) => Problem::from_error(&err),
    };
    view.redirect_with(SESSIONS, &Flash::error("sessions", "", &problem, None))
}

/// `GET /account/sign-out-everywhere`: asks before signing out every
/// device, this one too (the button posts to the layer's `/auth/signout`).
pub(crate) async fn sign_out_everywhere_page(
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
) -> Response {
    match require(&view, user) {
        Ok(_) => view.page(StatusCode::OK, "sign_out_everywhere.html", context! {}),
        Err(response) => *response,
    }
}
