//! The browser half: e-mail landings, the OAuth simulator and the outbox.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};
use url::Url;

use super::store::{
    GRANT_TTL, KeyError, KeyKind, KeyRec, RESET_TOKEN_TTL, Store, UserRec, format_time,
    normalize_email, numeric_id,
};
use super::{Channel, Shared};

/// OAuth providers the simulator knows: path name and `provider` value.
const PROVIDERS: &[(&str, &str)] = &[
    ("google", "Google"),
    ("facebook", "Facebook"),
    ("twitter", "Twitter"),
    ("apple", "Apple"),
    ("discord", "Discord"),
    ("github", "Github"),
];

fn provider_name(path_name: &str) -> Option<&'static str> {
    PROVIDERS
        .iter()
        .find(|(p, _)| *p == path_name)
        .map(|(_, name)| *name)
}

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A whole HTML page; `title` is escaped, `body` is trusted markup.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let title = esc(title);
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         label{{display:block;margin:.6rem 0}}input{{display:block;width:100%;padding:.4rem;font-size:1rem}}\
         button{{margin:.8rem .6rem 0 0;padding:.4rem 1.2rem;font-size:1rem}}\
         article{{border:1px solid #ccc;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}}\
         pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5rem}}.meta{{color:#666;font-size:.9rem}}\
         .code{{font-size:1.6rem;letter-spacing:.2rem;font-weight:bold}}\
         </style></head><body><p class=\"meta\">authgate dev upstream</p>\n{body}\n</body></html>\n"
    );
    (status, Html(html)).into_response()
}

/// The first value of `name` in a raw query string.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The page shown instead of a redirect when no redirect URL is configured.
fn no_redirect_page(action: &str) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "No redirect URL configured",
        &format!(
            "<h1>No redirect URL configured</h1><p>The dev upstream would now send you back \
             to the app (action <code>{}</code>), but no redirect URL is set. Call \
             <code>DevUpstream::set_redirect_url</code> with the app's auth callback URL \
             and try again. Nothing was consumed.</p>",
            esc(action)
        ),
    )
}

/// `303 See Other` to `target` with `params` appended to its query string.
fn redirect(target: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = Url::parse(target) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid redirect URL",
            &format!(
                "<h1>Invalid redirect URL</h1><p>The configured redirect URL <code>{}</code> \
                 is not an absolute URL.</p>",
                esc(target)
            ),
        );
    };
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in params {
            pairs.append_pair(k, v);
        }
    }
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid redirect URL",
            "<h1>Invalid redirect URL</h1>",
        ),
    }
}

/// A landing failure: the `status` and `error` to put in the redirect.
type Failure = (u16, String);

