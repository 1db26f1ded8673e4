//! Everything under `/auth/v2/{appId}/`: the REST calls and the OAuth
//! sign-in pages of redirect mode.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::super::pages::esc;
use super::super::store::{PasswordHash, random_token};
use super::store::{Handover, MIN_PASSWORD_LEN, Purpose, Store, padded_hash};
use super::{Shared, WebcomMessageKind, is_oauth_provider};

/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;
/// How far a server-key assertion's `timestamp` may be from the clock.
const ASSERTION_SKEW: Duration = Duration::from_secs(300);

/// An error answer in Webcom's envelope, `{"error":{"code","message"}}`.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn missing(what: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MISSING_PARAMETER",
            format!("missing or malformed parameter: {what}"),
        )
    }

    fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "The authentication token is not valid.",
        )
    }

    fn invalid_credentials() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "INVALID_CREDENTIALS",
            "The credentials are not valid.",
        )
    }

    fn invalid_state(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_STATE", message)
    }

    fn unsupported() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED_PROVIDER",
            "This provider or operation is not supported.",
        )
    }

    fn too_old() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "TOKEN_TOO_OLD",
            "This operation needs a fresh authentication.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// The request's parts a handler needs.
struct Call<'a> {
    method: &'a Method,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    headers: &'a HeaderMap,
    body: Bytes,
}

impl Call<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
    }

    /// The JSON body (`Content-Type: application/json`).
    fn json(&self) -> Result<Value, ApiError> {
        if self.content_type() != "application/json" {
            return Err(ApiError::missing("a JSON body"));
        }
        serde_json::from_slice(&self.body).map_err(|_| ApiError::missing("a JSON body"))
    }

    /// The JSON object body.
    fn object(&self) -> Result<Map<String, Value>, ApiError> {
        match self.json()? {
            Value::Object(map) => Ok(map),
            _ => Err(ApiError::missing("a JSON object")),
        }
    }

    /// The form body (`application/x-www-form-urlencoded`).
    fn form(&self) -> Result<Vec<(String, String)>, ApiError> {
        if self.content_type() != "application/x-www-form-urlencoded" {
            return Err(ApiError::missing("a form body"));
        }
        Ok(url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect())
    }

    /// The bearer token, if any.
    fn bearer(&self) -> Option<&str> {
        self.headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
    }
}

fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing(key))
}

fn form_field<'a>(form: &'a [(String, String)], key: &str) -> Result<&'a str, ApiError> {
    form.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::missing(key))
}

/// The client version `c=`: a device letter and a version (§2.1).
fn valid_client_version(c: &str) -> bool {
    let Some(version) = c.strip_prefix(['b', 'n', 'a', 'i']) else {
        return false;
    };
    let parts: Vec<_> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// An e-mail the dev server accepts: something@something.
fn valid_email(id: &str) -> bool {
    id.split_once('@')
        .is_some_and(|(a, b)| !a.is_empty() && b.contains('.') && !id.contains(char::is_whitespace))
}

/// An MSISDN without `+`: 6 to 15 digits.
fn valid_msisdn(id: &str) -> bool {
    (6..=15).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

fn valid_id(provider: &str, id: &str) -> bool {
    match provider {
        "password" => valid_email(id),
        "phone" => valid_msisdn(id),
        _ => false,
    }
}

/// Decodes `%XX` escapes of a path segment (the SDK's
/// `encodeURIComponent`, §2.1); a bad escape stays as it is.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every request under `/auth/v2/`.
pub(super) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.calls.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(Body::new(body), MAX_BODY).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MISSING_PARAMETER",
            "body too large",
        )
        .into_response();
    };
    let mut segments: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .skip(1)
        .map(percent_decode)
        .collect();
    // ["auth", "v2", app, rest…]
    if segments.len() < 4 || segments[0] != "auth" || segments[1] != "v2" {
        return ApiError::unsupported().into_response();
    }
    if segments[2] != shared.app_id {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "UNKNOWN_APPLICATION",
            "No such application.",
        )
        .into_response();
    }
    segments.drain(..3);
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let call = Call {
        method: &parts.method,
        segments,
        query,
        headers: &parts.headers,
        body,
    };
    if !call.query("c").is_some_and(valid_client_version) {
        return ApiError::missing("c (client version)").into_response();
    }
    route(&shared, &call)
}

