//! Pages: the embedded minijinja templates, the [`View`] every handler
//! renders through, and [`Problem`], an error worth showing on a form.

use std::sync::Arc;

use authgate::pages::{PageContext, default_page};
use authgate::rejection::CurrentUserRejection;
use authgate::{Auth, CurrentUser, ErrorKind, User, altogic};
use axum::extract::FromRequestParts;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use minijinja::{Environment, Value, context};
use serde::Serialize;

use super::Site;
use super::flash::{self, Flash, FormError};

/// Every template, embedded so the binary runs from anywhere.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("macros.html", include_str!("../templates/macros.html")),
    ("home.html", include_str!("../templates/home.html")),
    ("signin.html", include_str!("../templates/signin.html")),
    (
        "signin_code.html",
        include_str!("../templates/signin_code.html"),
    ),
    (
        "magic_link.html",
        include_str!("../templates/magic_link.html"),
    ),
    ("signup.html", include_str!("../templates/signup.html")),
    (
        "signup_phone.html",
        include_str!("../templates/signup_phone.html"),
    ),
    (
        "check_email.html",
        include_str!("../templates/check_email.html"),
    ),
    (
        "verify_phone.html",
        include_str!("../templates/verify_phone.html"),
    ),
    (
        "forgot_password.html",
        include_str!("../templates/forgot_password.html"),
    ),
    (
        "reset_password.html",
        include_str!("../templates/reset_password.html"),
    ),
    (
        "reset_code.html",
        include_str!("../templates/reset_code.html"),
    ),
    ("account.html", include_str!("../templates/account.html")),
    (
        "unavailable.html",
        include_str!("../templates/unavailable.html"),
    ),
    (
        "not_found.html",
        include_str!("../templates/not_found.html"),
    ),
    (
        "layer_page.html",
        include_str!("../templates/layer_page.html"),
    ),
    (
        "signed_in.html",
        include_str!("../templates/signed_in.html"),
    ),
    ("sessions.html", include_str!("../templates/sessions.html")),
    (
        "slashid_signin.html",
        include_str!("../templates/slashid_signin.html"),
    ),
    (
        "slashid_account.html",
        include_str!("../templates/slashid_account.html"),
    ),
    (
        "slashid_organizations.html",
        include_str!("../templates/slashid_organizations.html"),
    ),
    (
        "slashid_security.html",
        include_str!("../templates/slashid_security.html"),
    ),
    (
        "slashid_admin.html",
        include_str!("../templates/slashid_admin.html"),
    ),
    (
        "oidc_signin.html",
        include_str!("../templates/oidc_signin.html"),
    ),
    (
        "oidc_account.html",
        include_str!("../templates/oidc_account.html"),
    ),
    (
        "oidc_security.html",
        include_str!("../templates/oidc_security.html"),
    ),
    (
        "webcom_signin.html",
        include_str!("../templates/webcom_signin.html"),
    ),
    (
        "webcom_code.html",
        include_str!("../templates/webcom_code.html"),
    ),
    (
        "webcom_signup.html",
        include_str!("../templates/webcom_signup.html"),
    ),
    (
        "webcom_verify.html",
        include_str!("../templates/webcom_verify.html"),
    ),
    (
        "webcom_forgot.html",
        include_str!("../templates/webcom_forgot.html"),
    ),
    (
        "webcom_reset.html",
        include_str!("../templates/webcom_reset.html"),
    ),
    (
        "webcom_account.html",
        include_str!("../templates/webcom_account.html"),
    ),
    (
        "webcom_delete.html",
        include_str!("../templates/webcom_delete.html"),
    ),
    (
        "sign_out_everywhere.html",
        include_str!("../templates/sign_out_everywhere.html"),
    ),
];

/// The notices a redirect may ask for with `?notice=`: the layer's own
/// redirects (refused links, sign-in landings, an ended session) and the
/// sign-out forms' `return_to`. A fixed list, so no text from the URL ever
/// reaches a page. The site's own notices travel in the flash cookie.
const NOTICES: &[(&str, &str)] = &[
    ("signed-in", "You are signed in."),
    (
        "signed-in-with-link",
        "You are signed in with the link we e-mailed you.",
    ),
    (
        "email-confirmed",
        "Your e-mail address is confirmed and you are signed in.",
    ),
    ("email-changed", "Your e-mail address was changed."),
    ("signed-out", "You are signed out."),
    (
        "signed-out-everywhere",
        "You are signed out on every device, this one too.",
    ),
    (
        "signed-out-others",
        "Every other session was signed out. This browser stays signed in.",
    ),
    (
        "session-ended",
        "Your session has ended: you were signed out on another device, or it expired. Please sign in again.",
    ),
    (
        "replayed-grant",
        "That link was already used or has expired. You are still signed in.",
    ),
    (
        "consent-denied",
        "The sign-in was cancelled at the provider. You are still signed in.",
    ),
    (
        "upstream-refused",
        "The sign-in service refused that link. You are still signed in.",
    ),
    (
        "reauthenticate",
        "For your safety, please sign in again to continue.",
    ),
    (
        "account-switch-cancelled",
        "You stayed signed in to this account; the link was not used.",
    ),
];

