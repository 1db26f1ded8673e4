//! The Webcom dev server's state: accounts, identities, tokens, one-time
//! codes and OAuth hand-overs, all in memory.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::super::store::{PasswordHash, random_token};
use super::{WebcomMessage, WebcomMessageKind};
use crate::dev::Channel;

/// How long OTPs, verification and reset codes, `__wcsession` keys and
/// authorization codes live.
pub(super) const CODE_TTL: Duration = Duration::from_secs(600);
/// Wrong attempts a one-time code survives.
pub(super) const MAX_ATTEMPTS: u32 = 5;
/// Minimum password length, in characters.
pub(super) const MIN_PASSWORD_LEN: usize = 8;

/// One identity: a way to sign in to an account.
pub(super) struct IdentityRec {
    pub(super) uid: String,
    pub(super) password: Option<PasswordHash>,
    pub(super) verified: bool,
    pub(super) profile: Map<String, Value>,
}

/// One issued token.
pub(super) struct TokenRec {
    pub(super) uid: String,
    pub(super) provider: String,
    pub(super) provider_uid: String,
    pub(super) issued: SystemTime,
    pub(super) expires: SystemTime,
}

/// What a one-time code proves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    SignIn,
    Verify,
}

/// A code sent by SMS or e-mail, found by its challenge.
pub(super) struct Challenge {
    pub(super) provider: String,
    pub(super) id: String,
    pub(super) code: String,
    pub(super) purpose: Purpose,
    pub(super) expires: SystemTime,
    pub(super) attempts: u32,
}

/// A provider sign-in waiting for its `POST /session` (redirect mode) or
/// its `GET /{provider}/callback` (code mode).
pub(super) struct Handover {
    pub(super) provider: String,
    /// Redirect mode: the `from` hash; code mode: the `state`.
    pub(super) binding: String,
    pub(super) email: String,
    pub(super) name: String,
    pub(super) expires: SystemTime,
}

#[derive(Default)]
pub(super) struct Store {
    /// uid → creation time.
    pub(super) accounts: HashMap<String, SystemTime>,
    /// (provider, providerUid) → identity.
    pub(super) identities: HashMap<(String, String), IdentityRec>,
    pub(super) tokens: HashMap<String, TokenRec>,
    pub(super) challenges: HashMap<String, Challenge>,
    /// E-mail verification tokens → (e-mail, expiry).
    pub(super) email_tokens: HashMap<String, (String, SystemTime)>,
    /// E-mail → (reset code, expiry).
    pub(super) reset_codes: HashMap<String, (String, SystemTime)>,
    /// Custom-provider credentials → (provider, providerUid, profile).
    pub(super) custom_tokens: HashMap<String, (String, String, Value)>,
    /// `__wcsession` keys.
    pub(super) sessions: HashMap<String, Handover>,
    /// Code-mode authorization codes.
    pub(super) codes: HashMap<String, Handover>,
    pub(super) outbox: Vec<WebcomMessage>,
    pub(super) skew: Duration,
    pub(super) token_lifetime: Duration,
    pub(super) fresh_auth_window: Duration,
    pub(super) verification_required: bool,
}

/// Seconds since the Unix epoch.
pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A six-digit code.
fn six_digits() -> String {
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32))
}

/// base64url(SHA-256(s)) with `=` padding: the `from` of a request key.
pub(super) fn padded_hash(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(Sha256::digest(s.as_bytes()))
}

impl Store {
    pub(super) fn now(&self) -> SystemTime {
        SystemTime::now() + self.skew
    }

    /// A new account id.
    pub(super) fn new_account(&mut self) -> String {
        let uid = format!("acc-{}", &random_token()[..16]);
        self.accounts.insert(uid.clone(), self.now());
        uid
    }

    /// The identity `(provider, id)`, created (on a new account unless
    /// `uid` is given) when missing.
    pub(super) fn ensure_identity(
        &mut self,
        provider: &str,
        id: &str,
        uid: Option<String>,
        profile: Map<String, Value>,
    ) -> String {
        let key = (provider.to_owned(), id.to_owned());
        if let Some(existing) = self.identities.get(&key) {
            return existing.uid.clone();
        }
        let uid = uid.unwrap_or_else(|| self.new_account());
        self.identities.insert(
            key,
            IdentityRec {
                uid: uid.clone(),
                password: None,
                verified: true,
                profile,
            },
        );
        uid
    }

