//! The example site, everything but `main`: configuration, the router and
//! its handlers, the auth-event log and the templates. `tests/ssr_site.rs`
//! includes this module with `#[path]` and drives [`app`] in-process (and
//! [`app_with_layer`] with the test kit's layer).

mod account;
mod activity;
pub(crate) mod events;
mod flash;
#[cfg(feature = "oidc")]
mod oidc;
mod password;
mod phone;
mod render;
pub(crate) mod settings;
mod sign_in;
mod sign_up;
#[cfg(feature = "slashid")]
mod slashid;
#[cfg(feature = "webcom")]
mod webcom;

use std::io;
use std::sync::Arc;

use authgate::dev::DevUpstream;
use authgate::{AuthConfig, AuthLayer, AuthService, ConfigError, altogic};
use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::Key;

pub(crate) use events::EventLog;
pub(crate) use render::{Problem, View};

/// The whole site: the router wrapped in the auth layer.
pub(crate) type App = AuthService<Router>;

/// Where a signed-in user lands when the sign-in had no `return_to`.
pub(crate) const AFTER_SIGN_IN: &str = "/account";

/// Shared by every handler.
pub(crate) struct Site {
    /// The Altogic client, when the site runs on Altogic.
    pub(crate) altogic: Option<altogic::Client>,
    /// The Webcom client, when the site runs on Orange Webcom.
    #[cfg(feature = "webcom")]
    pub(crate) webcom: Option<authgate::webcom::Client>,
    /// The SlashID client, when the site runs on SlashID.
    #[cfg(feature = "slashid")]
    pub(crate) slashid: Option<authgate::slashid::Client>,
    /// The OpenID Connect client, when the site runs on an OpenID Provider.
    #[cfg(feature = "oidc")]
    pub(crate) oidc: Option<authgate::oidc::Client>,
    pub(crate) templates: render::Templates,
    /// The dev upstream's outbox page, when the dev upstream is in use.
    pub(crate) outbox_url: Option<String>,
    /// The recent auth events, for the account page.
    pub(crate) events: EventLog,
    /// When each session was last active here, for the sessions page.
    pub(crate) activity: activity::Activity,
    /// The key of the private cookie jar (flash messages): derived from
    /// the layer's key, so the site keeps one secret.
    pub(crate) jar_key: Key,
}

/// Site settings beyond the auth configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct SiteOptions {
    /// Link to this outbox (the dev upstream's `/_dev/outbox`) on every page.
    pub(crate) outbox_url: Option<String>,
    /// Where auth events go: the log, and the account page's "Recent auth
    /// events". [`app`] gives its hook to the layer and to the client.
    pub(crate) events: EventLog,
}

impl SiteOptions {
    /// The options for a site backed by the SlashID dev server (it sends
    /// nothing, so no outbox).
    #[cfg(feature = "slashid")]
    pub(crate) fn for_slashid_dev() -> Self {
        Self::default()
    }

    /// The options for a site backed by this Webcom dev server.
    #[cfg(feature = "webcom")]
    pub(crate) fn for_webcom_dev(dev: &authgate::dev::webcom::WebcomDev) -> Self {
        Self {
            outbox_url: Some(format!("{}/_dev/outbox", dev.url())),
            ..Self::default()
        }
    }

    /// The options for a site backed by this dev upstream.
    pub(crate) fn for_dev(dev: &DevUpstream) -> Self {
        Self {
            outbox_url: Some(format!("{}/_dev/outbox", dev.url())),
            ..Self::default()
        }
    }
}

