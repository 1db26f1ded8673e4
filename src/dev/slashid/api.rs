//! The dev server's routes: the REST API in SlashID's envelope, the key
//! set, and hosted login.

// The helpers return the error answer itself: a dev server's cold path,
// where a boxed `Response` would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::super::pages::esc;
use super::super::store::random_token;
use super::{Code, Person, Shared};

/// How long a hosted-login code lives (seconds).
const CODE_LIFETIME: u64 = 600;

type S = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/token/validate", post(validate))
        .route("/token/revoke", post(revoke))
        .route("/token", get(org_token))
        .route("/me", get(me))
        .route("/direct-id", post(direct_id))
        .route("/attributes/{bucket}", any(attributes))
        .route("/consent/gdpr", any(consent))
        .route("/persons/anonymous", post(anonymous))
        .route("/persons/{id}/attributes/{bucket}", get(person_attributes))
        .route(
            "/oauth2/authorize",
            get(authorize_page).post(authorize_submit),
        )
        .route("/oauth2/tokens", post(tokens))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

/// Counts every request, by path.
async fn count(State(shared): S, request: Request, next: Next) -> Response {
    shared.calls.fetch_add(1, Ordering::Relaxed);
    *shared
        .lock()
        .requests
        .entry(request.uri().path().to_owned())
        .or_default() += 1;
    next.run(request).await
}

/// SlashID's error envelope (§3.6).
fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"httpcode": status.as_u16(), "message": message}]})),
    )
        .into_response()
}

fn result(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(json!({ "result": value }))).into_response()
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "authentication has expired")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The person of the request's valid bearer token, and its claims.
fn person_of(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(String, Map<String, Value>), Response> {
    let token = bearer(headers).ok_or_else(unauthorized)?;
    let claims = shared.verify(token).map_err(|_| unauthorized())?;
    let person = claims
        .get("person_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok((person, claims))
}

fn has_api_key(shared: &Shared, headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    get("slashid-orgid") == Some(shared.org_id.as_str())
        && get("slashid-api-key") == Some(shared.api_key.as_str())
}

fn json_body(bytes: &Bytes, headers: &HeaderMap) -> Result<Value, Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(error(StatusCode::BAD_REQUEST, "expected a JSON body"));
    }
    serde_json::from_slice(bytes).map_err(|_| error(StatusCode::BAD_REQUEST, "malformed JSON"))
}

async fn index(State(shared): S) -> Response {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>SlashID dev server</title></head>\
<body><h1>SlashID dev server</h1><p>Organization <code>{org}</code>, API base <code>{url}</code>, \
hosted-login client <code>{client}</code>. Nothing leaves this process.</p>\
<ul><li><a href=\"/.well-known/jwks.json\">Key set</a></li></ul></body></html>",
        org = esc(&shared.org_id),
        url = esc(&shared.url),
        client = esc(&shared.client_id),
    ))
    .into_response()
}

async fn jwks(State(shared): S) -> Response {
    let st = shared.lock();
    if let Some(status) = st.jwks_failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, "key set unavailable").into_response();
    }
    let keys: Vec<Value> = st
        .published
        .iter()
        .filter_map(|i| shared.keys.get(*i))
        .map(|k| k.jwk.clone())
        .collect();
    axum::Json(json!({ "keys": keys })).into_response()
}

async fn validate(State(shared): S, headers: HeaderMap, body: Bytes) -> Response {
    let body = match json_body(&body, &headers) {
        Ok(body) => body,
        Err(response) => return response,
    };
    // The server SDK sends the API key, the browser SDK the token itself
    // (§3.2); both are accepted.
    let Some(token) = body.get("token").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "missing token");
    };
    if !has_api_key(&shared, &headers) && bearer(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "bad API key or organization");
    }
    match shared.verify(token) {
        Ok(claims) => {
            let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
            let now = shared.lock().now();
            result(
                StatusCode::OK,
                json!({"valid": true, "expires_in_seconds": exp.saturating_sub(now)}),
            )
        }
        Err(reason) => result(
            StatusCode::OK,
            json!({"valid": false, "invalidity_reason": reason}),
        ),
    }
}

async fn revoke(State(shared): S, headers: HeaderMap, body: Bytes) -> Response {
    let body = match json_body(&body, &headers) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Some(token) = body.get("token").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "missing token");
    };
    let Ok(claims) = shared.verify(token) else {
        return error(StatusCode::BAD_REQUEST, "token already revoked or expired");
    };
    if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
        shared.lock().revoked.insert(jti.to_owned(), true);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn org_token(State(shared): S, headers: HeaderMap) -> Response {
    let (person, claims) = match person_of(&shared, &headers) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let target = headers
        .get("slashid-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !shared.organizations.iter().any(|(id, _)| id == target) {
        return error(
            StatusCode::FORBIDDEN,
            "person is not a member of the organization",
        );
    }
    // Not an authentication: the same expiry (§3.2).
    let exp = claims.get("exp").and_then(Value::as_u64);
    let method = claims
        .get("authenticated_methods")
        .and_then(|m| m.get(0))
        .and_then(Value::as_str)
        .unwrap_or("email_link")
        .to_owned();
    match shared.issue(&person, target, &method, exp) {
        Some(token) => result(StatusCode::OK, Value::String(token)),
        None => unauthorized(),
    }
}