/// Shared logic of the `/_auth/...` e-mail landings: consume the `key`, run
/// `complete`, and redirect to the app with `action`, `status` and either the
/// extra parameters from `complete` or `error`.
fn landing(
    sh: &Shared,
    query: Option<&str>,
    action: &str,
    what: &str,
    accept: fn(&KeyKind) -> bool,
    complete: impl FnOnce(&mut Store, KeyRec) -> Result<Vec<(&'static str, String)>, Failure>,
) -> Response {
    let mut st = sh.lock();
    let Some(target) = st.redirect_url.clone() else {
        return no_redirect_page(action);
    };
    let key = query_param(query, "key").unwrap_or_default();
    let result = match st.consume_key(&key, accept) {
        Ok(rec) => complete(&mut st, rec),
        Err(e) => Err((StatusCode::UNAUTHORIZED.as_u16(), e.message(what))),
    };
    drop(st);
    match result {
        Ok(extra) => {
            let mut params = vec![("action", action), ("status", "200")];
            params.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
            redirect(&target, &params)
        }
        Err((status, message)) => {
            let status = status.to_string();
            redirect(
                &target,
                &[("action", action), ("status", &status), ("error", &message)],
            )
        }
    }
}

fn issue_grant(st: &mut Store, user_id: &str) -> Vec<(&'static str, String)> {
    vec![(
        "access_token",
        st.issue_key(KeyKind::Grant, user_id, GRANT_TTL),
    )]
}

/// `GET /_auth/verify-email?key=`
pub(super) async fn verify_email(
    State(sh): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    landing(
        &sh,
        query.as_deref(),
        "email-confirm",
        "email confirmation link",
        |k| matches!(k, KeyKind::VerifyEmailLink { .. }),
        |st, rec| {
            let KeyKind::VerifyEmailLink { email } = rec.kind else {
                return Err((401, KeyError::Unknown.message("email confirmation link")));
            };
            let Some(user) = st.user_mut(&rec.user_id) else {
                return Err((401, KeyError::Unknown.message("email confirmation link")));
            };
            if user.email.as_deref() != Some(email.as_str()) {
                return Err((
                    401,
                    "This link is for an email address that is no longer on the account.".into(),
                ));
            }
            user.email_verified = true;
            Ok(issue_grant(st, &rec.user_id))
        },
    )
}

/// `GET /_auth/magic?key=`
pub(super) async fn magic(State(sh): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    landing(
        &sh,
        query.as_deref(),
        "magic-link",
        "magic link",
        |k| *k == KeyKind::MagicLink,
        |st, rec| Ok(issue_grant(st, &rec.user_id)),
    )
}

/// `GET /_auth/reset?key=`
pub(super) async fn reset(State(sh): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    landing(
        &sh,
        query.as_deref(),
        "reset-pwd",
        "password reset link",
        |k| *k == KeyKind::ResetLink,
        |st, rec| {
            let token = st.issue_key(KeyKind::ResetToken, &rec.user_id, RESET_TOKEN_TTL);
            Ok(vec![("access_token", token)])
        },
    )
}

/// `GET /_auth/change-email?key=`
pub(super) async fn change_email(
    State(sh): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    landing(
        &sh,
        query.as_deref(),
        "change-email",
        "email change link",
        |k| matches!(k, KeyKind::ChangeEmailLink { .. }),
        |st, rec| {
            let KeyKind::ChangeEmailLink { new_email } = rec.kind else {
                return Err((401, KeyError::Unknown.message("email change link")));
            };
            if st
                .user_id_by_email(&new_email)
                .is_some_and(|owner| owner != rec.user_id)
            {
                return Err((
                    409,
                    "This email address is already used by another account.".into(),
                ));
            }
            let Some(user) = st.user_mut(&rec.user_id) else {
                return Err((401, KeyError::Unknown.message("email change link")));
            };
            user.email = Some(new_email);
            user.email_verified = true;
            Ok(Vec::new())
        },
    )
}

fn unknown_provider_page(provider: &str) -> Response {
    let known: Vec<String> = PROVIDERS
        .iter()
        .map(|(p, name)| format!("<li><a href=\"/_auth/{p}\">{name}</a></li>"))
        .collect();
    page(
        StatusCode::NOT_FOUND,
        "Unknown provider",
        &format!(
            "<h1>Unknown provider</h1><p>The dev simulator does not know the provider \
             <code>{}</code>. Known providers:</p><ul>{}</ul>",
            esc(provider),
            known.concat()
        ),
    )
}

/// `GET /_auth/{provider}`: the simulated consent screen.
pub(super) async fn oauth_page(
    Path(provider): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(name) = provider_name(&provider) else {
        return unknown_provider_page(&provider);
    };
    let user_name =
        query_param(query.as_deref(), "name").unwrap_or_else(|| "Ada Lovelace".to_owned());
    let email =
        query_param(query.as_deref(), "email").unwrap_or_else(|| format!("ada@{provider}.example"));
    let title = format!("Sign in with {name} (dev simulator)");
    page(
        StatusCode::OK,
        &title,
        &format!(
            "<h1>{title}</h1>\
             <p>This page stands in for {name}'s sign-in and consent screen. \
             Choose who {name} says you are.</p>\
             <form method=\"post\" action=\"/_auth/{provider}\">\
             <label>Name <input name=\"name\" value=\"{user_name}\"></label>\
             <label>Email <input name=\"email\" type=\"email\" value=\"{email}\" required></label>\
             <button type=\"submit\" name=\"decision\" value=\"continue\">Continue</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button>\
             </form>",
            title = esc(&title),
            name = esc(name),
            provider = esc(&provider),
            user_name = esc(&user_name),
            email = esc(&email),
        ),
    )
}

/// `POST /_auth/{provider}` (form: `name`, `email`, `decision`).
pub(super) async fn oauth_submit(
    State(sh): State<Arc<Shared>>,
    Path(provider): Path<String>,
    body: Bytes,
) -> Response {
    let Some(name) = provider_name(&provider) else {
        return unknown_provider_page(&provider);
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let decision = field("decision");
    let user_name = field("name");
    let raw_email = field("email");

    let mut st = sh.lock();
    let Some(target) = st.redirect_url.clone() else {
        return no_redirect_page("oauth-signin");
    };
    let outcome: Result<String, Failure> = if decision.eq_ignore_ascii_case("deny") {
        Err((401, format!("Access was denied at {name} (dev simulator).")))
    } else {
        oauth_user(&mut st, name, &user_name, &raw_email)
            .map(|id| st.issue_key(KeyKind::Grant, &id, GRANT_TTL))
    };
    drop(st);
    match outcome {
        Ok(grant) => redirect(
            &target,
            &[
                ("action", "oauth-signin"),
                ("status", "200"),
                ("access_token", &grant),
            ],
        ),
        Err((status, message)) => {
            let status = status.to_string();
            redirect(
                &target,
                &[
                    ("action", "oauth-signin"),
                    ("status", &status),
                    ("error", &message),
                ],
            )
        }
    }
}

/// Finds or creates the user for (provider, e-mail).
fn oauth_user(
    st: &mut Store,
    provider: &str,
    name: &str,
    raw_email: &str,
) -> Result<String, Failure> {
    let Some(email) = normalize_email(raw_email) else {
        return Err((
            400,
            format!("{provider} did not return a valid email address (dev simulator)."),
        ));
    };
    if let Some(id) = st.user_id_by_provider_email(provider, &email) {
        return Ok(id);
    }
    if st.user_id_by_email(&email).is_some() {
        return Err((
            409,
            "This email address is already used by another account.".to_owned(),
        ));
    }
    let mut user = UserRec::new(provider, st.now());
    user.provider_user_id = numeric_id();
    user.email = Some(email);
    user.email_verified = true;
    user.name = (!name.is_empty()).then(|| name.to_owned());
    Ok(st.insert_user(user))
}

/// `GET /`: an index of the dev pages.
pub(super) async fn index(State(sh): State<Arc<Shared>>) -> Response {
    let st = sh.lock();
    let redirect = st
        .redirect_url
        .as_deref()
        .map(|u| format!("<code>{}</code>", esc(u)))
        .unwrap_or_else(|| "<em>not set</em>".to_owned());
    let on_off = |b: bool| if b { "on" } else { "off" };
    let providers: Vec<String> = PROVIDERS
        .iter()
        .map(|(p, name)| format!("<li><a href=\"/_auth/{p}\">Sign in with {name}</a></li>"))
        .collect();
    let body = format!(
        "<h1>authgate dev upstream</h1>\
         <p>An in-memory stand-in for the Altogic auth service. Environment URL \
         <code>{url}</code>.</p>\
         <ul><li>Redirect URL: {redirect}</li><li>Email confirmation: {email}</li>\
         <li>Phone confirmation: {phone}</li><li>Users: {users}</li></ul>\
         <p><a href=\"/_dev/outbox\">Outbox</a> ({count} messages) · \
         <a href=\"/_dev/outbox.json\">outbox.json</a></p>\
         <h2>OAuth simulator</h2><ul>{providers}</ul>",
        url = esc(&sh.url),
        email = on_off(st.email_confirmation),
        phone = on_off(st.phone_confirmation),
        users = st.users.len(),
        count = st.outbox.len(),
        providers = providers.concat(),
    );
    drop(st);
    page(StatusCode::OK, "authgate dev upstream", &body)
}

/// `GET /_dev/outbox`: every message, newest first.
pub(super) async fn outbox_html(State(sh): State<Arc<Shared>>) -> Response {
    let messages = sh.lock().outbox.clone();
    let mut body = format!(
        "<h1>Outbox</h1><p>{} message(s), newest first. Nothing here was really sent. \
         <a href=\"/_dev/outbox.json\">JSON</a> · <a href=\"/\">home</a></p>",
        messages.len()
    );
    if messages.is_empty() {
        body.push_str("<p><em>Nothing sent yet.</em></p>");
    }
    for m in messages.iter().rev() {
        let channel = match m.channel {
            Channel::Email => "Email",
            Channel::Sms => "SMS",
        };
        body.push_str(&format!(
            "<article><p class=\"meta\">{channel} · {kind} · {at}</p>\
             <p><strong>To:</strong> {to}<br><strong>Subject:</strong> {subject}</p>",
            kind = esc(m.kind.as_str()),
            at = esc(&format_time(m.sent_at)),
            to = esc(&m.to),
            subject = esc(&m.subject),
        ));
        if let Some(code) = &m.code {
            body.push_str(&format!("<p class=\"code\">{}</p>", esc(code)));
        }
        if let Some(link) = &m.link {
            body.push_str(&format!(
                "<p><a href=\"{href}\">{text}</a></p>",
                href = esc(link),
                text = esc(link)
            ));
        }
        body.push_str(&format!("<pre>{}</pre></article>", esc(&m.body)));
    }
    page(StatusCode::OK, "Outbox", &body)
}

/// `GET /_dev/outbox.json`: every message, oldest first.
pub(super) async fn outbox_json(State(sh): State<Arc<Shared>>) -> Response {
    let messages: Vec<Value> = sh.lock().outbox.iter().map(|m| m.to_json()).collect();
    Json(Value::Array(messages)).into_response()
}

/// Anything else: a JSON 404 in the API's error format.
pub(super) async fn not_found(uri: Uri) -> Response {
    let body = json!({
        "errors": [{
            "origin": "client_error",
            "code": "not_found",
            "message": format!("Nothing at `{}`.", uri.path()),
            "details": {},
        }]
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