fn route(shared: &Shared, call: &Call<'_>) -> Response {
    let seg: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let method = call.method;
    let result = match (method, seg.as_slice()) {
        (&Method::GET, ["decode"]) => decode(shared, call),
        (&Method::POST, ["session"]) => resume_session(shared, call),
        (&Method::POST, ["anonymous", "signin"]) => guest(shared),
        (&Method::POST, [p @ ("password" | "phone"), "signin"]) => credentials(shared, call, p),
        (&Method::POST, [p @ ("password" | "phone"), "otps"]) => send_otp(shared, call, p),
        (&Method::POST, ["wassup", "signin"]) => wassup(shared, call),
        (&Method::POST, ["server", "signin"]) => server_key(shared, call),
        (&Method::POST, [p, "signin"]) if p.starts_with("custom.") => custom(shared, call, p),
        (&Method::GET, [p, "signin"]) if is_oauth_provider(p) => Ok(oauth_page(call, p)),
        (&Method::POST, [p, "signin"]) if is_oauth_provider(p) => oauth_submit(shared, call, p),
        (&Method::GET, [p, "callback"]) if is_oauth_provider(p) => code_callback(shared, call, p),
        (&Method::POST, [p @ ("password" | "phone"), "identities"]) => {
            add_identity(shared, call, p)
        }
        (&Method::POST, [p @ ("password" | "phone"), "identities", id, "verify"]) => {
            verify_identity(shared, call, p, id)
        }
        (
            &Method::POST,
            [
                p @ ("password" | "phone"),
                "identities",
                id,
                "sendVerification",
            ],
        ) => send_verification(shared, call, p, id),
        (&Method::POST, ["password", "identities", id, "reset"]) => reset_code(shared, id),
        (&Method::PUT, ["password", "identities", id, "password"]) => {
            update_password(shared, call, id)
        }
        (&Method::PUT, [p, "identities", puid, "providerProfile", path @ ..]) => {
            update_profile(shared, call, p, puid, path)
        }
        (&Method::DELETE, [p, "identities", puid]) => remove_identity(shared, call, p, puid),
        (&Method::GET, ["accounts", uid]) => account(shared, call, uid),
        (&Method::DELETE, ["accounts", uid]) => remove_account(shared, call, uid),
        _ => Err(ApiError::unsupported()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn decode(shared: &Shared, call: &Call<'_>) -> ApiResult {
    let st = shared.lock();
    let rec = call
        .bearer()
        .and_then(|t| st.token(t))
        .ok_or_else(ApiError::invalid_token)?;
    ok(json!({"data": st.details(&rec.provider, &rec.provider_uid, rec.expires)}))
}

/// The account of a live bearer token.
fn bearer_token(st: &Store, call: &Call<'_>) -> Result<(String, String, String, bool), ApiError> {
    let rec = call
        .bearer()
        .and_then(|t| st.token(t))
        .ok_or_else(ApiError::invalid_token)?;
    let fresh = st.now() < rec.issued + st.fresh_auth_window;
    Ok((
        rec.uid.clone(),
        rec.provider.clone(),
        rec.provider_uid.clone(),
        fresh,
    ))
}

fn guest(shared: &Shared) -> ApiResult {
    let mut st = shared.lock();
    let uid = st.new_account();
    st.ensure_identity("anonymous", &uid.clone(), Some(uid.clone()), Map::new());
    ok(st.sign_in("anonymous", &uid))
}

fn credentials(shared: &Shared, call: &Call<'_>, provider: &str) -> ApiResult {
    let body = call.object()?;
    let id = field(&body, "id")?;
    let password = field(&body, "password")?;
    let mut st = shared.lock();
    if let Some(challenge) = body.get("challenge").and_then(Value::as_str) {
        // A one-time password: signs the identity in, creating a phone
        // identity on first use.
        if !st.check_code(challenge, provider, id, password, Purpose::SignIn) {
            return Err(ApiError::invalid_credentials());
        }
        if provider == "phone" {
            st.ensure_identity("phone", id, None, Map::new());
        }
    } else {
        if provider != "password" {
            return Err(ApiError::missing("challenge"));
        }
        let key = ("password".to_owned(), id.to_owned());
        let identity = st
            .identities
            .get(&key)
            .ok_or_else(ApiError::invalid_credentials)?;
        if !identity
            .password
            .as_ref()
            .is_some_and(|h| h.verify(password))
        {
            return Err(ApiError::invalid_credentials());
        }
        if st.verification_required && !identity.verified {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "UNVERIFIED_IDENTITY",
                "This identity is not verified yet.",
            ));
        }
    }
    if !st
        .identities
        .contains_key(&(provider.to_owned(), id.to_owned()))
    {
        return Err(ApiError::invalid_credentials());
    }
    ok(st.sign_in(provider, id))
}

fn send_otp(shared: &Shared, call: &Call<'_>, provider: &str) -> ApiResult {
    let Value::String(id) = call.json()? else {
        return Err(ApiError::missing("the identity as a JSON string"));
    };
    if !valid_id(provider, &id) {
        return Err(ApiError::missing("id"));
    }
    let mut st = shared.lock();
    let challenge = st.send_code(provider, &id, Purpose::SignIn, WebcomMessageKind::Otp);
    ok(json!({"challenge": challenge}))
}

fn custom(shared: &Shared, call: &Call<'_>, segment: &str) -> ApiResult {
    let form = call.form()?;
    let token = form_field(&form, "token")?;
    let mut st = shared.lock();
    let Some((provider, uid, profile)) = st.custom_tokens.remove(token) else {
        return Err(ApiError::invalid_credentials());
    };
    if segment != format!("custom.{provider}") {
        return Err(ApiError::invalid_credentials());
    }
    let profile = profile.as_object().cloned().unwrap_or_default();
    st.ensure_identity(segment, &uid, None, profile);
    ok(st.sign_in(segment, &uid))
}

fn wassup(shared: &Shared, call: &Call<'_>) -> ApiResult {
    let form = call.form()?;
    let mcc = form_field(&form, "mcc")?;
    if mcc != "wisp" && !(mcc.len() == 3 && mcc.bytes().all(|b| b.is_ascii_digit())) {
        return Err(ApiError::missing("mcc"));
    }
    let mut st = shared.lock();
    let msisdn = shared.wassup_msisdn.clone();
    st.ensure_identity("wassup", &msisdn, None, Map::new());
    ok(st.sign_in("wassup", &msisdn))
}

/// `POST /server/signin`: verifies the RS512 assertion with the public key
/// of the server key it names.
fn server_key(shared: &Shared, call: &Call<'_>) -> ApiResult {
    #[derive(serde::Deserialize)]
    struct Claims {
        id: String,
        timestamp: u64,
    }
    let form = call.form()?;
    let token = form_field(&form, "token")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS512);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let verified = shared.server_keys.iter().find_map(|(name, key)| {
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .ok()
            .filter(|data| data.claims.id == *name)
            .map(|data| data.claims)
    });
    let claims = verified.ok_or_else(ApiError::invalid_credentials)?;
    let mut st = shared.lock();
    let now_ms = u128::from(super::store::unix_secs(st.now())) * 1000;
    let skew = ASSERTION_SKEW.as_millis();
    if u128::from(claims.timestamp).abs_diff(now_ms) > skew {
        return Err(ApiError::invalid_credentials());
    }
    st.ensure_identity("server", &claims.id, None, Map::new());
    ok(st.sign_in("server", &claims.id))
}