    /// The `AuthenticationDetails` of an identity, without the token.
    pub(super) fn details(&self, provider: &str, provider_uid: &str, expires: SystemTime) -> Value {
        let key = (provider.to_owned(), provider_uid.to_owned());
        let (uid, profile) = self
            .identities
            .get(&key)
            .map(|i| (i.uid.clone(), Value::Object(i.profile.clone())))
            .unwrap_or_default();
        let mut details = json!({
            "uid": uid,
            "provider": provider,
            "providerUid": provider_uid,
            "expires": unix_secs(expires),
        });
        if profile.as_object().is_some_and(|p| !p.is_empty())
            && let Value::Object(map) = &mut details
        {
            map.insert("providerProfile".into(), profile);
        }
        details
    }

    /// Signs an identity in: `{"token","user"}`.
    pub(super) fn sign_in(&mut self, provider: &str, provider_uid: &str) -> Value {
        let now = self.now();
        let key = (provider.to_owned(), provider_uid.to_owned());
        let uid = self
            .identities
            .get(&key)
            .map(|i| i.uid.clone())
            .unwrap_or_default();
        let token = random_token();
        let expires = now + self.token_lifetime;
        self.tokens.insert(
            token.clone(),
            TokenRec {
                uid,
                provider: provider.to_owned(),
                provider_uid: provider_uid.to_owned(),
                issued: now,
                expires,
            },
        );
        json!({"token": token, "user": self.details(provider, provider_uid, expires)})
    }

    /// The live token `token`: known, not expired, its identity still there.
    pub(super) fn token(&self, token: &str) -> Option<&TokenRec> {
        let rec = self.tokens.get(token)?;
        let key = (rec.provider.clone(), rec.provider_uid.clone());
        (self.now() < rec.expires && self.identities.contains_key(&key)).then_some(rec)
    }

    /// Sends a code for `purpose` and records it: the challenge.
    pub(super) fn send_code(
        &mut self,
        provider: &str,
        id: &str,
        purpose: Purpose,
        kind: WebcomMessageKind,
    ) -> String {
        let code = six_digits();
        let challenge = random_token();
        self.challenges.insert(
            challenge.clone(),
            Challenge {
                provider: provider.to_owned(),
                id: id.to_owned(),
                code: code.clone(),
                purpose,
                expires: self.now() + CODE_TTL,
                attempts: 0,
            },
        );
        self.send(provider, id, kind, code);
        challenge
    }

    /// Checks a code against its challenge: single use, expires, at most
    /// [`MAX_ATTEMPTS`] wrong tries.
    pub(super) fn check_code(
        &mut self,
        challenge: &str,
        provider: &str,
        id: &str,
        code: &str,
        purpose: Purpose,
    ) -> bool {
        let now = self.now();
        let Some(rec) = self.challenges.get_mut(challenge) else {
            return false;
        };
        if rec.provider != provider || rec.id != id || rec.purpose != purpose || now >= rec.expires
        {
            return false;
        }
        if rec.code != code {
            rec.attempts += 1;
            if rec.attempts >= MAX_ATTEMPTS {
                self.challenges.remove(challenge);
            }
            return false;
        }
        self.challenges.remove(challenge);
        true
    }

    /// Records a message in the outbox.
    pub(super) fn send(&mut self, provider: &str, to: &str, kind: WebcomMessageKind, code: String) {
        let channel = if provider == "phone" {
            Channel::Sms
        } else {
            Channel::Email
        };
        let sent_at = self.now();
        self.outbox.push(WebcomMessage {
            channel,
            kind,
            to: to.to_owned(),
            code,
            sent_at,
        });
    }

    /// Removes an account, its identities and their tokens.
    pub(super) fn remove_account(&mut self, uid: &str) {
        self.accounts.remove(uid);
        self.identities.retain(|_, i| i.uid != uid);
        self.tokens.retain(|_, t| t.uid != uid);
    }
}
