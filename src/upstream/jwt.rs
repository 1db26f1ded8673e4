//! The shared JWKS/JWT verifier (SEAM.md §2.6, feature `jwt`): a cached
//! key set fetched from a `jwks.json` URL, and the verification of a JWT
//! against it with `jsonwebtoken`.
//!
//! - **The algorithm comes from the key** (RFC 7517 §4.4 `alg`, or the key
//!   type when the key names none: RSA → RS256, EC P-256 → ES256, P-384 →
//!   ES384, Ed25519 → EdDSA), never from the token's header alone, and only
//!   asymmetric keys are kept: a token with `alg: none` (not an algorithm
//!   `jsonwebtoken` parses) or HS256 "signed" with a public key does not
//!   match the key's algorithm and is refused by construction (RFC 8725
//!   §2.1, §3.1).
//! - **`exp` and `nbf`** are checked here against the caller's clock with a
//!   leeway (RFC 7519 §4.1.4, §4.1.5); `exp` is required. `iss` and `aud`
//!   are checked by `jsonwebtoken` when the caller expects them.
//! - **The key set** is fetched once and kept. An unknown `kid` triggers one
//!   refetch (single flight: one fetch at a time, waiters reuse its
//!   result) at most once per `min_refetch` (within it, an unknown `kid` is
//!   an outage, not a verdict); the set is also refetched when
//!   older than `refresh`. A failed fetch keeps the last good set and is an
//!   outage ([`JwtError::Unavailable`], the cookie is kept, SECURITY.md R1),
//!   never an invalid token; a set never fetched is an outage too. A `kid`
//!   is called unknown ([`JwtError::Invalid`]) only after a successful fetch
//!   that does not have it.

// Used by SlashID and OpenID Connect; `jwt` alone, or through `webcom`
// (which only signs), compiles it unused.
#![cfg_attr(not(any(feature = "slashid", feature = "oidc")), allow(dead_code))]

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use crate::error::Error;
use crate::upstream::wire::{Answer, send, strict_json};

/// The most bytes read from a key set.
const JWKS_BODY_LIMIT: usize = 256 * 1024;

/// One verification key and the only algorithm it verifies.
struct Key {
    kid: Option<String>,
    key: Arc<DecodingKey>,
    alg: Algorithm,
}

/// A fetched key set.
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    /// When it was fetched; `None` until the first successful fetch.
    fetched_at: Option<Instant>,
    /// Bumped by every successful fetch (single flight: a waiter sees that
    /// the fetch it waited for already happened).
    generation: u64,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<(Arc<DecodingKey>, Algorithm)> {
        let key = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            // A token without `kid` is verified only by a set of one key
            // (RFC 7515 §4.1.4: `kid` is a hint; with several keys there is
            // nothing to choose by but the header's `alg`, which is not
            // trusted).
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }?;
        Some((key.key.clone(), key.alg))
    }
}

/// The state of the fetches, behind the single-flight lock.
#[derive(Default)]
struct Fetches {
    last_attempt: Option<Instant>,
    last_ok: bool,
}

/// A remote key set (`jwks.json`, RFC 7517 §5) with its cache.
pub(crate) struct Jwks {
    url: Url,
    http: reqwest::Client,
    timeout: Duration,
    refresh: Duration,
    min_refetch: Duration,
    set: RwLock<Arc<KeySet>>,
    flight: tokio::sync::Mutex<Fetches>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url.as_str())
            .field("keys", &self.current().keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a token was not verified.
#[derive(Debug)]
pub(crate) enum JwtError {
    /// The token is definitively invalid (the reason, for the log).
    Invalid(&'static str),
    /// The key set could not be had: an outage, the cookie is kept.
    Unavailable(Error),
}

/// What the caller expects of a token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    /// `iss` must be this (RFC 7519 §4.1.1); `None`: not checked.
    pub(crate) issuer: Option<&'a str>,
    /// `aud` must hold one of these (RFC 7519 §4.1.3); `None`: not checked.
    pub(crate) audience: Option<&'a [&'a str]>,
    /// Whether `exp` is required and checked: `false` only for a token
    /// that was verified in full before and comes back from the app's own
    /// sealed cookie (an OpenID Connect ID token, whose `exp` bounds its
    /// acceptance at sign-in, not the session), or whose `exp` is optional
    /// (a back-channel logout token; the caller checks it).
    pub(crate) expiry: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    pub(crate) leeway: Duration,
    /// The time to check `exp` and `nbf` against.
    pub(crate) now: SystemTime,
}

