//! Signing in: e-mail or phone with a password, an SMS code, a magic link.
//! (OAuth sign-in links go to the layer's `/auth/signin/{provider}`.)

use authgate::SameOrigin;
use axum::extract::{Form, Query};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::context;
use serde::Deserialize;

use super::{Problem, View, filled, finish_sign_in, phone};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ReturnTo {
    return_to: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct PasswordForm {
    email: String,
    phone: String,
    password: String,
    return_to: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct CodeForm {
    phone: String,
    code: String,
    return_to: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct EmailForm {
    email: String,
}

/// `GET /signin?return_to=`
pub(crate) async fn page(view: View, Query(query): Query<ReturnTo>) -> Response {
    if let Some(signed_in) = view.signed_in_already(query.return_to.as_deref(), "/signin") {
        return signed_in;
    }
    view.page(
        StatusCode::OK,
        "signin.html",
        context! { return_to => query.return_to, errors => context! {} },
    )
}

/// `POST /signin` (`email`, `password`, `return_to`)
pub(crate) async fn with_email(
    _: SameOrigin,
    view: View,
    Form(form): Form<PasswordForm>,
) -> Response {
    let result = match filled(&form.email) {
        None => Err(Problem::invalid("Enter your e-mail address.").on("email")),
        Some(_) if form.password.is_empty() => {
            Err(Problem::invalid("Enter your password.").on("current_password"))
        }
        Some(email) => view
            .altogic_for_browser()
            .sign_in_with_email(email, &form.password)
            .await
            .map_err(|err| Problem::from_error(&err))
            .and_then(|response| finish_sign_in(&view, response, form.return_to.as_deref(), None)),
    };
    result.unwrap_or_else(|problem| {
        view.form_error(
            "signin.html",
            &problem,
            context! {
                return_to => form.return_to,
                email => form.email.trim(),
                errors => context! { email => problem },
            },
        )
    })
}

/// `POST /signin/phone` (`phone`, `password`, `return_to`)
pub(crate) async fn with_phone(
    _: SameOrigin,
    view: View,
    Form(form): Form<PasswordForm>,
) -> Response {
    let result = match filled(&form.phone).map(phone::normalize) {
        None => Err(Problem::invalid("Enter your phone number.").on("phone")),
        Some(Err(problem)) => Err(problem),
        Some(Ok(_)) if form.password.is_empty() => {
            Err(Problem::invalid("Enter your password.").on("current_password"))
        }
        Some(Ok(phone)) => view
            .altogic_for_browser()
            .sign_in_with_phone(&phone, &form.password)
            .await
            .map_err(|err| Problem::from_error(&err))
            .and_then(|response| finish_sign_in(&view, response, form.return_to.as_deref(), None)),
    };
    result.unwrap_or_else(|problem| {
        view.form_error(
            "signin.html",
            &problem,
            context! {
                return_to => form.return_to,
                phone => form.phone.trim(),
                errors => context! { phone => problem },
            },
        )
    })
}

/// `GET /signin/code?return_to=`: asks for the phone number.
pub(crate) async fn code_page(view: View, Query(query): Query<ReturnTo>) -> Response {
    view.page(
        StatusCode::OK,
        "signin_code.html",
        context! { step => "phone", return_to => query.return_to },
    )
}

/// `POST /signin/code/send` (`phone`, `return_to`): texts a code, then
/// asks for it.
pub(crate) async fn send_code(_: SameOrigin, view: View, Form(form): Form<CodeForm>) -> Response {
    let normalized = match filled(&form.phone) {
        Some(typed) => phone::normalize(typed),
        None => Err(Problem::invalid("Enter your phone number.").on("phone")),
    };
    let phone = match normalized {
        Ok(phone) => phone,
        Err(problem) => {
            return view.form_error(
                "signin_code.html",
                &problem,
                context! { step => "phone", phone => form.phone.trim(), return_to => form.return_to, error => problem },
            );
        }
    };
    match view.altogic().send_sign_in_code(&phone).await {
        Ok(()) => view.page(
            StatusCode::OK,
            "signin_code.html",
            context! { step => "code", phone, return_to => form.return_to },
        ),
        Err(err) => {
            let problem = Problem::from_error(&err);
            view.form_error(
                "signin_code.html",
                &problem,
                context! { step => "phone", phone, return_to => form.return_to, error => problem },
            )
        }
    }
}

/// `POST /signin/code` (`phone`, `code`, `return_to`)
pub(crate) async fn with_code(_: SameOrigin, view: View, Form(form): Form<CodeForm>) -> Response {
    let phone = form.phone.trim();
    let result = match filled(&form.code) {
        Some(code) if !phone.is_empty() => view
            .altogic_for_browser()
            .sign_in_with_code(phone, code)
            .await
            .map_err(|err| Problem::from_error(&err))
            .and_then(|response| finish_sign_in(&view, response, form.return_to.as_deref(), None)),
        _ => Err(Problem::invalid("Enter the code we texted you.")),
    };
    result.unwrap_or_else(|problem| {
        view.form_error(
            "signin_code.html",
            &problem,
            context! { step => "code", phone, return_to => form.return_to, error => problem },
        )
    })
}

/// `GET /signin/magic`
pub(crate) async fn magic_page(view: View) -> Response {
    view.page(StatusCode::OK, "magic_link.html", context! {})
}

/// `POST /signin/magic` (`email`): mails a one-time sign-in link; its
/// landing is handled by the layer's `/auth/callback`.
pub(crate) async fn send_magic(_: SameOrigin, view: View, Form(form): Form<EmailForm>) -> Response {
    let Some(email) = filled(&form.email) else {
        let problem = Problem::invalid("Enter your e-mail address.");
        return view.form_error("magic_link.html", &problem, context! { error => problem });
    };
    match view.altogic().send_magic_link_email(email).await {
        Ok(()) => view.page(
            StatusCode::OK,
            "check_email.html",
            context! { purpose => "magic", email },
        ),
        Err(err) => {
            let problem = Problem::from_error(&err);
            view.form_error(
                "magic_link.html",
                &problem,
                context! { email, error => problem },
            )
        }
    }
}