/// What a browser whose session ended elsewhere is told on its next page.
const SESSION_ENDED: &str =
    "You were signed out: your session was ended on another device, or it expired.";

/// The parsed templates. Built once; `.html` templates auto-escape.
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl Templates {
    pub(crate) fn new() -> Self {
        let mut env = Environment::new();
        // minijinja's own `urlencode` needs a cargo feature; this one
        // encodes a query-string value.
        env.add_filter("urlencode", |value: &str| -> String {
            url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
        });
        for (name, source) in TEMPLATES {
            // A broken template is a bug in this example: say which, and
            // let its pages answer 500 (the tests render every page).
            if let Err(err) = env.add_template(name, source) {
                tracing::error!(template = name, error = %err, "ssr_site: template does not parse");
            }
        }
        Self { env }
    }

    fn render(&self, name: &str, ctx: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    /// A page authgate's layer draws itself (a refused link, the e-mail
    /// link's "Continue", an outage), in the site's look: given to
    /// `AuthConfig::with_page_renderer`.
    pub(crate) fn layer_page(&self, page: &PageContext<'_>) -> String {
        let ctx = context! {
            title => page.title,
            message => page.message,
            status => page.status.as_u16(),
            retry_after => page.retry_after,
            form_action => page.form_action,
            link_href => page.link.map(|link| link.href),
            link_text => page.link.map(|link| link.text),
            account_now => page.accounts.map(|(now, _)| now),
            account_next => page.accounts.map(|(_, next)| next),
            // The header shows who is signed in, when the layer knows.
            user => page.user.map(Value::from_serialize),
        };
        self.render("layer_page.html", ctx).unwrap_or_else(|err| {
            tracing::error!(error = %err, "ssr_site: the layer page could not be rendered");
            default_page(page)
        })
    }
}

/// The auth service's typed client a handler works with: the site runs on
/// one of them, and a page of the other answers 404.
pub(crate) trait Backend: Clone + Send + Sync + Sized + 'static {
    /// This backend's client, if the site runs on it.
    fn of(site: &Site) -> Option<&Self>;
}

/// Pages that call no auth service (`/`, the 404 page) work on any site.
impl Backend for () {
    fn of(_: &Site) -> Option<&Self> {
        Some(&())
    }
}

impl Backend for altogic::Client {
    fn of(site: &Site) -> Option<&Self> {
        site.altogic.as_ref()
    }
}

#[cfg(feature = "slashid")]
impl Backend for authgate::slashid::Client {
    fn of(site: &Site) -> Option<&Self> {
        site.slashid.as_ref()
    }
}

#[cfg(feature = "oidc")]
impl Backend for authgate::oidc::Client {
    fn of(site: &Site) -> Option<&Self> {
        site.oidc.as_ref()
    }
}

#[cfg(feature = "webcom")]
impl Backend for authgate::webcom::Client {
    fn of(site: &Site) -> Option<&Self> {
        site.webcom.as_ref()
    }
}

/// What a handler renders with: the site, the backend's client `C`, the
/// request's auth handle, the signed-in user (for the header), the notice
/// to show, the flash cookie's form error and the browser's `User-Agent`.
pub(crate) struct View<C = altogic::Client> {
    pub(crate) site: Arc<Site>,
    /// The auth service's typed client.
    pub(crate) client: C,
    pub(crate) auth: Auth,
    pub(crate) user: Option<Arc<User>>,
    notice: Option<String>,
    /// A form's error carried by the flash cookie (post/redirect/get).
    pub(crate) form_error: Option<FormError>,
    /// The request's private cookie jar (for the flash cookie).
    jar: PrivateCookieJar,
    /// A flash cookie came with the request: the page removes it.
    flash_seen: bool,
    /// HTTPS: the flash cookie is `__Host-` and `Secure`.
    secure: bool,
    user_agent: Option<String>,
}

