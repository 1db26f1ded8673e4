//! The REST half: everything under `/_api/`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::store::{
    CodeCheck, CodePurpose, KeyKind, LINK_TTL, MIN_PASSWORD_LEN, NATIVE_PROVIDER,
    PROTECTED_USER_FIELDS, PasswordHash, Store, UserRec, normalize_email, normalize_phone,
};
use super::{MessageKind, Shared};

/// Paths of the auth API start with this.
const PREFIX: &str = "/_api/rest/v1/auth/";
/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

/// An error answer in Altogic's wire format.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn invalid_credentials() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "The credentials are not valid.",
        )
    }

    fn invalid_code() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_code",
            "The code is not valid, has expired or has already been used.",
        )
    }

    fn incorrect_password() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "incorrect_password",
            "The current password is not correct.",
        )
    }

    fn email_not_verified() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "email_not_verified",
            "The email address has not been verified yet.",
        )
    }

    fn phone_not_verified() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "phone_not_verified",
            "The phone number has not been verified yet.",
        )
    }

    fn email_not_unique() -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "email_not_unique",
            "This email address is already used by another account.",
        )
    }

    fn phone_not_unique() -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "phone_not_unique",
            "This phone number is already used by another account.",
        )
    }

    fn invalid_session() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_session_token",
            "The session token is not valid or has been revoked.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{
                "origin": "client_error",
                "code": self.code,
                "message": self.message,
                "details": {},
            }]
        });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// One parsed request.
struct Ctx {
    query: Vec<(String, String)>,
    /// `None`: no header; `Some(None)`: present but unusable.
    session: Option<Option<String>>,
    user_agent: String,
    body: Bytes,
}

impl Ctx {
    /// The first value of a query parameter.
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required_query(&self, name: &str) -> Result<&str, ApiError> {
        match self.query(name) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(ApiError::bad_request(format!(
                "The query parameter `{name}` is required."
            ))),
        }
    }

    fn query_email(&self) -> Result<String, ApiError> {
        let raw = self.required_query("email")?;
        normalize_email(raw).ok_or_else(|| {
            ApiError::bad_request("The query parameter `email` is not a valid email address.")
        })
    }

    fn query_phone(&self) -> Result<String, ApiError> {
        let raw = self.required_query("phone")?;
        normalize_phone(raw).ok_or_else(|| {
            ApiError::bad_request("The query parameter `phone` is not a valid phone number.")
        })
    }

    /// The JSON body as an object; an empty body counts as `{}`.
    fn json(&self) -> Result<Map<String, Value>, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::bad_request(
                "The request body must be a JSON object.",
            )),
            Err(_) => Err(ApiError::bad_request("The request body is not valid JSON.")),
        }
    }
}

fn required_str<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::bad_request(format!(
            "The field `{name}` is required and must be a non-empty string."
        ))),
    }
}

fn required_email(body: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    normalize_email(required_str(body, name)?).ok_or_else(|| {
        ApiError::bad_request(format!("The field `{name}` is not a valid email address."))
    })
}

fn required_phone(body: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    normalize_phone(required_str(body, name)?).ok_or_else(|| {
        ApiError::bad_request(format!("The field `{name}` is not a valid phone number."))
    })
}

fn check_new_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_password",
            format!("The password must be at least {MIN_PASSWORD_LEN} characters long."),
        ));
    }
    Ok(())
}

