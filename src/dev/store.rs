//! In-memory state of the dev upstream: users, sessions, one-time keys and
//! codes, and the outbox.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rand::{Rng as _, RngCore as _};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::{Channel, MessageKind, OutboxMessage};

/// Lifetime of an access token handed to the app (`grant?key=`).
pub(super) const GRANT_TTL: Duration = Duration::from_secs(5 * 60);
/// Lifetime of a reset-password access token (`reset-pwd?key=`).
pub(super) const RESET_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of an e-mailed link.
pub(super) const LINK_TTL: Duration = Duration::from_secs(60 * 60);
/// Lifetime of an SMS code.
const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Wrong guesses allowed before an SMS code dies.
const CODE_ATTEMPTS: u8 = 5;
/// Minimum password length, in characters.
pub(super) const MIN_PASSWORD_LEN: usize = 6;

/// A salted SHA-256 of a password.
pub(super) struct PasswordHash {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl PasswordHash {
    pub(super) fn new(password: &str) -> Self {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let hash = digest(&salt, password);
        PasswordHash { salt, hash }
    }

    pub(super) fn verify(&self, password: &str) -> bool {
        digest(&self.salt, password) == self.hash
    }
}

fn digest(salt: &[u8], password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().into()
}

/// A stored user.
pub(super) struct UserRec {
    pub(super) id: String,
    pub(super) provider: String,
    pub(super) provider_user_id: String,
    pub(super) email: Option<String>,
    pub(super) phone: Option<String>,
    pub(super) name: Option<String>,
    pub(super) profile_picture: Option<String>,
    pub(super) email_verified: bool,
    pub(super) phone_verified: bool,
    pub(super) sign_up_at: SystemTime,
    pub(super) last_login_at: SystemTime,
    pub(super) password: Option<PasswordHash>,
    /// Custom fields from `nameOrUserData`.
    pub(super) extra: Map<String, Value>,
}

impl UserRec {
    /// A new user with the given provider; `provider_user_id` defaults to the id.
    pub(super) fn new(provider: &str, now: SystemTime) -> Self {
        let id = object_id();
        UserRec {
            provider_user_id: id.clone(),
            id,
            provider: provider.to_owned(),
            email: None,
            phone: None,
            name: None,
            profile_picture: None,
            email_verified: false,
            phone_verified: false,
            sign_up_at: now,
            last_login_at: now,
            password: None,
            extra: Map::new(),
        }
    }

    /// Whether this is a native (e-mail/phone + password) account.
    pub(super) fn is_native(&self) -> bool {
        self.provider == NATIVE_PROVIDER
    }

    /// The User JSON (never includes the password).
    pub(super) fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        m.insert("_id".into(), json!(self.id));
        m.insert("provider".into(), json!(self.provider));
        m.insert("providerUserId".into(), json!(self.provider_user_id));
        let optional = [
            ("email", &self.email),
            ("phone", &self.phone),
            ("name", &self.name),
            ("profilePicture", &self.profile_picture),
        ];
        for (key, value) in optional {
            match value {
                Some(v) => m.insert(key.into(), json!(v)),
                None => m.remove(key),
            };
        }
        m.insert("emailVerified".into(), json!(self.email_verified));
        m.insert("phoneVerified".into(), json!(self.phone_verified));
        m.insert("signUpAt".into(), json!(format_time(self.sign_up_at)));
        m.insert("lastLoginAt".into(), json!(format_time(self.last_login_at)));
        Value::Object(m)
    }
}

/// The `provider` of native accounts.
pub(super) const NATIVE_PROVIDER: &str = "Altogic";

/// Keys of the User object that `nameOrUserData` may not set.
pub(super) const PROTECTED_USER_FIELDS: &[&str] = &[
    "_id",
    "provider",
    "providerUserId",
    "password",
    "email",
    "phone",
    "signUpAt",
    "lastLoginAt",
];

/// A stored session.
pub(super) struct SessionRec {
    pub(super) user_id: String,
    created: SystemTime,
    user_agent: Value,
    seq: u64,
}

/// What a one-time key is good for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// `grant?key=` → a new session.
    Grant,
    /// `reset-pwd?key=`.
    ResetToken,
    /// `/_auth/verify-email?key=` for this address.
    VerifyEmailLink { email: String },
    /// `/_auth/magic?key=`.
    MagicLink,
    /// `/_auth/reset?key=`.
    ResetLink,
    /// `/_auth/change-email?key=` to this new address.
    ChangeEmailLink { new_email: String },
}

