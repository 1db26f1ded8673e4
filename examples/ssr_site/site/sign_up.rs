//! Signing up by e-mail or phone, and confirming the address: the e-mail
//! link (its landing is the layer's `/auth/callback`) or the SMS code.

use authgate::SameOrigin;
use axum::extract::{Form, Query};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::context;
use serde::Deserialize;
use serde_json::Value;

use super::{Problem, View, filled, finish_sign_in, phone};

/// The notice after a sign-up that signs in at once.
const ACCOUNT_READY: &str = "Your account is ready and you are signed in.";

/// The notice after a sign-up's phone verification.
const PHONE_VERIFIED: &str = "Your phone number is verified and you are signed in.";

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct SignUpForm {
    email: String,
    phone: String,
    password: String,
    name: String,
}

impl SignUpForm {
    fn name(&self) -> Option<Value> {
        filled(&self.name).map(|name| Value::String(name.to_owned()))
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct AddressForm {
    email: String,
    phone: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct VerifyForm {
    phone: String,
    code: String,
}

/// `GET /signup`
pub(crate) async fn page(view: View) -> Response {
    if let Some(signed_in) = view.signed_in_already(None, "/signup") {
        return signed_in;
    }
    view.page(StatusCode::OK, "signup.html", context! {})
}

/// `POST /signup` (`email`, `password`, `name`): signed in at once, or
/// (e-mail confirmation on) "check your e-mail".
pub(crate) async fn with_email(
    _: SameOrigin,
    view: View,
    Form(form): Form<SignUpForm>,
) -> Response {
    let email = form.email.trim();
    let result = if email.is_empty() || form.password.is_empty() {
        Err(Problem::invalid("Enter an e-mail address and a password."))
    } else {
        view.altogic_for_browser()
            .sign_up_with_email(email, &form.password, form.name())
            .await
            .map_err(|err| Problem::from_error(&err))
    };
    match result {
        Ok(response) if response.session.is_some() => {
            finish_sign_in(&view, response, None, Some(ACCOUNT_READY))
                .unwrap_or_else(|problem| sign_up_error(&view, &form, &problem))
        }
        Ok(_) => view.page(
            StatusCode::OK,
            "check_email.html",
            context! { purpose => "confirm", email },
        ),
        Err(problem) => sign_up_error(&view, &form, &problem),
    }
}

fn sign_up_error(view: &View, form: &SignUpForm, problem: &Problem) -> Response {
    view.form_error(
        "signup.html",
        problem,
        context! { email => form.email.trim(), name => form.name.trim(), error => problem },
    )
}

/// `GET /signup/phone`
pub(crate) async fn phone_page(view: View) -> Response {
    view.page(StatusCode::OK, "signup_phone.html", context! {})
}

/// `POST /signup/phone` (`phone`, `password`, `name`): signed in at once,
/// or (phone confirmation on) the code form.
pub(crate) async fn with_phone(
    _: SameOrigin,
    view: View,
    Form(form): Form<SignUpForm>,
) -> Response {
    let typed = form.phone.trim();
    // Stored as E.164, never as typed.
    let normalized = match filled(typed) {
        Some(typed) => phone::normalize(typed),
        None => Err(Problem::invalid("Enter a phone number.").on("phone")),
    };
    let phone = normalized.as_deref().unwrap_or(typed);
    let result = match &normalized {
        Err(problem) => Err(problem.clone()),
        Ok(_) if form.password.is_empty() => {
            Err(Problem::invalid("Choose a password.").on("new_password"))
        }
        Ok(phone) => view
            .altogic_for_browser()
            .sign_up_with_phone(phone, &form.password, form.name())
            .await
            .map_err(|err| Problem::from_error(&err)),
    };
    let problem = match result {
        Ok(response) if response.session.is_some() => {
            match finish_sign_in(&view, response, None, Some(ACCOUNT_READY)) {
                Ok(redirect) => return redirect,
                Err(problem) => problem,
            }
        }
        Ok(_) => {
            return view
                .with_notice(format!("We texted a verification code to {phone}."))
                .page(
                    StatusCode::OK,
                    "verify_phone.html",
                    context! { phone, can_resend => true },
                );
        }
        Err(problem) => problem,
    };
    view.form_error(
        "signup_phone.html",
        &problem,
        context! { phone, name => form.name.trim(), error => problem },
    )
}

/// `POST /confirm-email/resend` (`email`)
pub(crate) async fn resend_email(
    _: SameOrigin,
    view: View,
    Form(form): Form<AddressForm>,
) -> Response {
    let email = form.email.trim();
    let result = match filled(email) {
        Some(email) => view
            .altogic()
            .resend_verification_email(email)
            .await
            .map_err(|err| Problem::from_error(&err)),
        None => Err(Problem::invalid("Enter your e-mail address.")),
    };
    match result {
        Ok(()) => view.with_notice("We sent a new confirmation link.").page(
            StatusCode::OK,
            "check_email.html",
            context! { purpose => "confirm", email },
        ),
        Err(problem) => view.form_error(
            "check_email.html",
            &problem,
            context! { purpose => "confirm", email, error => problem },
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PhoneQuery {
    phone: Option<String>,
}

/// `GET /verify-phone?phone=`: the code form, for someone coming back
/// later, or after a phone change (signed in: no "text me a new code",
/// which would resend a sign-up code).
pub(crate) async fn verify_phone_page(view: View, Query(query): Query<PhoneQuery>) -> Response {
    let can_resend = view.user.is_none();
    view.page(
        StatusCode::OK,
        "verify_phone.html",
        context! { phone => query.phone, can_resend },
    )
}

/// `POST /verify-phone` (`phone`, `code`): after a sign-up the answer
/// carries a session (signed in); after a phone change it carries the
/// updated user.
pub(crate) async fn verify_phone(
    _: SameOrigin,
    view: View,
    Form(form): Form<VerifyForm>,
) -> Response {
    let typed = form.phone.trim();
    let normalized = phone::normalize(typed);
    let phone = normalized.as_deref().unwrap_or(typed);
    let result = match (normalized.as_ref(), filled(&form.code)) {
        (Err(problem), _) => Err(problem.clone()),
        (Ok(phone), Some(code)) => view
            .altogic_for_browser()
            .verify_phone(phone, code)
            .await
            .map_err(|err| Problem::from_error(&err)),
        (Ok(_), None) => Err(Problem::invalid("Enter the code we texted you.").on("code")),
    };
    let problem = match result {
        Ok(response) if response.session.is_some() => {
            match finish_sign_in(&view, response, None, Some(PHONE_VERIFIED)) {
                Ok(redirect) => return redirect,
                Err(problem) => problem,
            }
        }
        // A phone change: forget this browser's cached user so every page
        // (the header, `/`) shows the new number at once.
        Ok(response) if view.user.as_ref().is_some_and(|u| u.id == response.user.id) => {
            view.auth.refresh();
            return view.redirect_with_notice("/account", "Your phone number was changed.");
        }
        Ok(_) => {
            return view.redirect_with_notice(
                "/signin",
                "Your phone number is verified. You can sign in now.",
            );
        }
        Err(problem) => problem,
    };
    view.form_error(
        "verify_phone.html",
        &problem,
        context! { phone, can_resend => view.user.is_none(), error => problem },
    )
}

/// `POST /verify-phone/resend` (`phone`)
pub(crate) async fn resend_code(
    _: SameOrigin,
    view: View,
    Form(form): Form<AddressForm>,
) -> Response {
    let typed = form.phone.trim();
    let normalized = phone::normalize(typed);
    let phone = normalized.as_deref().unwrap_or(typed);
    let result = match &normalized {
        Ok(phone) => view
            .altogic()
            .resend_verification_code(phone)
            .await
            .map_err(|err| Problem::from_error(&err)),
        Err(problem) => Err(problem.clone()),
    };
    match result {
        Ok(()) => view
            .with_notice(format!("We texted a new code to {phone}."))
            .page(
                StatusCode::OK,
                "verify_phone.html",
                context! { phone, can_resend => true },
            ),
        Err(problem) => view.form_error(
            "verify_phone.html",
            &problem,
            context! { phone, can_resend => true, error => problem },
        ),
    }
}