/// Applies `nameOrUserData` to a new user.
fn apply_user_data(user: &mut UserRec, data: Option<&Value>) -> Result<(), ApiError> {
    match data {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(name)) => {
            user.name = Some(name.clone());
            Ok(())
        }
        Some(Value::Object(fields)) => {
            for (key, value) in fields {
                match key.as_str() {
                    "name" | "profilePicture" => {
                        let v = match value {
                            Value::String(s) => Some(s.clone()),
                            Value::Null => None,
                            _ => {
                                return Err(ApiError::bad_request(format!(
                                    "`nameOrUserData.{key}` must be a string."
                                )));
                            }
                        };
                        if key == "name" {
                            user.name = v;
                        } else {
                            user.profile_picture = v;
                        }
                    }
                    "emailVerified" | "phoneVerified" => {
                        let Value::Bool(b) = value else {
                            return Err(ApiError::bad_request(format!(
                                "`nameOrUserData.{key}` must be a boolean."
                            )));
                        };
                        if key == "emailVerified" {
                            user.email_verified = *b;
                        } else {
                            user.phone_verified = *b;
                        }
                    }
                    k if PROTECTED_USER_FIELDS.contains(&k) => {}
                    _ => {
                        user.extra.insert(key.clone(), value.clone());
                    }
                }
            }
            Ok(())
        }
        Some(_) => Err(ApiError::bad_request(
            "`nameOrUserData` must be a string or an object.",
        )),
    }
}

fn ok_json(value: Value) -> ApiResult {
    Ok((StatusCode::OK, Json(value)).into_response())
}

/// "No data": 200 with an empty body.
fn no_data() -> ApiResult {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::OK;
    Ok(res)
}

fn user_json(st: &Store, id: &str) -> Value {
    st.user(id).map(UserRec::to_json).unwrap_or(Value::Null)
}

fn user_and_session(st: &Store, id: &str, token: Option<&str>) -> Value {
    json!({
        "user": user_json(st, id),
        "session": token.map(|t| st.session_json(t)).unwrap_or(Value::Null),
    })
}

/// A link to one of the `/_auth/...` landings.
fn link(sh: &Shared, path: &str, key: &str) -> String {
    let mut u = sh.base.clone();
    u.set_path(path);
    u.query_pairs_mut().append_pair("key", key);
    u.into()
}

/// The session token and user id of an authenticated request.
fn authed(st: &Store, cx: &Ctx) -> Result<(String, String), ApiError> {
    let token = match &cx.session {
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_session_token",
                "The `Session` header with a session token is required.",
            ));
        }
        Some(None) => return Err(ApiError::invalid_session()),
        Some(Some(t)) => t,
    };
    match st.session(token) {
        Some(s) if st.user(&s.user_id).is_some() => Ok((token.clone(), s.user_id.clone())),
        _ => Err(ApiError::invalid_session()),
    }
}

/// Checks the current password of an authenticated user.
fn check_current_password(st: &Store, user_id: &str, password: &str) -> Result<(), ApiError> {
    let ok = st
        .user(user_id)
        .and_then(|u| u.password.as_ref())
        .is_some_and(|p| p.verify(password));
    if ok {
        Ok(())
    } else {
        Err(ApiError::incorrect_password())
    }
}

fn send_verify_email(sh: &Shared, st: &mut Store, user_id: &str, email: &str) {
    let key = st.issue_key(
        KeyKind::VerifyEmailLink {
            email: email.to_owned(),
        },
        user_id,
        LINK_TTL,
    );
    let link = link(sh, "/_auth/verify-email", &key);
    let body = format!(
        "Welcome! Please confirm your email address by opening this link:\n\n{link}\n\nThe link expires in 1 hour."
    );
    st.send_email(
        MessageKind::VerifyEmail,
        email,
        "Confirm your email address",
        body,
        link,
    );
}

fn send_phone_code(st: &mut Store, purpose: CodePurpose, phone: &str, user_id: &str) {
    let code = st.issue_code(purpose, phone, user_id);
    let (kind, subject) = match purpose {
        CodePurpose::VerifyPhone => (MessageKind::VerifyPhone, "Your verification code"),
        CodePurpose::ChangePhone => (MessageKind::ChangePhone, "Your phone change code"),
        CodePurpose::SignIn => (MessageKind::SignInCode, "Your sign-in code"),
        CodePurpose::ResetPwd => (MessageKind::ResetPasswordCode, "Your password reset code"),
    };
    st.send_sms(kind, phone, subject, code);
}

