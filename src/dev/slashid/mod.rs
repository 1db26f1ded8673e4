//! An in-memory, SlashID-compatible server for development and tests
//! (features `dev-upstream` and `slashid`).
//!
//! [`SlashIdDev`] runs a small axum server on a local port that speaks the
//! SlashID wire protocol of UPSTREAMS.md §3: it signs user tokens with
//! committed test keys (RS256 and ES256, `src/dev/slashid/keys/`; they
//! protect nothing), publishes them at `/.well-known/jwks.json`, rotates
//! them on demand, and serves the per-user API, anonymous persons, a
//! server-to-server call and hosted login with a small login page. Nothing
//! leaves the process.
//!
//! Like the other dev servers it is written from the wire protocol alone
//! and never uses the crate's SlashID client.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use authgate::dev::slashid::SlashIdDev;
//!
//! let slashid = SlashIdDev::spawn().await?;
//! // authgate::slashid::Client::builder(slashid.url(), slashid.org_id())
//! //     .with_hosted_login(slashid.client_id()).build()
//! println!("base URL: {}, organization: {}", slashid.url(), slashid.org_id());
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! JSON answers use SlashID's envelope `{"result": …}`; errors are
//! `{"errors":[{"httpcode","message"}]}` with the same status. "Bearer"
//! means `Authorization: Bearer <user token>` (a valid, unrevoked token of
//! an active person, else `401 authentication has expired`).
//!
//! | method + path | input | `result` |
//! |---|---|---|
//! | GET `/.well-known/jwks.json` | – | `{"keys":[…]}` (not enveloped) |
//! | POST `/token/validate` | Bearer, or `SlashID-OrgID` + `SlashID-API-Key`; `{"token"}` | `{"valid","invalidity_reason"?,"expires_in_seconds"?,"expires_at"?}` |
//! | POST `/token/revoke` | Bearer; `{"token"}` | 204; 400 when already revoked or expired |
//! | GET `/me` | Bearer | `{"person","organizations","handles","credentials"}` |
//! | GET `/token` | Bearer, `SlashID-OrgID: <target>` | a token of the same person in the target organization, same `exp` (403 for an organization the server does not have) |
//! | POST `/direct-id` | Bearer | a Direct-ID string (201) |
//! | GET/PUT/DELETE `/attributes/{bucket}` | Bearer; `?attributes=a,b`; a JSON object (PUT) | the attributes (GET) |
//! | GET/PUT/POST/DELETE `/consent/gdpr` | Bearer; `{"consent_levels":[…]}`; `?consent_levels=…` or `?deleteAll=true` (DELETE) | `{"consents":[{"consent_level","created_at"}]}` |
//! | POST `/persons/anonymous` | `SlashID-OrgID` | an anonymous person's token (201) |
//! | GET `/persons/{id}/attributes/{bucket}` | `SlashID-OrgID` + `SlashID-API-Key` | the attributes |
//! | GET `/oauth2/authorize` | `redirect_uri, client_id, response_type=code, state, scope, code_challenge, code_challenge_method=S256` | the login page |
//! | POST `/oauth2/authorize` | form: the same, `email`, `groups` (comma-separated), `decision=allow\|deny` | 303 to `redirect_uri?code&state` (or `error=access_denied`) |
//! | POST `/oauth2/tokens` | form `client_id, code, code_verifier, grant_type=authorization_code, redirect_uri` | `{"access_token","id_token","token_type","expires_in","scope"}` (not enveloped; OAuth errors `{"error"}`) |
//!
//! Tokens carry `iss` (the server's URL), `aud` and `oid` (the
//! organization), `sub` and `person_id`, `iat`, `nbf`, `exp`, `jti`,
//! `first_token`, `authenticated_methods`, `authentications`,
//! `person_type`, `groups_claim_name` and `groups` (UPSTREAMS.md §3.3).
//! Every person belongs to every organization of the server.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::ServerCtl;
use super::store::random_token;