/// The layer's configuration for a site served at `public_url`.
pub(crate) fn auth_config(public_url: &str, key: Option<&[u8]>) -> Result<AuthConfig, ConfigError> {
    // The layer's own pages (a refused link, "Continue", an outage) in the
    // site's look.
    let templates = Arc::new(render::Templates::new());
    let config = AuthConfig::new(public_url)?
        .with_page_renderer(move |page| templates.layer_page(page))
        .with_sign_in_page("/signin")?
        .with_after_sign_in(AFTER_SIGN_IN)?
        .with_reset_password_page("/reset-password")?
        // "You are signed in", "Your e-mail address is confirmed" after a
        // provider, a magic link or a confirmation link.
        .with_sign_in_notices(true)
        // The account page reads the user fresh, so it shows a confirmed
        // e-mail change at once.
        .with_notice_page(AFTER_SIGN_IN)?;
    match key {
        Some(key) => config.with_key(key),
        None => Ok(config),
    }
}

/// Starts the embedded Webcom dev server the way the example uses it:
/// e-mail identities must be verified, so the whole sign-up shows.
#[cfg(feature = "webcom")]
pub(crate) async fn spawn_webcom_dev() -> io::Result<authgate::dev::webcom::WebcomDev> {
    authgate::dev::webcom::WebcomDev::builder()
        .with_verification_required(true)
        .spawn()
        .await
}

/// Starts the embedded dev upstream the way the example uses it: e-mail and
/// phone confirmation on, so every flow of the seed `AuthManager` shows.
pub(crate) async fn spawn_dev_upstream() -> io::Result<DevUpstream> {
    DevUpstream::builder()
        .with_email_confirmation(true)
        .with_phone_confirmation(true)
        .spawn()
        .await
}

/// The site: every page and form, wrapped in [`AuthLayer`] (which also
/// answers `/auth/signin/{provider}`, `/auth/callback` and `/auth/signout`).
///
/// One `AuthEvents` (`options.events`) goes to both the layer (sign-ins,
/// sign-outs, invalidated sessions, rejected flows) and the Altogic client
/// (password, e-mail and phone changes). Fails only when the client cannot
/// be built (a bad environment URL or client key).
pub(crate) fn app(
    config: AuthConfig,
    altogic: altogic::ClientBuilder,
    options: SiteOptions,
) -> Result<App, ConfigError> {
    let events = options.events.auth_events();
    let altogic = altogic.with_events(events.clone()).build()?;
    let layer = AuthLayer::new(config.with_events(events), altogic.clone());
    Ok(app_with_layer(layer, altogic, options))
}

/// The site wrapped in a layer the caller built: the tests pass the test
/// kit's (`TestKit::with_config(auth_config(..)?.with_events(..))`). The
/// pages call `altogic` directly for what the layer does not do.
pub(crate) fn app_with_layer(
    layer: AuthLayer,
    altogic: altogic::Client,
    options: SiteOptions,
) -> App {
    let site = Site::new(&layer, Some(altogic), options);
    let router = Router::new()
        .route("/signin", get(sign_in::page).post(sign_in::with_email))
        .route("/signin/phone", post(sign_in::with_phone))
        .route(
            "/signin/code",
            get(sign_in::code_page).post(sign_in::with_code),
        )
        .route("/signin/code/send", post(sign_in::send_code))
        .route(
            "/signin/magic",
            get(sign_in::magic_page).post(sign_in::send_magic),
        )
        .route("/signup", get(sign_up::page).post(sign_up::with_email))
        .route(
            "/signup/phone",
            get(sign_up::phone_page).post(sign_up::with_phone),
        )
        .route("/confirm-email/resend", post(sign_up::resend_email))
        .route(
            "/verify-phone",
            get(sign_up::verify_phone_page).post(sign_up::verify_phone),
        )
        .route("/verify-phone/resend", post(sign_up::resend_code))
        .route("/forgot-password", get(password::forgot_page))
        .route("/forgot-password/email", post(password::send_reset_email))
        .route("/forgot-password/sms", post(password::send_reset_code))
        .route(
            "/reset-password",
            get(password::reset_page).post(password::reset),
        )
        .route("/reset-password/code", post(password::reset_with_code))
        .route("/account", get(account::page))
        .route("/account/password", post(account::change_password))
        .route("/account/email", post(account::change_email))
        .route("/account/phone", post(account::change_phone))
        .route("/account/sessions", get(account::sessions_page))
        .route("/account/sessions/end", post(account::end_session))
        .route(
            "/account/sign-out-everywhere",
            get(account::sign_out_everywhere_page),
        );
    serve(layer, router, site)
}