/// `ANY /_api/...`
pub(super) async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    sh.calls.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    if header_str(&parts.headers, "x-client-key") != Some(sh.client_key.as_str()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client_key",
            "The `X-Client-Key` header is missing or does not match this environment's client key.",
        )
        .into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The request body is too large or could not be read.",
        )
        .into_response();
    };
    // An absent or empty `Session` header is "missing"; one that is not
    // visible ASCII cannot name a session.
    let session = match parts.headers.get("session") {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        ),
    };
    let cx = Ctx {
        query: parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
        session,
        user_agent: header_str(&parts.headers, header::USER_AGENT.as_str())
            .unwrap_or("")
            .to_owned(),
        body,
    };
    let result = run(&sh, parts.uri.path(), &parts.method, &cx);
    result.unwrap_or_else(IntoResponse::into_response)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

type Op = fn(&Shared, &mut Store, &Ctx) -> ApiResult;

fn run(sh: &Shared, path: &str, method: &Method, cx: &Ctx) -> ApiResult {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No endpoint at `{path}`."),
        )
    };
    let op_name = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let (want, op): (Method, Op) = match op_name {
        "signup-email" => (Method::POST, signup_email),
        "signup-phone" => (Method::POST, signup_phone),
        "signin-email" => (Method::POST, signin_email),
        "signin-phone" => (Method::POST, signin_phone),
        "send-code" => (Method::POST, send_code),
        "signin-code" => (Method::POST, signin_code),
        "grant" => (Method::GET, grant),
        "user" => (Method::GET, get_user),
        "sessions" => (Method::GET, get_sessions),
        "signout" => (Method::POST, signout),
        "signout-all" => (Method::POST, signout_all),
        "signout-all-except" => (Method::POST, signout_all_except),
        "change-pwd" => (Method::POST, change_pwd),
        "change-email" => (Method::POST, change_email),
        "change-phone" => (Method::POST, change_phone),
        "verify-phone" => (Method::POST, verify_phone),
        "resend" => (Method::POST, resend),
        "resend-code" => (Method::POST, resend_code),
        "send-magic" => (Method::POST, send_magic),
        "send-reset" => (Method::POST, send_reset),
        "reset-pwd" => (Method::POST, reset_pwd),
        "send-reset-code" => (Method::POST, send_reset_code),
        "reset-pwd-code" => (Method::POST, reset_pwd_code),
        _ => return Err(not_found()),
    };
    if *method != want {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("`{path}` only accepts {want}."),
        ));
    }
    let mut st = sh.lock();
    op(sh, &mut st, cx)
}

fn signup_email(sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let body = cx.json()?;
    let email = required_email(&body, "email")?;
    let password = required_str(&body, "password")?;
    check_new_password(password)?;
    let mut user = UserRec::new(NATIVE_PROVIDER, st.now());
    apply_user_data(&mut user, body.get("nameOrUserData"))?;
    if st.user_id_by_email(&email).is_some() {
        return Err(ApiError::email_not_unique());
    }
    user.email = Some(email.clone());
    user.password = Some(PasswordHash::new(password));
    let pending = st.email_confirmation && !user.email_verified;
    let id = st.insert_user(user);
    if pending {
        send_verify_email(sh, st, &id, &email);
        return ok_json(user_and_session(st, &id, None));
    }
    let token = st.create_session(&id, &cx.user_agent);
    ok_json(user_and_session(st, &id, Some(&token)))
}

fn signup_phone(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let body = cx.json()?;
    let phone = required_phone(&body, "phone")?;
    let password = required_str(&body, "password")?;
    check_new_password(password)?;
    let mut user = UserRec::new(NATIVE_PROVIDER, st.now());
    apply_user_data(&mut user, body.get("nameOrUserData"))?;
    if st.user_id_by_phone(&phone).is_some() {
        return Err(ApiError::phone_not_unique());
    }
    user.phone = Some(phone.clone());
    user.password = Some(PasswordHash::new(password));
    let pending = st.phone_confirmation && !user.phone_verified;
    let id = st.insert_user(user);
    if pending {
        send_phone_code(st, CodePurpose::VerifyPhone, &phone, &id);
        return ok_json(user_and_session(st, &id, None));
    }
    let token = st.create_session(&id, &cx.user_agent);
    ok_json(user_and_session(st, &id, Some(&token)))
}