fn handles_json(person: &Person) -> Value {
    Value::Array(
        person
            .handles
            .iter()
            .map(|(t, v)| json!({"type": t, "value": v}))
            .collect(),
    )
}

async fn me(State(shared): S, headers: HeaderMap) -> Response {
    let (person, _) = match person_of(&shared, &headers) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let st = shared.lock();
    let Some(p) = st.persons.get(&person) else {
        return unauthorized();
    };
    let organizations: Vec<Value> = shared
        .organizations
        .iter()
        .map(|(id, name)| {
            json!({"id": id, "parent_id": shared.org_id, "org_name": name,
                   "tenant_name": "dev", "managed_organizations": []})
        })
        .collect();
    result(
        StatusCode::OK,
        json!({
            "person": {"active": p.active, "person_id": p.id,
                       "person_type": if p.anonymous { "anonymous" } else { "regular" },
                       "region": "europe-belgium", "handles": handles_json(p),
                       "groups": p.groups, "attributes": p.attributes},
            "organizations": organizations,
            "handles": handles_json(p),
            "credentials": [],
        }),
    )
}

async fn direct_id(State(shared): S, headers: HeaderMap) -> Response {
    if let Err(response) = person_of(&shared, &headers) {
        return response;
    }
    result(
        StatusCode::CREATED,
        Value::String(format!("did:{}", random_token())),
    )
}

