//! The account page: the layer's user (no upstream call: the cache is the
//! point), password, e-mail and phone changes and the user's recent auth
//! events; and the sessions page, with the upstream's list of sessions and
//! their sign-out buttons (the "all others" and "everywhere" buttons post
//! to the layer's `/auth/signout`).

use std::sync::Arc;

use authgate::rejection::CurrentUserRejection;
use authgate::{CurrentUser, SameOrigin, SessionToken};
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::render::unavailable;
use super::{Problem, View, filled};

/// Where a form post without a session is sent.
const SIGN_IN_AGAIN: &str = "/signin?return_to=%2Faccount";

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
    current: bool,
}

/// Which form of the page a problem belongs to.
#[derive(Clone, Copy)]
enum Section {
    Password,
    Email,
    Phone,
}

/// `GET /account`. Without a user the `CurrentUser` rejection answers
/// (303 to sign in for a page, 401 for an API call); during an outage with
/// no usable cached user, the site's own 503 page.
pub(crate) async fn page(view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    match user {
        Ok(user) => render(view, user, None, context! {}).await,
        Err(CurrentUserRejection::UpstreamUnavailable(rejection)) => {
            unavailable(&view, rejection.retry_after())
        }
        Err(rejection) => rejection.into_response(),
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

/// Renders the account page, with `problem` shown on the form it belongs
/// to. No upstream call: the layer's `CurrentUser` is the account (fresh
/// within the cache TTL; a change made here refreshes it at once through
/// `Auth::refresh`).
async fn render(
    mut view: View,
    current: CurrentUser,
    problem: Option<(Section, Problem)>,
    values: Value,
) -> Response {
    let account = Arc::clone(&current.0);
    let mut errors = ErrorSlots::default();
    let status = match problem {
        Some((section, problem)) => {
            let status = problem.status;
            errors.put(section, problem);
            status
        }
        None => StatusCode::OK,
    };
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
        status,
        "account.html",
        context! {
            account => Value::from_serialize(&*account),
            events,
            has_password,
            signs_in_with,
            errors,
            values,
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
        Ok((_, token)) => render_sessions(view, &token, None).await,
        Err(response) => *response,
    }
}

/// Renders the sessions page, with `problem` above the list.
async fn render_sessions(view: View, token: &SessionToken, problem: Option<Problem>) -> Response {
    let sessions = view.altogic().get_all_sessions(token).await;
    let mut errors = ErrorSlots::default();
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
            errors.sessions = Some(Problem::from_error(&err));
            Vec::new()
        }
    };
    let status = match problem {
        Some(problem) => {
            let status = problem.status;
            errors.sessions = Some(problem);
            status
        }
        None => StatusCode::OK,
    };
    view.page(
        status,
        "sessions.html",
        context! { sessions => rows, errors },
    )
}

#[derive(Default, Serialize)]
struct ErrorSlots {
    password: Option<Problem>,
    email: Option<Problem>,
    phone: Option<Problem>,
    sessions: Option<Problem>,
}

impl ErrorSlots {
    fn put(&mut self, section: Section, problem: Problem) {
        let slot = match section {
            Section::Password => &mut self.password,
            Section::Email => &mut self.email,
            Section::Phone => &mut self.phone,
        };
        *slot = Some(problem);
    }
}

/// `2024-05-01T09:30:12.345Z` → `2024-05-01 09:30 UTC`; anything else as is.
fn readable_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(date), Some(time)) if rfc3339.ends_with('Z') => format!("{date} {time} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// `POST /account/password` (`old_password`, `new_password`)
pub(crate) async fn change_password(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let (user, token) = match require(&view, user) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let problem = if form.old_password.is_empty() || form.new_password.is_empty() {
        Problem::invalid("Enter your current password and a new one.")
    } else {
        match view
            .altogic()
            .change_password(&token, &form.new_password, &form.old_password)
            .await
        {
            Ok(()) => return Redirect::to("/account?notice=password-changed").into_response(),
            Err(err) => Problem::from_error(&err),
        }
    };
    render(view, user, Some((Section::Password, problem)), context! {}).await
}

/// `POST /account/email` (`new_email`, `password`): changed at once, or
/// (confirmation on) a link goes to the new address.
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
        Some(new_email) if !form.password.is_empty() => {
            match view
                .altogic()
                .change_email(&token, &form.password, new_email)
                .await
            {
                Ok(updated) if updated.email != user.email => {
                    // Changed at once (confirmation off): forget this
                    // browser's cached user so `/` shows the new address.
                    view.auth.refresh();
                    return Redirect::to("/account?notice=email-changed").into_response();
                }
                Ok(_) => return Redirect::to("/account?notice=email-change-sent").into_response(),
                Err(err) => Problem::from_error(&err),
            }
        }
        _ => Problem::invalid("Enter the new e-mail address and your current password."),
    };
    let values = context! { new_email };
    render(view, user, Some((Section::Email, problem)), values).await
}

/// `POST /account/phone` (`new_phone`, `password`): changed at once, or
/// (confirmation on) a code goes to the new number and the code form shows.
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
    let new_phone = form.new_phone.trim();
    let problem = match filled(new_phone) {
        Some(new_phone) if !form.password.is_empty() => {
            match view
                .altogic()
                .change_phone(&token, &form.password, new_phone)
                .await
            {
                Ok(updated) if updated.phone != user.phone => {
                    view.auth.refresh();
                    return Redirect::to("/account?notice=phone-changed").into_response();
                }
                Ok(_) => {
                    return view
                        .with_notice(format!("We texted a code to {new_phone}."))
                        .page(
                            StatusCode::OK,
                            "verify_phone.html",
                            context! { phone => new_phone, can_resend => false },
                        );
                }
                Err(err) => Problem::from_error(&err),
            }
        }
        _ => Problem::invalid("Enter the new phone number and your current password."),
    };
    let values = context! { new_phone };
    render(view, user, Some((Section::Phone, problem)), values).await
}

/// `POST /account/sessions/end` (`session_id`): ends one session by its id
/// (`Session::id`, a hash: forms never carry tokens), then tombstones it in
/// the layer's cache so that browser is signed out on its next request, not
/// after the cache TTL.
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
            return Redirect::to("/").into_response();
        }
        Ok(Some(ended)) => {
            view.auth.revoke(&ended);
            return Redirect::to("/account/sessions?notice=session-ended").into_response();
        }
        Ok(None) => Problem {
            status: StatusCode::NOT_FOUND,
            message: "That session was already signed out.".to_owned(),
            code: None,
        },
        Err(err) => Problem::from_error(&err),
    };
    render_sessions(view, &token, Some(problem)).await
}