/// Password sign-in for the user `id` (if any).
fn password_signin(
    st: &mut Store,
    cx: &Ctx,
    id: Option<String>,
    password: &str,
    email: bool,
) -> ApiResult {
    let id = id.ok_or_else(ApiError::invalid_credentials)?;
    let user = st.user(&id).ok_or_else(ApiError::invalid_credentials)?;
    let ok = user.is_native() && user.password.as_ref().is_some_and(|p| p.verify(password));
    if !ok {
        return Err(ApiError::invalid_credentials());
    }
    if email && st.email_confirmation && !user.email_verified {
        return Err(ApiError::email_not_verified());
    }
    if !email && st.phone_confirmation && !user.phone_verified {
        return Err(ApiError::phone_not_verified());
    }
    let token = st.create_session(&id, &cx.user_agent);
    ok_json(user_and_session(st, &id, Some(&token)))
}

fn signin_email(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let body = cx.json()?;
    let email = required_email(&body, "email")?;
    let password = required_str(&body, "password")?;
    let id = st.user_id_by_email(&email);
    password_signin(st, cx, id, password, true)
}

fn signin_phone(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let body = cx.json()?;
    let phone = required_phone(&body, "phone")?;
    let password = required_str(&body, "password")?;
    let id = st.user_id_by_phone(&phone);
    password_signin(st, cx, id, password, false)
}

/// The id of the native user with this phone, if any.
fn native_by_phone(st: &Store, phone: &str) -> Option<String> {
    st.user_id_by_phone(phone)
        .filter(|id| st.user(id).is_some_and(UserRec::is_native))
}

/// The id of the native user with this e-mail, if any.
fn native_by_email(st: &Store, email: &str) -> Option<String> {
    st.user_id_by_email(email)
        .filter(|id| st.user(id).is_some_and(UserRec::is_native))
}

fn send_code(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let phone = cx.query_phone()?;
    let Some(id) = native_by_phone(st, &phone) else {
        return no_data();
    };
    if st.phone_confirmation && st.user(&id).is_some_and(|u| !u.phone_verified) {
        return Err(ApiError::phone_not_verified());
    }
    send_phone_code(st, CodePurpose::SignIn, &phone, &id);
    no_data()
}

fn signin_code(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let phone = cx.query_phone()?;
    let code = cx.required_query("code")?;
    let CodeCheck::Match(id) = st.check_code(CodePurpose::SignIn, &phone, code) else {
        return Err(ApiError::invalid_code());
    };
    let Some(user) = st.user(&id) else {
        return Err(ApiError::invalid_code());
    };
    if user.phone.as_deref() != Some(phone.as_str()) {
        return Err(ApiError::invalid_code());
    }
    if st.phone_confirmation && !user.phone_verified {
        return Err(ApiError::phone_not_verified());
    }
    let token = st.create_session(&id, &cx.user_agent);
    ok_json(user_and_session(st, &id, Some(&token)))
}

fn grant(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let key = cx.required_query("key")?;
    let rec = st.consume_key(key, |k| *k == KeyKind::Grant).map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_access_token",
            e.message("access token"),
        )
    })?;
    let token = st.create_session(&rec.user_id, &cx.user_agent);
    ok_json(user_and_session(st, &rec.user_id, Some(&token)))
}

fn get_user(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (_, id) = authed(st, cx)?;
    ok_json(user_json(st, &id))
}

fn get_sessions(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (_, id) = authed(st, cx)?;
    ok_json(st.sessions_json(&id))
}

fn signout(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (current, id) = authed(st, cx)?;
    let body = cx.json()?;
    let target = match body.get("token") {
        None | Some(Value::Null) => current,
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(ApiError::bad_request("The field `token` must be a string.")),
    };
    if st.session(&target).is_none_or(|s| s.user_id != id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "No such session for this user.",
        ));
    }
    st.revoke_session(&target);
    no_data()
}