/// A stored one-time key.
pub(super) struct KeyRec {
    pub(super) kind: KeyKind,
    pub(super) user_id: String,
    expires: Instant,
}

/// Why a key could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyError {
    /// Never issued, of another kind, or already used.
    Unknown,
    /// Issued but past its lifetime.
    Expired,
}

impl KeyError {
    pub(super) fn message(self, what: &str) -> String {
        match self {
            KeyError::Unknown => format!("The {what} is invalid or has already been used."),
            KeyError::Expired => format!("The {what} has expired."),
        }
    }
}

/// What an SMS code is for (codes are keyed by purpose and phone number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum CodePurpose {
    VerifyPhone,
    ChangePhone,
    SignIn,
    ResetPwd,
}

struct CodeRec {
    code: String,
    user_id: String,
    expires: Instant,
    attempts_left: u8,
}

/// Result of checking an SMS code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CodeCheck {
    /// Right code; it is now consumed. Carries the user id.
    Match(String),
    /// No live code for this purpose and phone, or a wrong one.
    NoMatch,
}

/// Everything the server knows.
#[derive(Default)]
pub(super) struct Store {
    pub(super) users: HashMap<String, UserRec>,
    sessions: HashMap<String, SessionRec>,
    keys: HashMap<String, KeyRec>,
    codes: HashMap<(CodePurpose, String), CodeRec>,
    pub(super) outbox: Vec<OutboxMessage>,
    pub(super) redirect_url: Option<String>,
    pub(super) email_confirmation: bool,
    pub(super) phone_confirmation: bool,
    /// Added to every clock reading (see `DevUpstream::advance_clock`).
    pub(super) skew: Duration,
    next_seq: u64,
}