/// The redirect-mode sign-in page (§2.5 step 2): a consent form.
fn oauth_page(call: &Call<'_>, provider: &str) -> Response {
    let (Some("redirect"), Some(to), Some(from)) =
        (call.query("mode"), call.query("to"), call.query("from"))
    else {
        return ApiError::missing("mode=redirect, to and from").into_response();
    };
    let web = url::Url::parse(to).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !web || from.len() != 44 || !from.ends_with('=') {
        return ApiError::missing("to or from").into_response();
    }
    let provider = esc(provider);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in with {provider} (Webcom dev simulator)</title></head>\
<body><h1>Sign in with {provider} (Webcom dev simulator)</h1>\
<form method=\"post\"><input type=\"hidden\" name=\"to\" value=\"{to}\"><input type=\"hidden\" name=\"from\" value=\"{from}\">\
<label>Name <input name=\"name\" value=\"Dev User\"></label> <label>E-mail <input name=\"email\" value=\"dev@example.com\"></label>\
<button name=\"decision\" value=\"allow\">Continue</button> <button name=\"decision\" value=\"deny\">Deny</button></form></body></html>",
        to = esc(to),
        from = esc(from),
    );
    Html(page).into_response()
}

/// The consent form's answer: back to `to` with `__wcsession` (allow) or
/// without it (deny: the SDK reads that as `USER_DENIED`).
fn oauth_submit(shared: &Shared, call: &Call<'_>, provider: &str) -> ApiResult {
    let form = call.form()?;
    let to = form_field(&form, "to")?;
    let from = form_field(&form, "from")?;
    let mut target = url::Url::parse(to)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ApiError::missing("to"))?;
    if form_field(&form, "decision").ok() == Some("allow") {
        let email = form_field(&form, "email")?.to_ascii_lowercase();
        if !valid_email(&email) {
            return Err(ApiError::missing("email"));
        }
        let name = form_field(&form, "name").unwrap_or("Dev User").to_owned();
        let key = random_token();
        let mut st = shared.lock();
        let expires = st.now() + super::store::CODE_TTL;
        st.sessions.insert(
            key.clone(),
            Handover {
                provider: provider.to_owned(),
                binding: from.to_owned(),
                email,
                name,
                expires,
            },
        );
        target.query_pairs_mut().append_pair("__wcsession", &key);
    }
    Ok(redirect(target.as_str()))
}