fn names(query: &HashMap<String, String>) -> Vec<String> {
    query
        .get("attributes")
        .map(|csv| {
            csv.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn pick(bucket: Option<&Map<String, Value>>, names: &[String]) -> Value {
    let bucket = bucket.cloned().unwrap_or_default();
    if names.is_empty() {
        return Value::Object(bucket);
    }
    Value::Object(
        bucket
            .into_iter()
            .filter(|(k, _)| names.contains(k))
            .collect(),
    )
}

async fn attributes(
    State(shared): S,
    method: Method,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (person, _) = match person_of(&shared, &headers) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let mut st = shared.lock();
    let Some(p) = st.persons.get_mut(&person) else {
        return unauthorized();
    };
    match method {
        Method::GET => result(
            StatusCode::OK,
            pick(p.attributes.get(&bucket), &names(&query)),
        ),
        Method::PUT => {
            let Ok(Value::Object(map)) = json_body(&body, &headers) else {
                return error(StatusCode::BAD_REQUEST, "expected a JSON object");
            };
            p.attributes.entry(bucket).or_default().extend(map);
            StatusCode::NO_CONTENT.into_response()
        }
        Method::DELETE => {
            if let Some(b) = p.attributes.get_mut(&bucket) {
                for name in names(&query) {
                    b.remove(&name);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

const LEVELS: &[&str] = &[
    "none",
    "necessary",
    "analytics",
    "marketing",
    "retargeting",
    "tracking",
];

async fn consent(
    State(shared): S,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let (person, _) = match person_of(&shared, &headers) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let levels_of_body = || -> Result<Vec<String>, Response> {
        let body = json_body(&body, &headers)?;
        let levels: Vec<String> = body
            .get("consent_levels")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if levels.iter().any(|l| !LEVELS.contains(&l.as_str())) {
            return Err(error(StatusCode::BAD_REQUEST, "unknown consent level"));
        }
        Ok(levels)
    };
    let mut st = shared.lock();
    let now = st.now();
    let Some(p) = st.persons.get_mut(&person) else {
        return unauthorized();
    };
    match method {
        Method::GET => {}
        Method::PUT | Method::POST => {
            let levels = match levels_of_body() {
                Ok(l) => l,
                Err(response) => return response,
            };
            if method == Method::PUT {
                p.consents.clear();
            }
            for level in levels {
                if !p.consents.iter().any(|(l, _)| *l == level) {
                    p.consents.push((level, now));
                }
            }
        }
        Method::DELETE => {
            if pairs.iter().any(|(k, v)| k == "deleteAll" && v == "true") {
                p.consents.clear();
            } else {
                let remove: Vec<&str> = pairs
                    .iter()
                    .filter(|(k, _)| k == "consent_levels")
                    .map(|(_, v)| v.as_str())
                    .collect();
                p.consents.retain(|(l, _)| !remove.contains(&l.as_str()));
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
    let consents: Vec<Value> = p
        .consents
        .iter()
        .map(|(l, at)| json!({"consent_level": l, "created_at": format!("{at}")}))
        .collect();
    result(StatusCode::OK, json!({ "consents": consents }))
}

async fn anonymous(State(shared): S, headers: HeaderMap) -> Response {
    let org = headers
        .get("slashid-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !shared.organizations.iter().any(|(id, _)| *id == org) {
        return error(StatusCode::UNAUTHORIZED, "unknown organization");
    }
    let id = format!("pid:{}", &random_token()[..20]);
    shared.lock().persons.insert(
        id.clone(),
        Person {
            id: id.clone(),
            anonymous: true,
            active: true,
            handles: Vec::new(),
            groups: Vec::new(),
            attributes: HashMap::new(),
            consents: Vec::new(),
            fresh: true,
        },
    );
    match shared.issue(&id, &org, "anonymous", None) {
        Some(token) => result(StatusCode::CREATED, Value::String(token)),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

async fn person_attributes(
    State(shared): S,
    Path((id, bucket)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !has_api_key(&shared, &headers) {
        return error(StatusCode::UNAUTHORIZED, "bad API key or organization");
    }
    let st = shared.lock();
    match st.persons.get(&id) {
        Some(p) => result(StatusCode::OK, pick(p.attributes.get(&bucket), &[])),
        None => error(StatusCode::NOT_FOUND, "person not found"),
    }
}

// ---- hosted login ---------------------------------------------------------

#[derive(serde::Deserialize)]
struct AuthorizeQuery {
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
}

/// An `http(s)` URL to send a browser to (never `javascript:`).
fn web_url(url: &str) -> Option<url::Url> {
    url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
}

fn check_authorize(shared: &Shared, q: &AuthorizeQuery) -> Result<url::Url, Response> {
    let bad = |what: &str| Err((StatusCode::BAD_REQUEST, format!("bad {what}")).into_response());
    if q.client_id != shared.client_id {
        return bad("client_id");
    }
    if q.response_type != "code" {
        return bad("response_type");
    }
    if q.code_challenge_method != "S256" || q.code_challenge.len() != 43 {
        return bad("code_challenge");
    }
    if q.state.is_empty() {
        return bad("state");
    }
    web_url(&q.redirect_uri).map_or_else(|| bad("redirect_uri"), Ok)
}

async fn authorize_page(State(shared): S, Query(q): Query<AuthorizeQuery>) -> Response {
    if let Err(response) = check_authorize(&shared, &q) {
        return response;
    }
    let hidden = |name: &str, value: &str| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            esc(value)
        )
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>SlashID (dev) sign-in</title></head>\
<body><h1>Sign in (SlashID dev server)</h1><form method=\"post\">{}{}{}{}{}{}\
<label>E-mail <input name=\"email\" value=\"dev@example.com\"></label> \
<label>Groups <input name=\"groups\" value=\"\" placeholder=\"admin, staff\"></label> \
<button name=\"decision\" value=\"allow\">Sign in</button> <button name=\"decision\" value=\"deny\">Cancel</button>\
</form></body></html>",
        hidden("redirect_uri", &q.redirect_uri),
        hidden("client_id", &q.client_id),
        hidden("response_type", &q.response_type),
        hidden("state", &q.state),
        hidden("code_challenge", &q.code_challenge),
        hidden("code_challenge_method", &q.code_challenge_method),
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct AuthorizeForm {
    #[serde(flatten)]
    query: AuthorizeQuery,
    #[serde(default)]
    email: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    decision: String,
}

fn see_other(target: &url::Url) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, target.as_str())
        .body(Body::empty())
        .unwrap_or_default()
}

async fn authorize_submit(
    State(shared): S,
    axum::Form(form): axum::Form<AuthorizeForm>,
) -> Response {
    let mut target = match check_authorize(&shared, &form.query) {
        Ok(target) => target,
        Err(response) => return response,
    };
    let q = &form.query;
    if form.decision != "allow" || !form.email.contains('@') {
        target
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", &q.state);
        return see_other(&target);
    }
    let code = random_token();
    {
        let mut st = shared.lock();
        let person = st.person_by_email(&form.email);
        let groups: Vec<String> = form
            .groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(p) = st.persons.get_mut(&person)
            && !groups.is_empty()
        {
            p.groups = groups;
        }
        let expires = st.now() + CODE_LIFETIME;
        st.codes.insert(
            code.clone(),
            Code {
                person,
                client_id: q.client_id.clone(),
                redirect_uri: q.redirect_uri.clone(),
                challenge: q.code_challenge.clone(),
                expires,
            },
        );
    }
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q.state);
    see_other(&target)
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": code })),
    )
        .into_response()
}

async fn tokens(
    State(shared): S,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "authorization_code" {
        return oauth_error("unsupported_grant_type");
    }
    // Single use: the code is gone whatever happens next.
    let Some(code) = shared.lock().codes.remove(field("code")) else {
        return oauth_error("invalid_grant");
    };
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(field("code_verifier").as_bytes()));
    let now = shared.lock().now();
    if code.expires <= now
        || code.client_id != field("client_id")
        || code.redirect_uri != field("redirect_uri")
        || code.challenge != challenge
    {
        return oauth_error("invalid_grant");
    }
    let Some(token) = shared.issue(&code.person, &shared.org_id, "email_link", None) else {
        return oauth_error("invalid_grant");
    };
    let lifetime = shared.lock().lifetime.as_secs();
    axum::Json(json!({
        "access_token": random_token(), "id_token": token, "token_type": "Bearer",
        "expires_in": lifetime, "refresh_token": random_token(), "scope": "openid",
    }))
    .into_response()
}
