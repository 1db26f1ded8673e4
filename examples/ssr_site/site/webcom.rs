//! The site on Orange Webcom (`AUTHGATE_UPSTREAM=webcom`): the same pages
//! and routes as on Altogic, with the sign-in methods Webcom offers —
//! e-mail and password, a one-time code by SMS, a guest account and OAuth
//! providers (the layer's `/auth/signin/{provider}`, Webcom's redirect
//! mode). Sign-up adds an e-mail identity and verifies it with the token
//! Webcom sends; a forgotten password is reset with a code. Deleting the
//! account needs a recent sign-in (Webcom's `TOKEN_TOO_OLD`): the page
//! sends the user to sign in again, then back.
//!
//! Webcom cannot end a token: sign-out clears the cookie and tombstones the
//! token in the layer's cache until its `expires` (the token stays valid at
//! Webcom until then).

use std::sync::Arc;

use authgate::rejection::CurrentUserRejection;
use authgate::webcom::{self, Credentials, Message, NewIdentity, Provider, Verification};
use authgate::{CurrentUser, ErrorKind, SameOrigin, User};
use axum::Router;
use axum::extract::{Form, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::{Cookie, SameSite};
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::flash::Flash;
use super::{Problem, Site, filled, phone};

type View = super::View<webcom::Client>;

/// The OAuth providers the sign-in page offers (Webcom's simulator has
/// these too), with their names for the buttons.
const PROVIDERS: &[(&str, &str)] = &[
    ("google", "Google"),
    ("facebook", "Facebook"),
    ("apple", "Apple"),
    ("github", "GitHub"),
    ("gitlab", "GitLab"),
    ("orange", "Orange"),
];

/// The encrypted cookie that carries a phone sign-in between "text me a
/// code" and "enter the code": the number and Webcom's OTP challenge.
const OTP_COOKIE: &str = "webcom-otp";

/// The pages and forms of the Webcom site (the layer answers `/auth/*`).
pub(crate) fn routes() -> Router<Arc<Site>> {
    Router::new()
        .route("/signin", get(sign_in_page).post(sign_in_with_password))
        .route("/signin/phone/send", post(send_code))
        .route("/signin/phone", post(sign_in_with_code))
        .route("/signin/guest", post(sign_in_as_guest))
        .route("/signup", get(sign_up_page).post(sign_up))
        .route("/signup/verify", post(verify))
        .route("/forgot-password", get(forgot_page).post(send_reset_code))
        .route("/reset-password", post(reset_password))
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route(
            "/account/delete",
            get(delete_account_page).post(delete_account),
        )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SignInQuery {
    return_to: Option<String>,
    /// Set by the re-authentication redirect: show the form even to a
    /// signed-in user.
    reauth: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct SignInForm {
    email: String,
    phone: String,
    password: String,
    code: String,
    name: String,
    token: String,
    new_password: String,
    return_to: Option<String>,
}

/// `GET /signin?return_to=[&reauth=1]`
async fn sign_in_page(view: View, Query(query): Query<SignInQuery>) -> Response {
    if query.reauth.is_none()
        && let Some(signed_in) = view.signed_in_already(query.return_to.as_deref(), "/signin")
    {
        return signed_in;
    }
    let email = query
        .reauth
        .as_ref()
        .and(view.user.as_deref())
        .and_then(|user| user.email.clone());
    sign_in_form(
        &view,
        StatusCode::OK,
        query.return_to,
        context! { email },
        context! {},
    )
}

/// The sign-in page; `values` fills the fields again (`email`, `phone`)
/// and `errors` puts a problem on a form (`email`, `phone`, `guest`).
fn sign_in_form(
    view: &View,
    status: StatusCode,
    return_to: Option<String>,
    values: Value,
    errors: Value,
) -> Response {
    let providers: Vec<_> = PROVIDERS.iter().map(|(id, name)| [id, name]).collect();
    view.page(
        status,
        "webcom_signin.html",
        context! { return_to, errors, providers, ..values },
    )
}

/// Signs the browser in with `details` and sends it to `return_to` (with
/// `notice` in the flash cookie, when there is one).
fn finish(
    view: &View,
    details: webcom::AuthDetails,
    return_to: Option<&str>,
    notice: Option<&str>,
) -> Result<Response, Problem> {
    if let Err(err) = view.auth.sign_in(details.into_grant()) {
        return Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("You could not be signed in: {err}. Trying again will not help."),
        ));
    }
    let target = view.auth.return_to(return_to.filter(|r| !r.is_empty()));
    Ok(match notice {
        Some(notice) => view.redirect_with_notice(&target, notice),
        None => Redirect::to(&target).into_response(),
    })
}

/// `POST /signin` (`email`, `password`, `return_to`)
async fn sign_in_with_password(
    _: SameOrigin,
    view: View,
    Form(form): Form<SignInForm>,
) -> Response {
    let email = form.email.trim();
    let result = match filled(email) {
        None => Err(Problem::invalid("Enter your e-mail address.").on("email")),
        Some(_) if form.password.is_empty() => {
            Err(Problem::invalid("Enter your password.").on("current_password"))
        }
        Some(email) => view
            .client
            .sign_in_with_credentials(
                Provider::Password,
                &Credentials::password(email, &form.password),
            )
            .await
            .map_err(|err| Problem::from_error(&err))
            .and_then(|details| finish(&view, details, form.return_to.as_deref(), None)),
    };
    result.unwrap_or_else(|problem| {
        let status = problem.status;
        sign_in_form(
            &view,
            status,
            form.return_to,
            context! { email },
            context! { email => problem },
        )
    })
}

/// What the OTP cookie holds.
#[derive(Serialize, Deserialize)]
struct PendingCode {
    /// The number in E.164.
    phone: String,
    challenge: String,
}

/// Webcom's phone identities are MSISDNs without the `+`.
fn msisdn(e164: &str) -> &str {
    e164.trim_start_matches('+')
}

/// `POST /signin/phone/send` (`phone`, `return_to`): texts a one-time code
/// (Webcom `sendOtp`), then asks for it.
async fn send_code(_: SameOrigin, view: View, Form(form): Form<SignInForm>) -> Response {
    let typed = form.phone.trim();
    let normalized = match filled(typed) {
        Some(typed) => phone::normalize(typed),
        None => Err(Problem::invalid("Enter your phone number.").on("phone")),
    };
    let sent = match normalized {
        Ok(phone) => view
            .client
            .send_otp(Provider::Phone, msisdn(&phone), &Message::new())
            .await
            .map(|challenge| (phone, challenge))
            .map_err(|err| Problem::from_error(&err)),
        Err(problem) => Err(problem),
    };
    match sent {
        Ok((phone, challenge)) => {
            let pending = PendingCode {
                phone: phone.clone(),
                challenge: challenge.expose().to_owned(),
            };
            let Ok(json) = serde_json::to_string(&pending) else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            let cookie = Cookie::build((OTP_COOKIE, json))
                .path("/signin")
                .http_only(true)
                .secure(view.auth.config().is_secure())
                .same_site(SameSite::Lax)
                .max_age(time::Duration::minutes(10));
            let jar = view.jar();
            let page = view
                .with_notice(format!("We texted a code to {phone}."))
                .page(
                    StatusCode::OK,
                    "webcom_code.html",
                    context! { phone, return_to => form.return_to },
                );
            (jar.add(cookie), page).into_response()
        }
        Err(problem) => {
            let status = problem.status;
            sign_in_form(
                &view,
                status,
                form.return_to,
                context! { phone => typed },
                context! { phone => problem },
            )
        }
    }
}

/// `POST /signin/phone` (`code`, `return_to`): signs in with the code and
/// the challenge kept in the OTP cookie.
async fn sign_in_with_code(_: SameOrigin, view: View, Form(form): Form<SignInForm>) -> Response {
    let pending: Option<PendingCode> = view
        .jar()
        .get(OTP_COOKIE)
        .and_then(|cookie| serde_json::from_str(cookie.value()).ok());
    let Some(pending) = pending else {
        return view.redirect_with(
            "/signin",
            &Flash::notice("That code request has expired. Ask for a new code."),
        );
    };
    let result = match filled(&form.code) {
        None => Err(Problem::invalid("Enter the code we texted you.").on("code")),
        Some(code) => view
            .client
            .sign_in_with_credentials(
                Provider::Phone,
                &Credentials::otp(msisdn(&pending.phone), &pending.challenge, code),
            )
            .await
            .map_err(|err| Problem::from_error(&err).on("code"))
            .and_then(|details| finish(&view, details, form.return_to.as_deref(), None)),
    };
    match result {
        Ok(response) => {
            let removal = Cookie::build((OTP_COOKIE, "")).path("/signin");
            (view.jar().remove(removal), response).into_response()
        }
        Err(problem) => view.form_error(
            "webcom_code.html",
            &problem,
            context! { phone => pending.phone, return_to => form.return_to, error => problem },
        ),
    }
}

/// `POST /signin/guest`: a guest account (Webcom `signInAsGuest`).
async fn sign_in_as_guest(_: SameOrigin, view: View) -> Response {
    let result = view
        .client
        .sign_in_as_guest()
        .await
        .map_err(|err| Problem::from_error(&err))
        .and_then(|details| finish(&view, details, None, Some("You are signed in as a guest.")));
    result.unwrap_or_else(|problem| {
        let status = problem.status;
        sign_in_form(
            &view,
            status,
            None,
            context! {},
            context! { guest => problem },
        )
    })
}

/// `GET /signup`
async fn sign_up_page(view: View) -> Response {
    if let Some(signed_in) = view.signed_in_already(None, "/signup") {
        return signed_in;
    }
    view.page(StatusCode::OK, "webcom_signup.html", context! {})
}

/// `POST /signup` (`name`, `email`, `password`): adds an e-mail identity
/// (Webcom `addIdentity`, which mails a verification token); when the
/// application requires verified identities (`UNVERIFIED_IDENTITY` on
/// sign-in), the token form shows, otherwise the new account signs in at
/// once.
async fn sign_up(_: SameOrigin, view: View, Form(form): Form<SignInForm>) -> Response {
    let email = form.email.trim();
    let name = form.name.trim();
    let problem = match filled(email) {
        None => Problem::invalid("Enter an e-mail address.").on("email"),
        Some(_) if form.password.is_empty() => {
            Problem::invalid("Choose a password.").on("new_password")
        }
        Some(email) => {
            let mut identity = NewIdentity::email(email, &form.password);
            if let Some(name) = filled(name) {
                identity = identity.with_display_name(name);
            }
            match view
                .client
                .add_identity(Provider::Password, &identity, &Message::new())
                .await
            {
                // Webcom mails a verification token; signing in tells
                // whether the application requires it first.
                Ok(_) => match view
                    .client
                    .sign_in_with_credentials(
                        Provider::Password,
                        &Credentials::password(email, &form.password),
                    )
                    .await
                {
                    Err(err) if err.code() == Some("UNVERIFIED_IDENTITY") => {
                        return view.page(StatusCode::OK, "webcom_verify.html", context! { email });
                    }
                    Err(err) => Problem::from_error(&err),
                    Ok(details) => match finish(
                        &view,
                        details,
                        None,
                        Some("Your account is ready and you are signed in."),
                    ) {
                        Ok(response) => return response,
                        Err(problem) => problem,
                    },
                },
                Err(err) => Problem::from_error(&err),
            }
        }
    };
    view.form_error(
        "webcom_signup.html",
        &problem,
        context! { email, name, error => problem },
    )
}

/// `POST /signup/verify` (`email`, `token`): verifies the e-mail identity
/// with the token Webcom sent (`verifyIdentity`), which signs in.
async fn verify(_: SameOrigin, view: View, Form(form): Form<SignInForm>) -> Response {
    let email = form.email.trim();
    let result = match (filled(email), filled(&form.token)) {
        (Some(email), Some(token)) => view
            .client
            .verify_identity(Provider::Password, email, Verification::EmailToken(token))
            .await
            .map_err(|err| Problem::from_error(&err).on("code"))
            .and_then(|details| {
                finish(
                    &view,
                    details,
                    None,
                    Some("Your e-mail address is confirmed and you are signed in."),
                )
            }),
        _ => Err(Problem::invalid("Enter the code from the e-mail.").on("code")),
    };
    result.unwrap_or_else(|problem| {
        view.form_error(
            "webcom_verify.html",
            &problem,
            context! { email, error => problem },
        )
    })
}

/// `GET /forgot-password`
async fn forgot_page(view: View) -> Response {
    view.page(StatusCode::OK, "webcom_forgot.html", context! {})
}

/// `POST /forgot-password` (`email`): Webcom sends a reset code
/// (`sendPasswordResetCode`; the same answer for an unknown address).
async fn send_reset_code(_: SameOrigin, view: View, Form(form): Form<SignInForm>) -> Response {
    let email = form.email.trim();
    let result = match filled(email) {
        Some(email) => view
            .client
            .send_password_reset_code(email, &Message::new())
            .await
            .map_err(|err| Problem::from_error(&err)),
        None => Err(Problem::invalid("Enter your e-mail address.").on("email")),
    };
    match result {
        Ok(()) => view.page(StatusCode::OK, "webcom_reset.html", context! { email }),
        Err(problem) => view.form_error(
            "webcom_forgot.html",
            &problem,
            context! { email, error => problem },
        ),
    }
}

/// `POST /reset-password` (`email`, `code`, `new_password`): sets the new
/// password with the code (`updatePassword` with the code as the current
/// password, as the SDK documents).
async fn reset_password(_: SameOrigin, view: View, Form(form): Form<SignInForm>) -> Response {
    let email = form.email.trim();
    let result = match (filled(email), filled(&form.code)) {
        (Some(email), Some(code)) if !form.new_password.is_empty() => view
            .client
            .update_password(email, code, &form.new_password)
            .await
            .map_err(|err| Problem::from_error(&err)),
        (Some(_), Some(_)) => Err(Problem::invalid("Choose a new password.").on("new_password")),
        _ => Err(Problem::invalid("Enter the code from the e-mail.").on("code")),
    };
    match result {
        Ok(()) => view.redirect_with_notice(
            "/signin",
            "Your password was changed. Sign in with the new one.",
        ),
        Err(problem) => view.form_error(
            "webcom_reset.html",
            &problem,
            context! { email, error => problem },
        ),
    }
}

/// How a Webcom user signs in, in their words.
fn signs_in_with(user: &User) -> String {
    match user.provider.as_deref() {
        Some("password") => "e-mail and password".to_owned(),
        Some("phone") => "phone number and a texted code".to_owned(),
        Some("anonymous") => "a guest account (on this browser only)".to_owned(),
        Some(provider) => PROVIDERS
            .iter()
            .find(|(id, _)| *id == provider)
            .map_or(provider, |(_, name)| name)
            .to_owned(),
        None => "—".to_owned(),
    }
}

/// `GET /account`: the layer's `CurrentUser` (no upstream call while the
/// cache is warm), a password change for e-mail accounts, the recent auth
/// events and the way to delete the account.
async fn account(mut view: View, user: Result<CurrentUser, CurrentUserRejection>) -> Response {
    let user = match view.signed_in(user) {
        Ok(user) => user,
        Err(page) => return *page,
    };
    let account = Arc::clone(&user.0);
    let events = view.site.events.recent_for(&account.id);
    let has_password = account.provider.as_deref() == Some("password");
    let signs_in_with = signs_in_with(&account);
    view.user = Some(Arc::clone(&account));
    view.page(
        StatusCode::OK,
        "webcom_account.html",
        context! {
            account => Value::from_serialize(&*account),
            signs_in_with,
            has_password,
            events,
        },
    )
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct PasswordForm {
    old_password: String,
    new_password: String,
}

/// `POST /account/password` (`old_password`, `new_password`), for e-mail
/// accounts: post/redirect/get back to `/account`.
async fn change_password(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Ok(user) = user else {
        return Redirect::to("/signin?return_to=%2Faccount&notice=session-ended").into_response();
    };
    let Some(email) = user
        .email
        .as_deref()
        .filter(|_| user.provider.as_deref() == Some("password"))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let problem = if form.old_password.is_empty() {
        Problem::invalid("Enter your current password.").on("current_password")
    } else if form.new_password.is_empty() {
        Problem::invalid("Enter a new password.").on("new_password")
    } else {
        match view
            .client
            .update_password(email, &form.old_password, &form.new_password)
            .await
        {
            Ok(()) => return view.redirect_with_notice("/account", "Your password was changed."),
            Err(err) => Problem::from_error(&err),
        }
    };
    view.redirect_with(
        "/account",
        &Flash::error("password", "current_password", &problem, None),
    )
}

/// `GET /account/delete`: "Delete your account?"
async fn delete_account_page(
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
) -> Response {
    match user {
        Ok(_) => view.page(StatusCode::OK, "webcom_delete.html", context! {}),
        Err(rejection) => rejection.into_response(),
    }
}

/// `POST /account/delete`: deletes the account (Webcom `removeAccount`).
/// Webcom wants a recent sign-in for it (`TOKEN_TOO_OLD`, a typed
/// `ErrorKind::FreshAuthRequired`): the user is sent to sign in again —
/// the provider with `prompt=login`, or this site's form — and comes back
/// here to confirm.
async fn delete_account(
    _: SameOrigin,
    view: View,
    user: Result<CurrentUser, CurrentUserRejection>,
) -> Response {
    let (Ok(user), Some(token)) = (user, view.auth.token().cloned()) else {
        return Redirect::to("/signin?return_to=%2Faccount&notice=session-ended").into_response();
    };
    let uid = user.id.clone();
    match view.client.remove_account(&token, &uid).await {
        Ok(()) => {
            // Gone at Webcom: clear the cookie, no upstream call.
            view.auth.sign_out_locally();
            view.redirect_with_notice("/", "Your account was deleted.")
        }
        Err(err) if err.kind() == ErrorKind::FreshAuthRequired => {
            Redirect::to(&reauthentication(&user)).into_response()
        }
        Err(err) => {
            let problem = Problem::from_error(&err);
            view.redirect_with(
                "/account/delete",
                &Flash::error("delete", "", &problem, None),
            )
        }
    }
}

/// Where a user signs in again before a sensitive change: an OAuth user at
/// the provider with `prompt=login` (through the layer's route), anyone
/// else on this site's form; either way back to the delete page.
fn reauthentication(user: &User) -> String {
    let back = "%2Faccount%2Fdelete";
    match user.provider.as_deref() {
        Some(provider) if PROVIDERS.iter().any(|(id, _)| *id == provider) => {
            format!("/auth/signin/{provider}?prompt=login&return_to={back}")
        }
        _ => format!("/signin?reauth=1&return_to={back}&notice=reauthenticate"),
    }
}