fn redirect(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Signs in the OAuth user of a hand-over (an identity per provider and
/// e-mail).
fn sign_in_handover(shared: &Shared, st: &mut Store, handover: &Handover) -> Value {
    let mut profile = Map::new();
    profile.insert("displayName".into(), Value::String(handover.name.clone()));
    profile.insert("email".into(), Value::String(handover.email.clone()));
    profile.insert(
        "picture".into(),
        Value::String(format!("{}/_dev/avatar.svg", shared.url)),
    );
    st.ensure_identity(&handover.provider, &handover.email, None, profile);
    st.sign_in(&handover.provider, &handover.email)
}

/// `POST /session` (§2.5 step 4): the key is single-use, and its request
/// key must hash to the `from` it was issued for.
fn resume_session(shared: &Shared, call: &Call<'_>) -> ApiResult {
    let body = call.object()?;
    let session_key = field(&body, "sessionKey")?;
    let request_key = field(&body, "requestKey")?;
    let mut st = shared.lock();
    let handover = st
        .sessions
        .remove(session_key)
        .ok_or_else(|| ApiError::invalid_state("Unknown or used session key."))?;
    if st.now() >= handover.expires {
        return Err(ApiError::invalid_state("The session key has expired."));
    }
    if padded_hash(request_key) != handover.binding {
        return Err(ApiError::invalid_state(
            "The request key does not match this sign-in.",
        ));
    }
    ok(sign_in_handover(shared, &mut st, &handover))
}

/// `GET /{provider}/callback?mode=code&code&state` (code mode).
fn code_callback(shared: &Shared, call: &Call<'_>, provider: &str) -> ApiResult {
    let (Some("code"), Some(code), Some(state)) =
        (call.query("mode"), call.query("code"), call.query("state"))
    else {
        return Err(ApiError::missing("mode=code, code and state"));
    };
    let mut st = shared.lock();
    let handover = st
        .codes
        .remove(code)
        .ok_or_else(|| ApiError::invalid_state("Unknown or used code."))?;
    if st.now() >= handover.expires || handover.provider != provider || handover.binding != state {
        return Err(ApiError::invalid_state("The code does not match."));
    }
    ok(sign_in_handover(shared, &mut st, &handover))
}

/// Issues a code-mode authorization code (the simulated provider).
pub(super) fn issue_code(
    shared: &Shared,
    provider: &str,
    state: &str,
    email: &str,
    name: &str,
) -> String {
    let code = random_token();
    let mut st = shared.lock();
    let expires = st.now() + super::store::CODE_TTL;
    st.codes.insert(
        code.clone(),
        Handover {
            provider: provider.to_owned(),
            binding: state.to_owned(),
            email: email.to_ascii_lowercase(),
            name: name.to_owned(),
            expires,
        },
    );
    code
}

fn add_identity(shared: &Shared, call: &Call<'_>, provider: &str) -> ApiResult {
    let body = call.object()?;
    let id = field(&body, "id")?;
    if !valid_id(provider, id) {
        return Err(ApiError::missing("id"));
    }
    let mut st = shared.lock();
    // With a bearer (the SDK's "current context"), the identity joins its
    // account.
    let uid = match call.bearer() {
        Some(_) => Some(bearer_token(&st, call)?.0),
        None => None,
    };
    let key = (provider.to_owned(), id.to_owned());
    if st.identities.contains_key(&key) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "EXISTING_IDENTITY",
            "This identity already exists.",
        ));
    }
    let password = match provider {
        "password" => {
            let password = field(&body, "password").map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "MISSING_EMAIL_OR_PASSWORD",
                    "The password is missing.",
                )
            })?;
            if password.chars().count() < MIN_PASSWORD_LEN {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "TOO_WEAK_PASSWORD",
                    "The password is too weak.",
                ));
            }
            Some(PasswordHash::new(password))
        }
        _ => None,
    };
    let mut profile = body
        .get("profile")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(name) = body.get("displayName").and_then(Value::as_str) {
        profile.insert("displayName".into(), Value::String(name.to_owned()));
    }
    let uid = st.ensure_identity(provider, id, uid, profile);
    if let Some(identity) = st.identities.get_mut(&key) {
        identity.password = password;
        identity.verified = false;
    }
    let mut answer = json!({"uid": uid, "provider": provider, "providerUid": id});
    if provider == "phone" {
        let challenge = st.send_code(
            "phone",
            id,
            Purpose::Verify,
            WebcomMessageKind::Verification,
        );
        answer["verificationPending"] = Value::String(challenge);
    } else {
        send_email_token(&mut st, id);
    }
    ok(answer)
}