/// The site on Orange Webcom (`AUTHGATE_UPSTREAM=webcom`): the same
/// contract (`/`, `/signin`, `/signup`, `/account`, the layer's `/auth/*`),
/// with the sign-in methods Webcom offers (`site/webcom.rs`). One
/// `AuthEvents` goes to the layer and the client, as on Altogic.
#[cfg(feature = "webcom")]
pub(crate) fn webcom_app(
    config: AuthConfig,
    client: authgate::webcom::ClientBuilder,
    options: SiteOptions,
) -> Result<App, ConfigError> {
    let events = options.events.auth_events();
    let client = client.with_events(events.clone()).build()?;
    let layer = AuthLayer::new(config.with_events(events), client.clone());
    Ok(webcom_app_with_layer(layer, client, options))
}

/// The Webcom site wrapped in a layer the caller built.
#[cfg(feature = "webcom")]
pub(crate) fn webcom_app_with_layer(
    layer: AuthLayer,
    client: authgate::webcom::Client,
    options: SiteOptions,
) -> App {
    let mut site = Site::new(&layer, None, options);
    site.webcom = Some(client);
    serve(layer, webcom::routes(), site)
}

/// The site on SlashID (`AUTHGATE_UPSTREAM=slashid`): hosted login and
/// guests, groups, organizations and an admin-only page
/// (`site/slashid.rs`). One `AuthEvents` goes to the layer, as on the
/// other backends.
#[cfg(feature = "slashid")]
pub(crate) fn slashid_app(
    config: AuthConfig,
    client: authgate::slashid::ClientBuilder,
    options: SiteOptions,
) -> Result<App, ConfigError> {
    let events = options.events.auth_events();
    let client = client.build()?;
    let layer = AuthLayer::new(config.with_events(events), client.clone());
    let mut site = Site::new(&layer, None, options);
    site.slashid = Some(client);
    Ok(serve(layer, slashid::routes(), site))
}

/// The site on any OpenID Provider (`AUTHGATE_UPSTREAM=oidc`): the
/// provider's sign-in through the layer (code flow with PKCE), the user
/// from the ID token, refresh before expiry, RP-initiated and back-channel
/// logout, a page that wants a recent sign-in (`max_age`) and an
/// admin-only page (`site/oidc.rs`). Reads the provider's discovery
/// document first, so a wrong issuer fails at start-up.
#[cfg(feature = "oidc")]
pub(crate) async fn oidc_app(
    config: AuthConfig,
    client: authgate::oidc::ClientBuilder,
    options: SiteOptions,
) -> Result<App, Box<dyn std::error::Error>> {
    let events = options.events.auth_events();
    let client = client.build()?;
    client.metadata().await?;
    let layer = AuthLayer::new(config.with_events(events), client.clone());
    Ok(oidc_app_with_layer(layer, client, options))
}

/// The OpenID Connect site wrapped in a layer the caller built.
#[cfg(feature = "oidc")]
pub(crate) fn oidc_app_with_layer(
    layer: AuthLayer,
    client: authgate::oidc::Client,
    options: SiteOptions,
) -> App {
    let mut site = Site::new(&layer, None, options);
    site.oidc = Some(client);
    serve(layer, oidc::routes(), site)
}

/// Starts the embedded SlashID dev server the way the example uses it: a
/// second organization to switch to.
#[cfg(feature = "slashid")]
pub(crate) async fn spawn_slashid_dev() -> io::Result<authgate::dev::slashid::SlashIdDev> {
    authgate::dev::slashid::SlashIdDev::builder()
        .with_organization(SECOND_ORG, "Second organization")
        .spawn()
        .await
}