fn signout_all(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (_, id) = authed(st, cx)?;
    st.revoke_user_sessions(&id, None);
    no_data()
}

fn signout_all_except(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (current, id) = authed(st, cx)?;
    st.revoke_user_sessions(&id, Some(&current));
    no_data()
}

fn change_pwd(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (_, id) = authed(st, cx)?;
    let body = cx.json()?;
    let new = required_str(&body, "newPassword")?;
    let old = required_str(&body, "oldPassword")?;
    check_current_password(st, &id, old)?;
    check_new_password(new)?;
    if let Some(u) = st.user_mut(&id) {
        u.password = Some(PasswordHash::new(new));
    }
    no_data()
}

fn change_email(sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (_, id) = authed(st, cx)?;
    let body = cx.json()?;
    let password = required_str(&body, "currentPassword")?;
    let new_email = required_email(&body, "newEmail")?;
    check_current_password(st, &id, password)?;
    match st.user_id_by_email(&new_email) {
        Some(owner) if owner == id => {
            return Err(ApiError::bad_request(
                "The new email is the same as the current one.",
            ));
        }
        Some(_) => return Err(ApiError::email_not_unique()),
        None => {}
    }
    if st.email_confirmation {
        let key = st.issue_key(
            KeyKind::ChangeEmailLink {
                new_email: new_email.clone(),
            },
            &id,
            LINK_TTL,
        );
        let link = link(sh, "/_auth/change-email", &key);
        let body = format!(
            "Please confirm your new email address by opening this link:\n\n{link}\n\nYour email will not change until you do. The link expires in 1 hour."
        );
        st.send_email(
            MessageKind::ChangeEmail,
            &new_email,
            "Confirm your new email address",
            body,
            link,
        );
    } else if let Some(u) = st.user_mut(&id) {
        u.email = Some(new_email);
        u.email_verified = false;
    }
    ok_json(user_json(st, &id))
}

fn change_phone(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let (_, id) = authed(st, cx)?;
    let body = cx.json()?;
    let password = required_str(&body, "currentPassword")?;
    let new_phone = required_phone(&body, "newPhone")?;
    check_current_password(st, &id, password)?;
    match st.user_id_by_phone(&new_phone) {
        Some(owner) if owner == id => {
            return Err(ApiError::bad_request(
                "The new phone number is the same as the current one.",
            ));
        }
        Some(_) => return Err(ApiError::phone_not_unique()),
        None => {}
    }
    if st.phone_confirmation {
        send_phone_code(st, CodePurpose::ChangePhone, &new_phone, &id);
    } else if let Some(u) = st.user_mut(&id) {
        u.phone = Some(new_phone);
        u.phone_verified = false;
    }
    ok_json(user_json(st, &id))
}

fn verify_phone(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let phone = cx.query_phone()?;
    let code = cx.required_query("code")?;
    if let CodeCheck::Match(id) = st.check_code(CodePurpose::VerifyPhone, &phone, code) {
        let Some(user) = st.user_mut(&id) else {
            return Err(ApiError::invalid_code());
        };
        if user.phone.as_deref() != Some(phone.as_str()) {
            return Err(ApiError::invalid_code());
        }
        user.phone_verified = true;
        let token = st.create_session(&id, &cx.user_agent);
        return ok_json(user_and_session(st, &id, Some(&token)));
    }
    if let CodeCheck::Match(id) = st.check_code(CodePurpose::ChangePhone, &phone, code) {
        if st.user_id_by_phone(&phone).is_some_and(|owner| owner != id) {
            return Err(ApiError::phone_not_unique());
        }
        let Some(user) = st.user_mut(&id) else {
            return Err(ApiError::invalid_code());
        };
        user.phone = Some(phone);
        user.phone_verified = true;
        return ok_json(json!({ "user": user_json(st, &id) }));
    }
    Err(ApiError::invalid_code())
}