/// Mails an e-mail verification token.
fn send_email_token(st: &mut Store, email: &str) {
    let token = random_token();
    let expires = st.now() + super::store::CODE_TTL;
    st.email_tokens
        .insert(token.clone(), (email.to_owned(), expires));
    st.send("password", email, WebcomMessageKind::Verification, token);
}

fn verify_identity(shared: &Shared, call: &Call<'_>, provider: &str, id: &str) -> ApiResult {
    let body = call.object()?;
    let mut st = shared.lock();
    let verified = match provider {
        "password" => {
            let token = field(&body, "token")?;
            let now = st.now();
            match st.email_tokens.get(token) {
                Some((email, expires)) if email == id && now < *expires => {
                    st.email_tokens.remove(token);
                    true
                }
                _ => false,
            }
        }
        _ => {
            let challenge = field(&body, "challenge")?;
            let password = field(&body, "password")?;
            st.check_code(challenge, provider, id, password, Purpose::Verify)
        }
    };
    let key = (provider.to_owned(), id.to_owned());
    let identity = st.identities.get_mut(&key).filter(|_| verified);
    let Some(identity) = identity else {
        return Err(ApiError::invalid_credentials());
    };
    identity.verified = true;
    ok(st.sign_in(provider, id))
}

fn send_verification(shared: &Shared, call: &Call<'_>, provider: &str, id: &str) -> ApiResult {
    let _ = call;
    let mut st = shared.lock();
    let key = (provider.to_owned(), id.to_owned());
    match st.identities.get(&key) {
        None => Err(ApiError::invalid_credentials()),
        Some(identity) if identity.verified => Err(ApiError::invalid_state(
            "This identity is already verified.",
        )),
        Some(_) if provider == "phone" => {
            let challenge = st.send_code(
                "phone",
                id,
                Purpose::Verify,
                WebcomMessageKind::Verification,
            );
            ok(json!({"challenge": challenge}))
        }
        Some(_) => {
            send_email_token(&mut st, id);
            ok(json!({}))
        }
    }
}

/// Mails a reset code; answers the same for an unknown address.
fn reset_code(shared: &Shared, id: &str) -> ApiResult {
    let mut st = shared.lock();
    if st
        .identities
        .contains_key(&("password".to_owned(), id.to_owned()))
    {
        let code = random_token()[..12].to_owned();
        let expires = st.now() + super::store::CODE_TTL;
        st.reset_codes
            .insert(id.to_owned(), (code.clone(), expires));
        st.send("password", id, WebcomMessageKind::PasswordReset, code);
    }
    ok(json!({}))
}