impl Jwks {
    /// A key set at `url`, fetched with `http` (which must not follow
    /// redirects), refreshed when older than `refresh`, refetched for an
    /// unknown `kid` at most once per `min_refetch`.
    pub(crate) fn new(
        url: Url,
        http: reqwest::Client,
        timeout: Duration,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Self {
        Self {
            url,
            http,
            timeout,
            refresh,
            min_refetch,
            set: RwLock::new(Arc::new(KeySet::default())),
            flight: tokio::sync::Mutex::new(Fetches::default()),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key named `kid` and its algorithm.
    pub(crate) async fn key(
        &self,
        kid: Option<&str>,
    ) -> Result<(Arc<DecodingKey>, Algorithm), JwtError> {
        let set = self.current();
        if let Some(found) = set.find(kid) {
            let due = set
                .fetched_at
                .is_some_and(|at| at.elapsed() >= self.refresh);
            if due {
                // A failed scheduled refresh keeps the last good set; a
                // successful one is the truth, and a key it no longer has
                // (withdrawn, e.g. compromised) verifies nothing.
                if let Ok(new) = self.refetch(set.generation).await {
                    return new
                        .find(kid)
                        .ok_or(JwtError::Invalid("the key was withdrawn from the key set"));
                }
            }
            return Ok(found);
        }
        match self.refetch(set.generation).await {
            Ok(new) => new
                .find(kid)
                .ok_or(JwtError::Invalid("no key of the key set has this kid")),
            Err(err) => Err(JwtError::Unavailable(err)),
        }
    }

    /// Fetches the set again unless another flight did since `seen`, or a
    /// fetch was tried less than `min_refetch` ago.
    async fn refetch(&self, seen: u64) -> Result<Arc<KeySet>, Error> {
        let mut fetches = self.flight.lock().await;
        let current = self.current();
        if current.generation != seen {
            return Ok(current);
        }
        if fetches
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refetch)
        {
            // Rate-limited: nothing is asked, and nothing is decided: the
            // key may be newer than the last fetch, so this is an outage
            // for now (the cookie is kept), and the next fetch decides.
            return Err(Error::unavailable());
        }
        fetches.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                fetches.last_ok = true;
                let new = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    generation: current.generation + 1,
                });
                *self.set.write().unwrap_or_else(PoisonError::into_inner) = new.clone();
                Ok(new)
            }
            Err(err) => {
                fetches.last_ok = false;
                tracing::warn!(error = %err, url = %self.url, "authgate: the key set could not be fetched; keeping the last good one");
                Err(err)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, Error> {
        let request = self
            .http
            .get(self.url.clone())
            .timeout(self.timeout)
            .header(http::header::ACCEPT, "application/json");
        let Answer {
            status,
            json,
            bytes,
        } = send(request, JWKS_BODY_LIMIT).await?;
        if !status.is_success() {
            return Err(Error::from_status(status));
        }
        if !json {
            return Err(Error::bad_answer("the key set is not JSON"));
        }
        let value = strict_json(&bytes).map_err(Error::bad_answer)?;
        let keys = parse_key_set(&value)?;
        if keys.is_empty() {
            return Err(Error::bad_answer("the key set has no usable key"));
        }
        Ok(keys)
    }
}

/// The usable keys of a JWK set: each key is read on its own, and one the
/// verifier cannot use (a symmetric key, an encryption key, an unknown
/// type) is skipped rather than failing the set.
fn parse_key_set(value: &Value) -> Result<Vec<Key>, Error> {
    let Some(keys) = value.get("keys").and_then(Value::as_array) else {
        return Err(Error::bad_answer("the key set has no keys array"));
    };
    Ok(keys
        .iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key.clone()).ok())
        .filter_map(|jwk| usable(&jwk))
        .collect())
}