mod api;
#[cfg(test)]
mod tests;

/// The organization a [`SlashIdDev`] serves unless configured otherwise.
pub const DEFAULT_ORG_ID: &str = "dev-org";
/// The hosted-login OAuth client id unless configured otherwise.
pub const DEFAULT_CLIENT_ID: &str = "dev-client";
/// The organization API key unless configured otherwise.
pub const DEFAULT_API_KEY: &str = "dev-api-key";

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The committed test keys, in rotation order.
const KEYS: &[(&str, DevAlgorithm, &[u8])] = &[
    (
        "dev-rs256-a",
        DevAlgorithm::Rs256,
        include_bytes!("keys/rs256-a.pem"),
    ),
    (
        "dev-es256-a",
        DevAlgorithm::Es256,
        include_bytes!("keys/es256-a.pem"),
    ),
    (
        "dev-rs256-b",
        DevAlgorithm::Rs256,
        include_bytes!("keys/rs256-b.pem"),
    ),
    (
        "dev-es256-b",
        DevAlgorithm::Es256,
        include_bytes!("keys/es256-b.pem"),
    ),
];

/// The signature algorithm of the dev server's signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (2048-bit key).
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl DevAlgorithm {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

/// One signing key: its `kid`, algorithm, private and public forms.
struct DevKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

fn load_keys() -> io::Result<Vec<DevKey>> {
    let invalid = |e: jsonwebtoken::errors::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    KEYS.iter()
        .map(|(kid, alg, pem)| {
            let encoding = match alg {
                DevAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem),
                DevAlgorithm::Es256 => EncodingKey::from_ec_pem(pem),
            }
            .map_err(invalid)?;
            let mut jwk = Jwk::from_encoding_key(&encoding, alg.algorithm()).map_err(invalid)?;
            jwk.common.key_id = Some((*kid).to_owned());
            jwk.common.key_algorithm = Some(match alg {
                DevAlgorithm::Rs256 => KeyAlgorithm::RS256,
                DevAlgorithm::Es256 => KeyAlgorithm::ES256,
            });
            jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
            let decoding = DecodingKey::from_jwk(&jwk).map_err(invalid)?;
            let jwk = serde_json::to_value(&jwk)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok(DevKey {
                kid,
                alg: alg.algorithm(),
                encoding,
                decoding,
                jwk,
            })
        })
        .collect()
}

/// A person of the dev server.
#[derive(Clone)]
struct Person {
    id: String,
    anonymous: bool,
    active: bool,
    handles: Vec<(String, String)>,
    groups: Vec<String>,
    /// Buckets of attributes.
    attributes: HashMap<String, Map<String, Value>>,
    /// Consent levels and when they were given (seconds).
    consents: Vec<(String, u64)>,
    /// Whether no token was issued yet (`first_token`).
    fresh: bool,
}

/// A pending hosted-login code.
struct Code {
    person: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    expires: u64,
}

struct Store {
    persons: HashMap<String, Person>,
    /// Tokens issued (by `jti`): whether revoked.
    revoked: HashMap<String, bool>,
    codes: HashMap<String, Code>,
    /// The signing key (index into `keys`) and the published ones.
    signing: usize,
    published: Vec<usize>,
    jwks_failure: Option<u16>,
    lifetime: Duration,
    skew: Duration,
    requests: HashMap<String, u64>,
}