impl<C: Backend> FromRequestParts<Arc<Site>> for View<C> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, site: &Arc<Site>) -> Result<Self, Response> {
        let Some(client) = C::of(site).cloned() else {
            return Err(StatusCode::NOT_FOUND.into_response());
        };
        let auth = Auth::from_request_parts(parts, site)
            .await
            .map_err(IntoResponse::into_response)?;
        let user = auth.user().await;
        if let (Some(_), Some(_), Some(token)) = (&user, &site.altogic, auth.token()) {
            site.activity.touch(altogic::Session::id_of(token));
        }
        let secure = auth.config().is_secure();
        let jar = PrivateCookieJar::from_headers(&parts.headers, site.jar_key.clone());
        let flash_seen = jar.get(flash::cookie_name(secure)).is_some();
        let flash = flash::read(&jar, secure).unwrap_or_default();
        let query_notice = parts.uri.query().and_then(|query| {
            let key = url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "notice")?
                .1;
            NOTICES
                .iter()
                .find(|(known, _)| *known == key)
                .map(|(_, text)| (*text).to_owned())
        });
        // The flash's notice first (this site's own), then the layer's;
        // else, when the session cookie named a session that ended
        // elsewhere, say so (the layer removes the cookie on this page).
        let notice = match (flash.notice, query_notice) {
            (Some(notice), _) | (None, Some(notice)) => Some(notice),
            (None, None) => auth.session_ended().await.then(|| SESSION_ENDED.to_owned()),
        };
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            site: Arc::clone(site),
            client,
            auth,
            user,
            notice,
            form_error: flash.error,
            jar,
            flash_seen,
            secure,
            user_agent,
        })
    }
}

impl<C> View<C> {
    /// The signed-in user, or the page for a missing one: the site's 503
    /// page when the auth service is down and no cached user could serve,
    /// else the layer's own answer (a redirect to sign-in, a 401).
    pub(crate) fn signed_in(
        &self,
        user: Result<CurrentUser, CurrentUserRejection>,
    ) -> Result<CurrentUser, Box<Response>> {
        match user {
            Ok(user) => Ok(user),
            Err(CurrentUserRejection::UpstreamUnavailable(rejection)) => {
                Err(Box::new(unavailable(self, rejection.retry_after())))
            }
            Err(rejection) => Err(Box::new(rejection.into_response())),
        }
    }

    /// For a signed-in user on a sign-in or sign-up page: "You are signed
    /// in as …" with "Continue" (to `return_to`) and "Sign in as someone
    /// else" (signs out, then back to `again`). `None` when nobody is
    /// signed in.
    pub(crate) fn signed_in_already(
        &self,
        return_to: Option<&str>,
        again: &str,
    ) -> Option<Response> {
        let user = self.user.as_deref()?;
        let account = user
            .email
            .as_deref()
            .or(user.phone.as_deref())
            .unwrap_or_else(|| user.display_name());
        let continue_to = self.auth.return_to(return_to.filter(|r| !r.is_empty()));
        Some(self.page(
            StatusCode::OK,
            "signed_in.html",
            context! { account, continue_to, again },
        ))
    }

    /// Shows `notice` at the top of the page (instead of any `?notice=`).
    pub(crate) fn with_notice(mut self, notice: impl Into<String>) -> Self {
        self.notice = Some(notice.into());
        self
    }

    /// The request's private cookie jar (keyed like the flash cookie), for
    /// a handler's own encrypted cookies.
    #[cfg_attr(not(feature = "webcom"), allow(dead_code))]
    pub(crate) fn jar(&self) -> PrivateCookieJar {
        self.jar.clone()
    }

    /// A 303 to `to` carrying `flash` (post/redirect/get).
    pub(crate) fn redirect_with(&self, to: &str, flash: &Flash) -> Response {
        flash::redirect(self.jar.clone(), self.secure, to, flash)
    }

    /// A 303 to `to` with a notice for its page.
    pub(crate) fn redirect_with_notice(&self, to: &str, notice: &str) -> Response {
        self.redirect_with(to, &Flash::notice(notice))
    }