/// The dev server's second organization.
#[cfg(feature = "slashid")]
pub(crate) const SECOND_ORG: &str = "dev-org-2";

/// The SlashID client for the dev server: hosted login, both
/// organizations.
#[cfg(feature = "slashid")]
pub(crate) fn slashid_dev_client(
    dev: &authgate::dev::slashid::SlashIdDev,
) -> authgate::slashid::ClientBuilder {
    authgate::slashid::Client::builder(dev.url(), dev.org_id())
        .with_hosted_login(dev.client_id())
        .with_accepted_organizations([SECOND_ORG])
        .with_api_key(dev.api_key())
}

/// What every site has, on either backend: `/`, the stylesheet, the 404
/// page and the security headers; then the auth layer around it all.
fn serve(layer: AuthLayer, pages: Router<Arc<Site>>, site: Site) -> App {
    let router = pages
        .route("/", get(home))
        .route("/style.css", get(stylesheet))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Arc::new(site));
    layer.layer(router)
}

impl Site {
    /// The auth service the site runs on: `altogic` or `webcom` (templates
    /// show the sign-in methods it offers).
    pub(crate) fn backend_name(&self) -> &'static str {
        #[cfg(feature = "webcom")]
        if self.webcom.is_some() {
            return "webcom";
        }
        #[cfg(feature = "slashid")]
        if self.slashid.is_some() {
            return "slashid";
        }
        #[cfg(feature = "oidc")]
        if self.oidc.is_some() {
            return "oidc";
        }
        "altogic"
    }

    fn new(layer: &AuthLayer, altogic: Option<altogic::Client>, options: SiteOptions) -> Self {
        Self {
            altogic,
            #[cfg(feature = "webcom")]
            webcom: None,
            #[cfg(feature = "slashid")]
            slashid: None,
            #[cfg(feature = "oidc")]
            oidc: None,
            templates: render::Templates::new(),
            outbox_url: options.outbox_url,
            events: options.events,
            jar_key: layer.cookie_jar_key(),
            activity: activity::Activity::default(),
        }
    }
}

async fn home(view: View<()>) -> Response {
    view.page(StatusCode::OK, "home.html", minijinja::context! {})
}

async fn stylesheet() -> Response {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        include_str!("../static/style.css"),
    )
        .into_response()
}

async fn not_found(view: View<()>) -> Response {
    view.page(
        StatusCode::NOT_FOUND,
        "not_found.html",
        minijinja::context! {},
    )
}

/// Headers every page of the site gets: no framing, no sniffing, no
/// scripts or styles from elsewhere.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let defaults = [
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
    ];
    for (name, value) in defaults {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// Turns an upstream answer that carries a session into the session cookie
/// and a 303 to the validated `return_to`, with `notice` for that page (in
/// the flash cookie) when the sign-in was a step the user should hear
/// about (a verified phone, a new account).
pub(crate) fn finish_sign_in(
    view: &View,
    response: altogic::AuthResponse,
    return_to: Option<&str>,
    notice: Option<&str>,
) -> Result<Response, Problem> {
    let Some(grant) = response.into_grant() else {
        // Only sign-ups with a pending confirmation answer without a
        // session; a sign-in that does is the upstream misbehaving.
        return Err(Problem {
            status: StatusCode::BAD_GATEWAY,
            message: "The sign-in service did not open a session. Please try again.".to_owned(),
            code: None,
            field: None,
        });
    };
    if let Err(err) = view.auth.sign_in(grant) {
        // The session does not fit a cookie: a retry cannot help.
        return Err(Problem {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("You could not be signed in: {err}. Trying again will not help."),
            code: None,
            field: None,
        });
    }
    let target = view.auth.return_to(return_to.filter(|r| !r.is_empty()));
    Ok(match notice {
        Some(notice) => view.redirect_with_notice(&target, notice),
        None => axum::response::Redirect::to(&target).into_response(),
    })
}

/// Trims a form field; `None` when nothing is left.
pub(crate) fn filled(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|v| !v.is_empty())
}