/// `PUT /password/identities/{id}/password`: the current password, or a
/// reset code, proves the change.
fn update_password(shared: &Shared, call: &Call<'_>, id: &str) -> ApiResult {
    let form = call.form()?;
    let current = form_field(&form, "password")?;
    let new = form_field(&form, "newPassword")?;
    if new.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "TOO_WEAK_PASSWORD",
            "The password is too weak.",
        ));
    }
    let mut st = shared.lock();
    let now = st.now();
    let by_code = st
        .reset_codes
        .get(id)
        .is_some_and(|(code, expires)| code == current && now < *expires);
    let key = ("password".to_owned(), id.to_owned());
    let by_password = st
        .identities
        .get(&key)
        .and_then(|i| i.password.as_ref())
        .is_some_and(|h| h.verify(current));
    if !(by_code || by_password) {
        return Err(ApiError::invalid_credentials());
    }
    if by_code {
        st.reset_codes.remove(id);
    }
    if let Some(identity) = st.identities.get_mut(&key) {
        identity.password = Some(PasswordHash::new(new));
        // A reset code proves the address.
        identity.verified |= by_code;
    }
    ok(json!({}))
}

fn update_profile(
    shared: &Shared,
    call: &Call<'_>,
    provider: &str,
    provider_uid: &str,
    path: &[&str],
) -> ApiResult {
    let data = call.json()?;
    let mut st = shared.lock();
    let (_, token_provider, token_uid, _) = bearer_token(&st, call)?;
    if token_provider != provider
        || token_uid != provider_uid
        || !matches!(provider, "password" | "phone")
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INVALID_CREDENTIALS",
            "Only the signed-in e-mail or phone identity can be updated.",
        ));
    }
    let key = (provider.to_owned(), provider_uid.to_owned());
    let Some(identity) = st.identities.get_mut(&key) else {
        return Err(ApiError::invalid_token());
    };
    let Some((last, parents)) = path.split_last() else {
        identity.profile = match data {
            Value::Object(map) => map,
            _ => return Err(ApiError::missing("a profile object")),
        };
        return ok(json!({}));
    };
    let mut node = &mut identity.profile;
    for name in parents {
        let child = node
            .entry((*name).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !child.is_object() {
            *child = Value::Object(Map::new());
        }
        let Value::Object(map) = child else {
            return Err(ApiError::missing("path"));
        };
        node = map;
    }
    node.insert((*last).to_owned(), data);
    ok(json!({}))
}

fn remove_identity(
    shared: &Shared,
    call: &Call<'_>,
    provider: &str,
    provider_uid: &str,
) -> ApiResult {
    let mut st = shared.lock();
    let (uid, token_provider, token_uid, fresh) = bearer_token(&st, call)?;
    if token_provider != provider || token_uid != provider_uid {
        return Err(ApiError::invalid_credentials());
    }
    if !fresh {
        return Err(ApiError::too_old());
    }
    st.identities
        .remove(&(provider.to_owned(), provider_uid.to_owned()));
    if !st.identities.values().any(|i| i.uid == uid) {
        st.remove_account(&uid);
    }
    ok(json!({}))
}

fn account(shared: &Shared, call: &Call<'_>, uid: &str) -> ApiResult {
    let st = shared.lock();
    let (token_uid, ..) = bearer_token(&st, call)?;
    if token_uid != uid {
        return Err(ApiError::invalid_credentials());
    }
    let mut providers = Map::new();
    for ((provider, provider_uid), identity) in &st.identities {
        if identity.uid != uid {
            continue;
        }
        let entry = providers
            .entry(provider.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            map.insert(
                provider_uid.clone(),
                json!({"verified": identity.verified, "providerProfile": identity.profile}),
            );
        }
    }
    let created = st
        .accounts
        .get(uid)
        .map_or(0, |t| super::store::unix_secs(*t) * 1000);
    ok(json!({"uid": uid, "createdOn": created, "providers": providers}))
}

fn remove_account(shared: &Shared, call: &Call<'_>, uid: &str) -> ApiResult {
    let mut st = shared.lock();
    let (token_uid, _, _, fresh) = bearer_token(&st, call)?;
    if token_uid != uid {
        return Err(ApiError::invalid_credentials());
    }
    if !fresh {
        return Err(ApiError::too_old());
    }
    st.remove_account(uid);
    ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_versions_and_ids() {
        for (c, ok) in [
            ("n3.12.0", true),
            ("b3.12.0", true),
            ("x3.12.0", false),
            ("n3.12", false),
            ("n3..0", false),
            ("", false),
        ] {
            assert_eq!(valid_client_version(c), ok, "{c}");
        }
        assert!(valid_id("password", "a@b.c"));
        assert!(!valid_id("password", "ab.c"));
        assert!(valid_id("phone", "33612345678"));
        assert!(!valid_id("phone", "+33612345678"));
    }
}