    /// Renders `template` with `ctx` plus what every page gets: `user`,
    /// `outbox_url` and `notice`.
    pub(crate) fn page(&self, status: StatusCode, template: &str, ctx: Value) -> Response {
        let ctx = context! {
            user => self.user.as_deref().map(Value::from_serialize),
            outbox_url => self.site.outbox_url,
            backend => self.site.backend_name(),
            notice => self.notice,
            form_error => self.form_error,
            ..ctx
        };
        match self.site.templates.render(template, ctx) {
            Ok(html) => {
                let mut response = (status, Html(html)).into_response();
                if self.flash_seen {
                    flash::clear(&mut response, self.secure);
                }
                response
            }
            Err(err) => {
                tracing::error!(template, error = %err, "ssr_site: rendering failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "Internal error: this page could not be rendered.",
                )
                    .into_response()
            }
        }
    }

    /// Renders a form page again with the problem that stopped it, with
    /// the problem's status (and `Retry-After` when the upstream is down).
    pub(crate) fn form_error(&self, template: &str, problem: &Problem, ctx: Value) -> Response {
        let mut response = self.page(problem.status, template, ctx);
        if problem.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// An error to show on the form that caused it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Problem {
    #[serde(skip)]
    pub(crate) status: StatusCode,
    /// A sentence for the user.
    pub(crate) message: String,
    /// The upstream's code (e.g. `email_not_verified`), so a template can
    /// offer the next step.
    pub(crate) code: Option<String>,
    /// The field in error, for the page to focus: `current_password`,
    /// `new_password`, `email`, `phone` or `code` (each template maps it to
    /// its input). `None`: the form's first field.
    pub(crate) field: Option<&'static str>,
}

impl Problem {
    /// A problem with the form's input, found before calling the upstream.
    pub(crate) fn invalid(message: &str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// A problem with `status` and a sentence.
    pub(crate) fn new(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            message: message.to_owned(),
            code: None,
            field: None,
        }
    }

    /// The same problem, on `field`.
    pub(crate) fn on(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// The upstream's own message when it sent one, else a sentence for
    /// the kind of failure. A 4xx keeps its status; an outage is a 503.
    pub(crate) fn from_error(err: &authgate::Error) -> Self {
        let code = err.code().map(str::to_owned);
        if err.is_transient() {
            tracing::warn!(error = %err, "ssr_site: upstream call failed");
            return Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "The sign-in service did not answer. Please try again in a moment."
                    .to_owned(),
                code,
                field: None,
            };
        }
        let status = match err.kind() {
            ErrorKind::Status(status) if status.is_client_error() => status,
            ErrorKind::InvalidSession => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match (code.as_deref(), err.message()) {
            (Some("email_not_verified"), _) => {
                "Please confirm your e-mail address first: open the link we sent you, or ask for a new one below."
            }
            (Some("phone_not_verified"), _) => {
                "Please verify your phone number first with the code we texted you."
            }
            (Some("invalid_session_token" | "missing_session_token"), _) => {
                "Your session has ended. Please sign in again."
            }
            (_, Some(message)) => message,
            (_, None) => "The request was refused. Please check what you entered.",
        };
        // The field the upstream's code points at; the form's main field
        // otherwise.
        let field = match code.as_deref() {
            // Altogic's codes, then Webcom's.
            Some("incorrect_password" | "invalid_credentials" | "INVALID_CREDENTIALS") => {
                Some("current_password")
            }
            Some("invalid_password" | "TOO_WEAK_PASSWORD") => Some("new_password"),
            Some("email_not_unique" | "EXISTING_IDENTITY") => Some("email"),
            Some("phone_not_unique") => Some("phone"),
            Some("invalid_code" | "INVALID_STATE") => Some("code"),
            _ => None,
        };
        Self {
            status,
            message: message.to_owned(),
            code,
            field,
        }
    }
}

/// The 503 page for a signed-in page while the upstream is down and no
/// cached user is usable (the cookie is kept: nobody is signed out).
pub(crate) fn unavailable<C>(view: &View<C>, retry_after: u32) -> Response {
    let mut response = view.page(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable.html",
        context! { retry_after },
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

impl View<altogic::Client> {
    /// The Altogic client.
    pub(crate) fn altogic(&self) -> &altogic::Client {
        &self.client
    }

    /// The Altogic client sending this browser's `User-Agent` upstream: for
    /// the calls that create a session (sign-in, sign-up, code sign-in,
    /// phone verification), so the session list shows the user's device
    /// ("Chrome on Linux") instead of this server's.
    pub(crate) fn altogic_for_browser(&self) -> altogic::Client {
        match &self.user_agent {
            Some(user_agent) => self.client.with_user_agent(user_agent),
            None => self.client.clone(),
        }
    }
}