impl Store {
    fn now_instant(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.skew).unwrap_or(now)
    }

    /// Wall-clock time, including the skew.
    pub(super) fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        now.checked_add(self.skew).unwrap_or(now)
    }

    pub(super) fn user(&self, id: &str) -> Option<&UserRec> {
        self.users.get(id)
    }

    pub(super) fn user_mut(&mut self, id: &str) -> Option<&mut UserRec> {
        self.users.get_mut(id)
    }

    /// The id of the user with this (normalised) e-mail, any provider.
    pub(super) fn user_id_by_email(&self, email: &str) -> Option<String> {
        self.users
            .values()
            .find(|u| u.email.as_deref() == Some(email))
            .map(|u| u.id.clone())
    }

    /// The id of the user with this (normalised) phone, any provider.
    pub(super) fn user_id_by_phone(&self, phone: &str) -> Option<String> {
        self.users
            .values()
            .find(|u| u.phone.as_deref() == Some(phone))
            .map(|u| u.id.clone())
    }

    /// The id of the user of `provider` with this e-mail.
    pub(super) fn user_id_by_provider_email(&self, provider: &str, email: &str) -> Option<String> {
        self.users
            .values()
            .find(|u| u.provider == provider && u.email.as_deref() == Some(email))
            .map(|u| u.id.clone())
    }

    /// Adds a user and returns its id.
    pub(super) fn insert_user(&mut self, user: UserRec) -> String {
        let id = user.id.clone();
        self.users.insert(id.clone(), user);
        id
    }

    /// Creates a session for `user_id`, bumps `lastLoginAt`, returns the token.
    pub(super) fn create_session(&mut self, user_id: &str, user_agent: &str) -> String {
        let token = random_token();
        let now = self.now();
        self.next_seq += 1;
        let rec = SessionRec {
            user_id: user_id.to_owned(),
            created: now,
            user_agent: parse_user_agent(user_agent),
            seq: self.next_seq,
        };
        self.sessions.insert(token.clone(), rec);
        if let Some(u) = self.users.get_mut(user_id) {
            u.last_login_at = now;
        }
        token
    }

    /// The session for `token`, if live.
    pub(super) fn session(&self, token: &str) -> Option<&SessionRec> {
        self.sessions.get(token)
    }

    /// The Session JSON for `token`.
    pub(super) fn session_json(&self, token: &str) -> Value {
        match self.sessions.get(token) {
            Some(s) => json!({
                "userId": s.user_id,
                "token": token,
                "creationDtm": format_time(s.created),
                "accessGroupKeys": [],
                "userAgent": s.user_agent,
            }),
            None => Value::Null,
        }
    }

    /// All sessions of a user, oldest first, as JSON.
    pub(super) fn sessions_json(&self, user_id: &str) -> Value {
        let mut mine: Vec<(&String, &SessionRec)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.user_id == user_id)
            .collect();
        mine.sort_by_key(|(_, s)| s.seq);
        Value::Array(
            mine.into_iter()
                .map(|(t, _)| self.session_json(t))
                .collect(),
        )
    }

    pub(super) fn revoke_session(&mut self, token: &str) {
        self.sessions.remove(token);
    }

    /// Revokes every session of `user_id` except `keep`.
    pub(super) fn revoke_user_sessions(&mut self, user_id: &str, keep: Option<&str>) {
        self.sessions
            .retain(|t, s| s.user_id != user_id || Some(t.as_str()) == keep);
    }

    /// Issues a one-time key.
    pub(super) fn issue_key(&mut self, kind: KeyKind, user_id: &str, ttl: Duration) -> String {
        let key = random_token();
        let expires = self.now_instant() + ttl;
        self.keys.insert(
            key.clone(),
            KeyRec {
                kind,
                user_id: user_id.to_owned(),
                expires,
            },
        );
        key
    }

    /// Consumes a one-time key whose kind satisfies `accept`. A key of another
    /// kind is left alone and reported as unknown.
    pub(super) fn consume_key(
        &mut self,
        key: &str,
        accept: impl Fn(&KeyKind) -> bool,
    ) -> Result<KeyRec, KeyError> {
        let now = self.now_instant();
        match self.keys.get(key) {
            Some(rec) if accept(&rec.kind) => {}
            _ => return Err(KeyError::Unknown),
        }
        let rec = self.keys.remove(key).ok_or(KeyError::Unknown)?;
        if rec.expires <= now {
            return Err(KeyError::Expired);
        }
        if !self.users.contains_key(&rec.user_id) {
            return Err(KeyError::Unknown);
        }
        Ok(rec)
    }

    /// Issues (or replaces) the SMS code for `purpose` and `phone`.
    pub(super) fn issue_code(
        &mut self,
        purpose: CodePurpose,
        phone: &str,
        user_id: &str,
    ) -> String {
        let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32));
        let expires = self.now_instant() + CODE_TTL;
        self.codes.insert(
            (purpose, phone.to_owned()),
            CodeRec {
                code: code.clone(),
                user_id: user_id.to_owned(),
                expires,
                attempts_left: CODE_ATTEMPTS,
            },
        );
        code
    }

    /// Checks (and on success consumes) an SMS code.
    pub(super) fn check_code(
        &mut self,
        purpose: CodePurpose,
        phone: &str,
        code: &str,
    ) -> CodeCheck {
        let now = self.now_instant();
        let key = (purpose, phone.to_owned());
        let Some(rec) = self.codes.get_mut(&key) else {
            return CodeCheck::NoMatch;
        };
        if rec.expires <= now {
            self.codes.remove(&key);
            return CodeCheck::NoMatch;
        }
        if rec.code != code.trim() {
            rec.attempts_left = rec.attempts_left.saturating_sub(1);
            if rec.attempts_left == 0 {
                self.codes.remove(&key);
            }
            return CodeCheck::NoMatch;
        }
        match self.codes.remove(&key) {
            Some(rec) if self.users.contains_key(&rec.user_id) => CodeCheck::Match(rec.user_id),
            _ => CodeCheck::NoMatch,
        }
    }

    /// Records an e-mail in the outbox.
    pub(super) fn send_email(
        &mut self,
        kind: MessageKind,
        to: &str,
        subject: &str,
        body: String,
        link: String,
    ) {
        tracing::info!(to, subject, link = %link, "dev upstream: e-mail sent to the outbox");
        let msg = OutboxMessage {
            channel: Channel::Email,
            kind,
            to: to.to_owned(),
            subject: subject.to_owned(),
            body,
            link: Some(link),
            code: None,
            sent_at: self.now(),
        };
        self.outbox.push(msg);
    }

    /// Records an SMS in the outbox.
    pub(super) fn send_sms(&mut self, kind: MessageKind, to: &str, subject: &str, code: String) {
        tracing::info!(to, subject, code = %code, "dev upstream: SMS sent to the outbox");
        let msg = OutboxMessage {
            channel: Channel::Sms,
            kind,
            to: to.to_owned(),
            subject: subject.to_owned(),
            body: format!("{subject}: {code}. It expires in 10 minutes."),
            link: None,
            code: Some(code),
            sent_at: self.now(),
        };
        self.outbox.push(msg);
    }
}