fn resend(sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let email = cx.query_email()?;
    if !st.email_confirmation {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "email_confirmation_disabled",
            "Email confirmation is disabled.",
        ));
    }
    let Some(id) = native_by_email(st, &email) else {
        return no_data();
    };
    if st.user(&id).is_some_and(|u| u.email_verified) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "email_already_verified",
            "The email address has already been verified.",
        ));
    }
    send_verify_email(sh, st, &id, &email);
    no_data()
}

fn resend_code(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let phone = cx.query_phone()?;
    if !st.phone_confirmation {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "phone_confirmation_disabled",
            "Phone number confirmation is disabled.",
        ));
    }
    let Some(id) = native_by_phone(st, &phone) else {
        return no_data();
    };
    if st.user(&id).is_some_and(|u| u.phone_verified) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "phone_already_verified",
            "The phone number has already been verified.",
        ));
    }
    send_phone_code(st, CodePurpose::VerifyPhone, &phone, &id);
    no_data()
}

fn send_magic(sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let email = cx.query_email()?;
    let Some(id) = st.user_id_by_email(&email) else {
        return no_data();
    };
    if st.email_confirmation && st.user(&id).is_some_and(|u| !u.email_verified) {
        return Err(ApiError::email_not_verified());
    }
    let key = st.issue_key(KeyKind::MagicLink, &id, LINK_TTL);
    let link = link(sh, "/_auth/magic", &key);
    let body = format!(
        "Open this link to sign in:\n\n{link}\n\nIt can be used once and expires in 1 hour. If you did not ask for it, ignore this email."
    );
    st.send_email(
        MessageKind::MagicLink,
        &email,
        "Your sign-in link",
        body,
        link,
    );
    no_data()
}

fn send_reset(sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let email = cx.query_email()?;
    let Some(id) = native_by_email(st, &email) else {
        return no_data();
    };
    if st.email_confirmation && st.user(&id).is_some_and(|u| !u.email_verified) {
        return Err(ApiError::email_not_verified());
    }
    let key = st.issue_key(KeyKind::ResetLink, &id, LINK_TTL);
    let link = link(sh, "/_auth/reset", &key);
    let body = format!(
        "Open this link to choose a new password:\n\n{link}\n\nIt can be used once and expires in 1 hour. If you did not ask for it, ignore this email."
    );
    st.send_email(
        MessageKind::ResetPassword,
        &email,
        "Reset your password",
        body,
        link,
    );
    no_data()
}

/// Sets a new password and signs the user out everywhere.
fn set_password_and_revoke(st: &mut Store, id: &str, password: &str) {
    if let Some(u) = st.user_mut(id) {
        u.password = Some(PasswordHash::new(password));
    }
    st.revoke_user_sessions(id, None);
}

fn reset_pwd(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let key = cx.required_query("key")?;
    let body = cx.json()?;
    let password = required_str(&body, "newPassword")?;
    check_new_password(password)?;
    let rec = st
        .consume_key(key, |k| *k == KeyKind::ResetToken)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_access_token",
                e.message("password reset token"),
            )
        })?;
    set_password_and_revoke(st, &rec.user_id, password);
    no_data()
}

fn send_reset_code(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let phone = cx.query_phone()?;
    let Some(id) = native_by_phone(st, &phone) else {
        return no_data();
    };
    if st.phone_confirmation && st.user(&id).is_some_and(|u| !u.phone_verified) {
        return Err(ApiError::phone_not_verified());
    }
    send_phone_code(st, CodePurpose::ResetPwd, &phone, &id);
    no_data()
}

fn reset_pwd_code(_sh: &Shared, st: &mut Store, cx: &Ctx) -> ApiResult {
    let phone = cx.query_phone()?;
    let code = cx.required_query("code")?;
    let body = cx.json()?;
    let password = required_str(&body, "newPassword")?;
    check_new_password(password)?;
    let CodeCheck::Match(id) = st.check_code(CodePurpose::ResetPwd, &phone, code) else {
        return Err(ApiError::invalid_code());
    };
    set_password_and_revoke(st, &id, password);
    no_data()
}
