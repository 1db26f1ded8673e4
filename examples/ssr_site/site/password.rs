//! Forgotten passwords: a reset link by e-mail (its landing goes through
//! the layer, which keeps the key in an encrypted cookie and sends the
//! browser to `/reset-password`) or a reset code by SMS.

use authgate::{ErrorKind, SameOrigin};
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::context;
use serde::Deserialize;

use super::{Problem, View, filled, phone};

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct AddressForm {
    email: String,
    phone: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct NewPasswordForm {
    phone: String,
    code: String,
    password: String,
}

/// `GET /forgot-password`
pub(crate) async fn forgot_page(view: View) -> Response {
    view.page(
        StatusCode::OK,
        "forgot_password.html",
        context! { errors => context! {} },
    )
}

/// `POST /forgot-password/email` (`email`)
pub(crate) async fn send_reset_email(
    _: SameOrigin,
    view: View,
    Form(form): Form<AddressForm>,
) -> Response {
    let email = form.email.trim();
    let result = match filled(email) {
        Some(email) => view
            .altogic()
            .send_reset_pwd_email(email)
            .await
            .map_err(|err| Problem::from_error(&err)),
        None => Err(Problem::invalid("Enter your e-mail address.")),
    };
    match result {
        Ok(()) => view.page(
            StatusCode::OK,
            "check_email.html",
            context! { purpose => "reset", email },
        ),
        Err(problem) => view.form_error(
            "forgot_password.html",
            &problem,
            context! { email, errors => context! { email => problem } },
        ),
    }
}

/// `POST /forgot-password/sms` (`phone`): texts a code, then asks for it
/// and the new password.
pub(crate) async fn send_reset_code(
    _: SameOrigin,
    view: View,
    Form(form): Form<AddressForm>,
) -> Response {
    let typed = form.phone.trim();
    let normalized = match filled(typed) {
        Some(typed) => phone::normalize(typed),
        None => Err(Problem::invalid("Enter your phone number.").on("phone")),
    };
    let result = match normalized {
        Ok(phone) => view
            .altogic()
            .send_reset_pwd_code(&phone)
            .await
            .map(|()| phone)
            .map_err(|err| Problem::from_error(&err)),
        Err(problem) => Err(problem),
    };
    match result {
        Ok(phone) => view.page(StatusCode::OK, "reset_code.html", context! { phone }),
        Err(problem) => view.form_error(
            "forgot_password.html",
            &problem,
            context! { phone => typed, errors => context! { phone => problem } },
        ),
    }
}

/// `GET /reset-password`: the new-password form while a reset is pending
/// (the key never appears in a URL or a page).
pub(crate) async fn reset_page(view: View) -> Response {
    let pending = view.auth.password_reset_key().is_some();
    view.page(StatusCode::OK, "reset_password.html", context! { pending })
}

/// `POST /reset-password` (`password`): sets it with the pending key and
/// sends the user to sign in (a reset signs nobody in).
pub(crate) async fn reset(
    _: SameOrigin,
    view: View,
    Form(form): Form<NewPasswordForm>,
) -> Response {
    if view.auth.password_reset_key().is_none() {
        return view.page(
            StatusCode::BAD_REQUEST,
            "reset_password.html",
            context! { pending => false },
        );
    }
    let problem = if form.password.is_empty() {
        Problem::invalid("Enter a new password.")
    } else {
        let altogic = view.altogic();
        let reset = view.auth.reset_password_with(|key| async move {
            altogic.reset_pwd_with_token(&key, &form.password).await
        });
        match reset.await {
            Ok(()) => {
                return view.redirect_with_notice(
                    "/signin",
                    "Your password was changed. Sign in with the new one.",
                );
            }
            Err(err) if err.kind() == ErrorKind::InvalidInput => {
                Problem::invalid("This password-reset link has expired or was already used.")
            }
            Err(err) => Problem::from_error(&err),
        }
    };
    // A used or expired key cannot be retried: show the "ask again" page.
    let pending = problem.code.as_deref() != Some("invalid_access_token");
    view.form_error(
        "reset_password.html",
        &problem,
        context! { pending, error => problem },
    )
}

/// `POST /reset-password/code` (`phone`, `code`, `password`)
pub(crate) async fn reset_with_code(
    _: SameOrigin,
    view: View,
    Form(form): Form<NewPasswordForm>,
) -> Response {
    let phone = form.phone.trim();
    let problem = match (filled(phone), filled(&form.code)) {
        (Some(phone), Some(code)) if !form.password.is_empty() => {
            match view
                .altogic()
                .reset_pwd_with_code(phone, code, &form.password)
                .await
            {
                Ok(()) => {
                    return view.redirect_with_notice(
                        "/signin",
                        "Your password was changed. Sign in with the new one.",
                    );
                }
                Err(err) => Problem::from_error(&err),
            }
        }
        _ => Problem::invalid("Enter the code we texted you and a new password."),
    };
    view.form_error(
        "reset_code.html",
        &problem,
        context! { phone, error => problem },
    )
}