/// 32 random bytes, base64url without padding.
pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A 24-hex-digit id, like a MongoDB ObjectId.
fn object_id() -> String {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random numeric id, like the ones OAuth providers hand out.
pub(super) fn numeric_id() -> String {
    let mut rng = rand::thread_rng();
    let first = rng.gen_range(1..=9u8);
    let rest: String = (0..20)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    format!("{first}{rest}")
}

/// RFC 3339 in UTC with milliseconds, e.g. `2022-12-14T18:00:00.000Z`.
pub(super) fn format_time(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

/// Normalises an e-mail address: trimmed, lower-case. `None` unless it looks
/// like `local@domain` without whitespace.
pub(super) fn normalize_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(e)
}

/// Normalises a phone number: separators (space, `-`, `.`, `(`, `)`) removed,
/// then it must be `+?[0-9]{4,15}`.
pub(super) fn normalize_phone(raw: &str) -> Option<String> {
    let p: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\t'))
        .collect();
    let digits = p.strip_prefix('+').unwrap_or(&p);
    let ok = (4..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit());
    ok.then_some(p)
}

/// Normalises an address for outbox look-ups: an e-mail if it has an `@`,
/// otherwise a phone number; falls back to the trimmed input.
pub(super) fn normalize_address(raw: &str) -> String {
    let normalized = if raw.contains('@') {
        normalize_email(raw)
    } else {
        normalize_phone(raw)
    };
    normalized.unwrap_or_else(|| raw.trim().to_owned())
}

/// A rough `userAgent` object in the shape of ua-parser's output.
pub(super) fn parse_user_agent(ua: &str) -> Value {
    let (family, version) = browser(ua);
    let [major, minor, patch] = split_version(version, '.');
    let (os_family, os_version, sep) = os(ua);
    let [os_major, os_minor, os_patch] = split_version(os_version, sep);
    json!({
        "family": family,
        "major": major,
        "minor": minor,
        "patch": patch,
        "device": {"family": "Other", "major": "0", "minor": "0", "patch": "0"},
        "os": {"family": os_family, "major": os_major, "minor": os_minor, "patch": os_patch},
    })
}

/// The text right after `marker`, up to the first character that cannot be
/// part of a version.
fn version_after<'a>(ua: &'a str, marker: &str) -> Option<&'a str> {
    let start = ua.find(marker)? + marker.len();
    let rest = ua.get(start..)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(rest.len());
    rest.get(..end)
}

fn browser(ua: &str) -> (&'static str, &str) {
    const MARKERS: &[(&str, &str)] = &[
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox iOS"),
        ("CriOS/", "Chrome Mobile iOS"),
        ("Chrome/", "Chrome"),
        ("curl/", "curl"),
        ("Wget/", "Wget"),
    ];
    for (marker, family) in MARKERS {
        if let Some(v) = version_after(ua, marker) {
            return (family, v);
        }
    }
    if ua.contains("Safari/") {
        let family = if ua.contains("Mobile") {
            "Mobile Safari"
        } else {
            "Safari"
        };
        return (family, version_after(ua, "Version/").unwrap_or(""));
    }
    ("Other", "")
}

fn os(ua: &str) -> (&'static str, &str, char) {
    if let Some(v) = version_after(ua, "Windows NT ") {
        return ("Windows", v, '.');
    }
    if let Some(v) = version_after(ua, "Android ") {
        return ("Android", v, '.');
    }
    if ua.contains("iPhone") || ua.contains("iPad") || ua.contains("iPod") {
        let v = version_after(ua, "OS ").unwrap_or("");
        return ("iOS", v, '_');
    }
    if let Some(v) = version_after(ua, "Mac OS X ") {
        let sep = if v.contains('_') { '_' } else { '.' };
        return ("Mac OS X", v, sep);
    }
    if ua.contains("Macintosh") {
        return ("Mac OS X", "", '.');
    }
    if ua.contains("CrOS") {
        return ("Chrome OS", "", '.');
    }
    if ua.contains("Linux") {
        return ("Linux", "", '.');
    }
    ("Other", "", '.')
}

fn split_version(v: &str, sep: char) -> [String; 3] {
    let mut parts = v.split(sep).filter(|p| !p.is_empty());
    let mut next = || parts.next().unwrap_or("0").to_owned();
    [next(), next(), next()]
}