/// A JWK as a verification key with its one algorithm, if it is an
/// asymmetric signature key.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS384)) => Algorithm::PS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS512)) => Algorithm::PS512,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES384))
            if ec.curve == EllipticCurve::P384 =>
        {
            Algorithm::ES384
        }
        (AlgorithmParameters::OctetKeyPair(okp), None | Some(KeyAlgorithm::EdDSA))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        // Symmetric keys (`oct`), encryption algorithms, mismatched pairs.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        key: Arc::new(key),
        alg,
    })
}

/// Seconds since the epoch of a time (0 before it).
fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A JWT's payload, unverified: only to see what kind of token it is
/// (a SlashID token container) before verifying it.
pub(crate) fn peek_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    match strict_json(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Verifies `token` against `jwks` and `expect`; its claims as `C`.
pub(crate) async fn verify<C: DeserializeOwned>(
    jwks: &Jwks,
    token: &str,
    expect: &Expect<'_>,
) -> Result<C, JwtError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| JwtError::Invalid("not a JWT with a known signature algorithm"))?;
    let (key, alg) = jwks.key(header.kid.as_deref()).await?;
    verify_with(&key, alg, token, expect)
}

/// Verifies `token` with one key and its algorithm (no I/O).
pub(crate) fn verify_with<C: DeserializeOwned>(
    key: &DecodingKey,
    alg: Algorithm,
    token: &str,
    expect: &Expect<'_>,
) -> Result<C, JwtError> {
    // One algorithm, the key's: the header's `alg` must equal it.
    let mut validation = Validation::new(alg);
    // `exp`/`nbf` are checked below against the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let mut required = if expect.expiry {
        vec!["exp"]
    } else {
        Vec::new()
    };
    if let Some(issuer) = expect.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match expect.audience {
        Some(audience) => {
            validation.set_audience(audience);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|err| {
        use jsonwebtoken::errors::ErrorKind as K;
        JwtError::Invalid(match err.kind() {
            K::InvalidSignature => "bad signature",
            K::InvalidAlgorithm => "the header's alg is not the key's",
            K::InvalidIssuer => "wrong issuer",
            K::InvalidAudience => "wrong audience",
            K::MissingRequiredClaim(_) => "a required claim is missing",
            _ => "malformed token",
        })
    })?;
    let claims = data.claims;
    let now = unix(expect.now);
    let leeway = expect.leeway.as_secs();
    if expect.expiry {
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return Err(JwtError::Invalid("exp is not a number of seconds"));
        };
        if now >= exp.saturating_add(leeway) {
            return Err(JwtError::Invalid("expired"));
        }
    }
    match claims.get("nbf") {
        None => {}
        Some(nbf) => match nbf.as_u64() {
            Some(nbf) if nbf <= now.saturating_add(leeway) => {}
            Some(_) => return Err(JwtError::Invalid("not yet valid")),
            None => return Err(JwtError::Invalid("nbf is not a number of seconds")),
        },
    }
    serde_json::from_value(claims).map_err(|_| JwtError::Invalid("unexpected claims"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn only_asymmetric_signature_keys_are_kept_with_their_algorithm() {
        let set = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "mismatch", "alg": "RS256", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "w"}
        ]});
        let keys = parse_key_set(&set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert_eq!(keys[0].alg, Algorithm::ES256);
        assert!(parse_key_set(&json!({"nokeys": []})).is_err());
    }

    #[test]
    fn a_token_without_kid_needs_a_set_of_one() {
        let mut set = KeySet::default();
        let key = || Arc::new(DecodingKey::from_secret(b"x"));
        set.keys.push(Key {
            kid: Some("a".into()),
            key: key(),
            alg: Algorithm::ES256,
        });
        assert!(set.find(None).is_some());
        assert!(set.find(Some("b")).is_none());
        set.keys.push(Key {
            kid: Some("b".into()),
            key: key(),
            alg: Algorithm::ES256,
        });
        assert!(set.find(None).is_none());
        assert!(set.find(Some("b")).is_some());
    }

    #[test]
    fn peek_reads_a_payload_without_trusting_it() {
        let token = "eyJhbGciOiJub25lIn0.eyJ1c2VyX3Rva2VuIjoieCJ9.";
        assert_eq!(peek_claims(token).unwrap()["user_token"], "x");
        assert!(peek_claims("garbage").is_none());
    }
}