struct Shared {
    store: Mutex<Store>,
    calls: AtomicU64,
    keys: Vec<DevKey>,
    url: String,
    org_id: String,
    organizations: Vec<(String, String)>,
    client_id: String,
    api_key: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store {
    fn now(&self) -> u64 {
        unix(SystemTime::now() + self.skew)
    }

    fn person_by_email(&mut self, email: &str) -> String {
        if let Some(p) = self.persons.values().find(|p| {
            p.handles
                .iter()
                .any(|(t, v)| t == "email_address" && v == email)
        }) {
            return p.id.clone();
        }
        let id = format!("pid:{}", &random_token()[..20]);
        self.persons.insert(
            id.clone(),
            Person {
                id: id.clone(),
                anonymous: false,
                active: true,
                handles: vec![("email_address".to_owned(), email.to_owned())],
                groups: Vec::new(),
                attributes: HashMap::new(),
                consents: Vec::new(),
                fresh: true,
            },
        );
        id
    }
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Shared {
    /// Signs `claims` with the signing key (its `kid` in the header).
    fn sign(&self, claims: &Value) -> String {
        let index = self.lock().signing;
        self.sign_with(index, claims)
    }

    fn sign_with(&self, index: usize, claims: &Value) -> String {
        let Some(key) = self.keys.get(index) else {
            return String::new();
        };
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.to_owned());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap_or_default()
    }

    /// A user token for `person_id` in `org`, expiring at `exp` (default:
    /// now + lifetime).
    fn issue(&self, person_id: &str, org: &str, method: &str, exp: Option<u64>) -> Option<String> {
        let claims = {
            let mut st = self.lock();
            let now = st.now();
            let exp = exp.unwrap_or(now + st.lifetime.as_secs());
            let person = st.persons.get_mut(person_id)?;
            let first = std::mem::replace(&mut person.fresh, false);
            let handle = person
                .handles
                .first()
                .map(|(t, v)| json!({"type": t, "value": v}));
            let claims = json!({
                "iss": self.url, "aud": org, "oid": org, "sub": person.id, "person_id": person.id,
                "iat": now, "nbf": now, "exp": exp, "jti": random_token(),
                "first_token": first,
                "authenticated_methods": [method],
                "authentications": [{"handle": handle, "method": method,
                                     "timestamp": format!("{now}")}],
                "person_type": if person.anonymous { "anonymous" } else { "regular" },
                "groups_claim_name": "groups",
                "groups": person.groups,
            });
            if let Some(jti) = claims["jti"].as_str() {
                st.revoked.insert(jti.to_owned(), false);
            }
            claims
        };
        Some(self.sign(&claims))
    }

    /// Verifies one of this server's tokens: its claims. Any key the
    /// server ever had is accepted (a rotated-out key's tokens stay valid
    /// until `exp`, as a real key set would keep publishing it).
    fn verify(&self, token: &str) -> Result<Map<String, Value>, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "invalid_token_content")?;
        let key = self
            .keys
            .iter()
            .find(|k| Some(k.kid) == header.kid.as_deref())
            .ok_or("invalid_token_content")?;
        let mut validation = Validation::new(key.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|_| "invalid_token_content")?;
        let claims = data.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(self.url.as_str()) {
            return Err("invalid_issuer");
        }
        let st = self.lock();
        if claims
            .get("exp")
            .and_then(Value::as_u64)
            .is_none_or(|exp| exp <= st.now())
        {
            return Err("expired");
        }
        let jti = claims.get("jti").and_then(Value::as_str).unwrap_or("");
        if st.revoked.get(jti).copied().unwrap_or(true) {
            // Revoked, or never issued by this server.
            return Err("invalid_token_content");
        }
        let person = claims
            .get("person_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !st.persons.get(person).is_some_and(|p| p.active) {
            return Err("person_not_active");
        }
        Ok(claims)
    }
}

/// A handle to a running SlashID dev server. Cheap to clone.
#[derive(Clone)]
pub struct SlashIdDev {
    shared: Arc<Shared>,
    ctl: Arc<ServerCtl>,
}

impl fmt::Debug for SlashIdDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlashIdDev")
            .field("url", &self.shared.url)
            .field("org_id", &self.shared.org_id)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl SlashIdDev {
    /// Starts a server with the defaults on `127.0.0.1` with a free port.
    pub async fn spawn() -> io::Result<Self> {
        Self::builder().spawn().await
    }

    /// A builder for a customised server.
    pub fn builder() -> SlashIdDevBuilder {
        SlashIdDevBuilder::default()
    }

    /// The base URL, `http://127.0.0.1:<port>` (also the tokens' `iss`).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The main organization's id.
    pub fn org_id(&self) -> &str {
        &self.shared.org_id
    }

    /// The hosted-login OAuth client id.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The organization API key.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// A user token for the person with e-mail `email` (created on first
    /// use) in the main organization, as a hosted login would give.
    pub fn issue_token(&self, email: &str) -> String {
        self.issue_token_in(email, &self.shared.org_id.clone())
    }

    /// A user token for `email` in organization `org`.
    pub fn issue_token_in(&self, email: &str, org: &str) -> String {
        let person = self.shared.lock().person_by_email(email);
        self.shared
            .issue(&person, org, "email_link", None)
            .unwrap_or_default()
    }

    /// A token container (§3.3): `iss: "slashid"`, the user token of
    /// `email` in `user_token`, the same `exp`.
    pub fn issue_container(&self, email: &str) -> String {
        let user_token = self.issue_token(email);
        let st = self.shared.lock();
        let now = st.now();
        let exp = now + st.lifetime.as_secs();
        drop(st);
        self.shared.sign(&json!({
            "iss": "slashid", "iat": now, "exp": exp, "jti": random_token(),
            "user_token": user_token, "oidc_tokens": []
        }))
    }

    /// Signs arbitrary claims with the current signing key (tests craft
    /// expired, early, foreign-issuer or foreign-audience tokens with it).
    pub fn sign_claims(&self, claims: &Value) -> String {
        self.shared.sign(claims)
    }

    /// The person id of `email` (created on first use).
    pub fn person_id(&self, email: &str) -> String {
        self.shared.lock().person_by_email(email)
    }

    /// Sets the groups of `email`'s person (in tokens issued from now on).
    pub fn set_groups(&self, email: &str, groups: &[&str]) {
        let mut st = self.shared.lock();
        let id = st.person_by_email(email);
        if let Some(p) = st.persons.get_mut(&id) {
            p.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        }
    }

    /// Deactivates `email`'s person: `/token/validate` answers
    /// `person_not_active`.
    pub fn deactivate(&self, email: &str) {
        let mut st = self.shared.lock();
        let id = st.person_by_email(email);
        if let Some(p) = st.persons.get_mut(&id) {
            p.active = false;
        }
    }

    /// Revokes every token issued so far (as an administrator would).
    pub fn revoke_all(&self) {
        for revoked in self.shared.lock().revoked.values_mut() {
            *revoked = true;
        }
    }

    /// Moves signing to the next committed key (RS256 and ES256 keys
    /// alternate) and publishes it with the previous one: its `kid`.
    pub fn rotate_keys(&self) -> String {
        let mut st = self.shared.lock();
        let previous = st.signing;
        st.signing = (previous + 1) % self.shared.keys.len();
        st.published = vec![st.signing, previous];
        self.shared
            .keys
            .get(st.signing)
            .map_or_else(String::new, |k| k.kid.to_owned())
    }

    /// The `kid` of the signing key.
    pub fn current_kid(&self) -> String {
        let st = self.shared.lock();
        self.shared
            .keys
            .get(st.signing)
            .map_or_else(String::new, |k| k.kid.to_owned())
    }

    /// Makes `/.well-known/jwks.json` answer `status` (e.g. 503), or
    /// normally again with `None`.
    pub fn set_jwks_failure(&self, status: Option<u16>) {
        self.shared.lock().jwks_failure = status;
    }

    /// The lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().lifetime = lifetime;
    }

    /// Moves the server's clock forward (tokens issued later start later;
    /// tokens issued before look older).
    pub fn advance_clock(&self, by: Duration) {
        let mut st = self.shared.lock();
        st.skew = st.skew.saturating_add(by);
    }

    /// How many requests reached the server (any path).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// How many requests reached `path` (e.g. `/.well-known/jwks.json`,
    /// `/token/validate`).
    pub fn calls_to(&self, path: &str) -> u64 {
        self.shared.lock().requests.get(path).copied().unwrap_or(0)
    }

    /// Stops the server (open connections get up to 5 seconds).
    pub async fn shutdown(self) {
        self.ctl.stop.send_replace(true);
        let task = self
            .ctl
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

/// Configures and starts a [`SlashIdDev`].
#[derive(Clone)]
pub struct SlashIdDevBuilder {
    org_id: String,
    organizations: Vec<(String, String)>,
    client_id: String,
    api_key: String,
    algorithm: DevAlgorithm,
    lifetime: Duration,
    persons: Vec<(String, Vec<String>)>,
    addr: SocketAddr,
}

impl fmt::Debug for SlashIdDevBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlashIdDevBuilder")
            .field("org_id", &self.org_id)
            .field("algorithm", &self.algorithm)
            .field("lifetime", &self.lifetime)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Default for SlashIdDevBuilder {
    fn default() -> Self {
        Self {
            org_id: DEFAULT_ORG_ID.to_owned(),
            organizations: Vec::new(),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            api_key: DEFAULT_API_KEY.to_owned(),
            algorithm: DevAlgorithm::Rs256,
            lifetime: Duration::from_secs(3600),
            persons: Vec::new(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

impl SlashIdDevBuilder {
    /// The main organization's id (default `dev-org`).
    #[must_use]
    pub fn with_org_id(mut self, org_id: &str) -> Self {
        org_id.clone_into(&mut self.org_id);
        self
    }

    /// Another organization sharing the person pool (for `GET /token`).
    #[must_use]
    pub fn with_organization(mut self, id: &str, name: &str) -> Self {
        self.organizations.push((id.to_owned(), name.to_owned()));
        self
    }

    /// The hosted-login client id (default `dev-client`).
    #[must_use]
    pub fn with_client_id(mut self, client_id: &str) -> Self {
        client_id.clone_into(&mut self.client_id);
        self
    }

    /// The organization API key (default `dev-api-key`).
    #[must_use]
    pub fn with_api_key(mut self, key: &str) -> Self {
        key.clone_into(&mut self.api_key);
        self
    }

    /// The first signing key's algorithm (default RS256).
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: DevAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// How long tokens live (default 1 hour).
    #[must_use]
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// A person with e-mail `email` in `groups`.
    #[must_use]
    pub fn with_person(mut self, email: &str, groups: &[&str]) -> Self {
        self.persons.push((
            email.to_owned(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
        ));
        self
    }

    /// The address to bind (default `127.0.0.1:0`).
    #[must_use]
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds the listener and starts the server on the current runtime.
    pub async fn spawn(self) -> io::Result<SlashIdDev> {
        let keys = load_keys()?;
        let signing = keys
            .iter()
            .position(|k| k.alg == self.algorithm.algorithm())
            .unwrap_or(0);
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut organizations = vec![(self.org_id.clone(), "Dev organization".to_owned())];
        organizations.extend(self.organizations);
        let mut store = Store {
            persons: HashMap::new(),
            revoked: HashMap::new(),
            codes: HashMap::new(),
            signing,
            published: vec![signing],
            jwks_failure: None,
            lifetime: self.lifetime,
            skew: Duration::ZERO,
            requests: HashMap::new(),
        };
        for (email, groups) in self.persons {
            let id = store.person_by_email(&email);
            if let Some(p) = store.persons.get_mut(&id) {
                p.groups = groups;
            }
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            calls: AtomicU64::new(0),
            keys,
            url,
            org_id: self.org_id,
            organizations,
            client_id: self.client_id,
            api_key: self.api_key,
        });
        let app = api::router(shared.clone());
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let signal = async move {
                if stopped.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %err, "slashid dev server stopped with an error");
            }
        });
        tracing::info!(url = %shared.url, org = %shared.org_id, "slashid dev server listening");
        Ok(SlashIdDev {
            shared,
            ctl: Arc::new(ServerCtl {
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}
