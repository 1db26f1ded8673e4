//! [`AuthConfig`]: every setting of the layer, its defaults in one place,
//! validated when it is built.

use std::fmt;
use std::time::Duration;

use url::{Host, Url};

use crate::cookie::{CookieAttributes, Keys};
use crate::error::ConfigError;
use crate::events::AuthEvents;
use crate::redirect::ReturnTo;

/// The longest session-cookie lifetime browsers honour (RFC 6265bis §5.5).
const MAX_COOKIE_AGE: Duration = Duration::from_secs(400 * 24 * 3600);

/// The layer's configuration. Built once at start-up; every `with_*` that
/// parses input returns `Result`, so a bad value fails at boot.
///
/// ```
/// use std::time::Duration;
/// use authgate::AuthConfig;
///
/// let config = AuthConfig::new("https://app.example")?
///     .with_key(&[7u8; 64])?
///     .with_sign_in_page("/signin")?
///     .with_cache_ttl(Duration::from_secs(30));
/// assert_eq!(config.session_cookie_name(), "__Host-authgate");
/// # Ok::<(), authgate::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct AuthConfig {
    pub(crate) public_origin: Url,
    pub(crate) secure: bool,
    pub(crate) cookie_base: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) previous_keys: Vec<Vec<u8>>,
    pub(crate) route_prefix: String,
    pub(crate) sign_in_page: String,
    pub(crate) after_sign_in: String,
    pub(crate) after_sign_out: String,
    pub(crate) reset_password_page: String,
    pub(crate) reset_failure_page: Option<String>,
    pub(crate) notice_page: String,
    pub(crate) sign_in_notices: bool,
    pub(crate) session_max_age: Duration,
    pub(crate) session_cookie_ceiling: usize,
    pub(crate) flow_ttl: Duration,
    pub(crate) confirm_email_links: bool,
    pub(crate) clear_site_data: Vec<ClearSiteData>,
    pub(crate) page_renderer: crate::pages::PageRenderer,
    pub(crate) cache: CacheSettings,
    pub(crate) events: AuthEvents,
    #[cfg(feature = "redis")]
    pub(crate) revocation_bus: Option<crate::bus::RedisBus>,
}

/// What a sign-out response asks the browser to clear for this origin
/// (`Clear-Site-Data`, W3C Clear Site Data §3.1); see
/// [`AuthConfig::with_clear_site_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClearSiteData {
    /// The HTTP cache (pages of the signed-out user).
    Cache,
    /// DOM storage: `localStorage`, `sessionStorage`, IndexedDB, service
    /// workers.
    Storage,
    /// Every cookie of the registrable domain, not only authgate's: ask for
    /// it only when the whole site signs out with the user.
    Cookies,
    /// Reloads every open document of the origin.
    ExecutionContexts,
}

impl ClearSiteData {
    fn directive(self) -> &'static str {
        match self {
            Self::Cache => "\"cache\"",
            Self::Storage => "\"storage\"",
            Self::Cookies => "\"cookies\"",
            Self::ExecutionContexts => "\"executionContexts\"",
        }
    }
}

/// Resolver cache settings (see [`AuthConfig::with_cache_ttl`] and friends).
#[derive(Debug, Clone)]
pub(crate) struct CacheSettings {
    pub(crate) fresh_ttl: Duration,
    pub(crate) stale_window: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) failure_cooldown: Duration,
    pub(crate) max_bytes: u64,
    pub(crate) max_marks: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) queue_timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            fresh_ttl: Duration::from_secs(60),
            stale_window: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
            failure_cooldown: Duration::from_secs(2),
            max_bytes: 64 * 1024 * 1024,
            max_marks: 100_000,
            max_in_flight: 64,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("public_origin", &self.public_origin.as_str())
            .field("secure", &self.secure)
            .field("session_cookie_name", &self.session_cookie_name())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("route_prefix", &self.route_prefix)
            .field("sign_in_page", &self.sign_in_page)
            .field("after_sign_in", &self.after_sign_in)
            .field("confirm_email_links", &self.confirm_email_links)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain == "localhost" || domain.ends_with(".localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn check_path(what: &'static str, value: &str) -> Result<String, ConfigError> {
    let valid = value.starts_with('/')
        && !value.starts_with("//")
        && !value.contains('\\')
        && !value.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::InvalidPath {
            what,
            value: value.to_owned(),
        })
    }
}

impl AuthConfig {
    /// A configuration for the app served at `public_origin` (scheme, host,
    /// port). Every absolute URL authgate emits is built from it, never
    /// from `Host` or `X-Forwarded-*` (SECURITY.md T-A4).
    ///
    /// An `https://` origin gets `Secure` cookies with the `__Host-` prefix.
    /// A plain `http://` origin is accepted only on a loopback host
    /// (`localhost`, `127.0.0.1`, `::1`) and turns on development mode:
    /// no `Secure`, no prefix, and a warning in the log when the layer is
    /// built. For other plain-http hosts see
    /// [`new_allowing_plain_http`](Self::new_allowing_plain_http).
    pub fn new(public_origin: &str) -> Result<Self, ConfigError> {
        let config = Self::new_allowing_plain_http(public_origin)?;
        if !config.secure && !is_loopback(&config.public_origin) {
            return Err(ConfigError::InsecureOrigin(public_origin.to_owned()));
        }
        Ok(config)
    }

    /// Like [`new`](Self::new) but accepts plain `http://` on any host.
    ///
    /// # Warning
    ///
    /// Without TLS the session cookie travels in clear text and can be set
    /// by anyone on the network path. Use only behind a trusted TLS proxy
    /// that you cannot configure to forward `https`, or in a lab.
    pub fn new_allowing_plain_http(public_origin: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidUrl {
            what: "public origin",
            value: public_origin.to_owned(),
        };
        let url = Url::parse(public_origin).map_err(|_| invalid())?;
        let secure = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid()),
        };
        if url.host().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(invalid());
        }
        Ok(Self {
            public_origin: url,
            secure,
            cookie_base: "authgate".to_owned(),
            key: None,
            previous_keys: Vec::new(),
            route_prefix: "/auth".to_owned(),
            sign_in_page: "/signin".to_owned(),
            after_sign_in: "/".to_owned(),
            after_sign_out: "/".to_owned(),
            reset_password_page: "/reset-password".to_owned(),
            reset_failure_page: None,
            notice_page: "/".to_owned(),
            sign_in_notices: false,
            session_max_age: Duration::from_secs(30 * 24 * 3600),
            session_cookie_ceiling: crate::cookie::DEFAULT_CEILING,
            flow_ttl: Duration::from_secs(600),
            confirm_email_links: true,
            clear_site_data: vec![ClearSiteData::Cache, ClearSiteData::Storage],
            page_renderer: crate::pages::PageRenderer::default(),
            cache: CacheSettings::default(),
            events: AuthEvents::default(),
            #[cfg(feature = "redis")]
            revocation_bus: None,
        })
    }

    /// The key (at least 64 bytes) that encrypts the flow and reset cookies
    /// and keys the token hashes. Default: a random per-process key, with a
    /// warning (flows in flight then break on restart and across
    /// instances).
    pub fn with_key(mut self, key: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = key.as_ref();
        if key.len() < 64 {
            return Err(ConfigError::KeyTooShort(key.len()));
        }
        self.key = Some(key.to_vec());
        Ok(self)
    }

    /// A previous key, still accepted to decrypt cookies during rotation.
    pub fn with_previous_key(mut self, key: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = key.as_ref();
        if key.len() < 64 {
            return Err(ConfigError::KeyTooShort(key.len()));
        }
        self.previous_keys.push(key.to_vec());
        Ok(self)
    }

    /// The cookie name, without prefix. Default: `authgate` (so
    /// `__Host-authgate` over https). The flow and reset cookies append
    /// `-flow` and `-reset`.
    pub fn with_cookie_name(mut self, name: &str) -> Result<Self, ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.to_ascii_lowercase().starts_with("__host-")
            && !name.to_ascii_lowercase().starts_with("__secure-")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(ConfigError::InvalidCookieName(name.to_owned()));
        }
        self.cookie_base = name.to_owned();
        Ok(self)
    }

    /// The path under which the layer answers its own routes. Default:
    /// `/auth` (`/auth/signin/{provider}`, `/auth/callback`,
    /// `/auth/signout`).
    pub fn with_route_prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        let prefix = check_path("route prefix", prefix)?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(ConfigError::InvalidPath {
                what: "route prefix",
                value: "/".into(),
            });
        }
        self.route_prefix = prefix.to_owned();
        Ok(self)
    }

    /// The app's sign-in page, where page navigations without a user are
    /// sent with `?return_to=`. Default: `/signin`.
    pub fn with_sign_in_page(mut self, path: &str) -> Result<Self, ConfigError> {
        self.sign_in_page = check_path("sign-in page", path)?;
        Ok(self)
    }

    /// Where to go after signing in when no `return_to` was given.
    /// Default: `/`.
    pub fn with_after_sign_in(mut self, path: &str) -> Result<Self, ConfigError> {
        self.after_sign_in = check_path("after sign-in", path)?;
        Ok(self)
    }

    /// Where to go after signing out when no `return_to` was given.
    /// Default: `/`.
    pub fn with_after_sign_out(mut self, path: &str) -> Result<Self, ConfigError> {
        self.after_sign_out = check_path("after sign-out", path)?;
        Ok(self)
    }

    /// The app's page with the new-password form, where a password-reset
    /// landing is sent (the key stays server-side in an encrypted cookie).
    /// Default: `/reset-password`.
    pub fn with_reset_password_page(mut self, path: &str) -> Result<Self, ConfigError> {
        self.reset_password_page = check_path("reset-password page", path)?;
        Ok(self)
    }

    /// The app's page for a password-reset link that failed (expired,
    /// already used): the browser is sent there with `?notice=` and the
    /// reason (`replayed-grant`, `upstream-refused`, …), so the app can
    /// offer to send a new link. Default: none, the layer's own page.
    pub fn with_reset_failure_page(mut self, path: &str) -> Result<Self, ConfigError> {
        self.reset_failure_page = Some(check_path("reset failure page", path)?);
        Ok(self)
    }

    /// Where landings that only carry a notice go (e.g. an e-mail change
    /// confirmed: `?notice=email-changed`). Default: `/`.
    pub fn with_notice_page(mut self, path: &str) -> Result<Self, ConfigError> {
        self.notice_page = check_path("notice page", path)?;
        Ok(self)
    }

    /// Whether a sign-in that lands on the callback (a provider, a magic
    /// link, an address-confirmation link) adds a notice to the page it
    /// returns to, so the app can say what happened: `?notice=signed-in`
    /// (a provider), `signed-in-with-link` (a magic link) or
    /// `email-confirmed` (a sign-up confirmation link). The codes are this
    /// fixed list; show your own sentence for each (never text from the
    /// URL). Default: off (the `return_to` page is reached as it was).
    pub fn with_sign_in_notices(mut self, on: bool) -> Self {
        self.sign_in_notices = on;
        self
    }

    /// Whether a magic link or an address-confirmation link from an
    /// e-mail signs in only after a click on a "Continue" button
    /// (`{prefix}/continue`), rather than on the link's `GET`. Mail scanners
    /// (Outlook Safe Links and the like) open every link in a message: with
    /// the confirmation they neither spend the link nor receive a session,
    /// and a link an attacker mailed to a victim does not sign the victim in
    /// silently (SECURITY.md T-B6.4). Default: `true`.
    pub fn with_email_link_confirmation(mut self, confirm: bool) -> Self {
        self.confirm_email_links = confirm;
        self
    }

    /// What sign-out responses ask the browser to clear (`Clear-Site-Data`),
    /// both from `{prefix}/signout` and from
    /// [`Auth::sign_out`](crate::Auth::sign_out). Default: the cache and
    /// DOM storage; `&[]` sends no header. [`ClearSiteData::Cookies`] clears
    /// every cookie of the registrable domain, so it is not a default.
    pub fn with_clear_site_data(mut self, directives: &[ClearSiteData]) -> Self {
        self.clear_site_data = directives.to_vec();
        self
    }

    /// Draws the pages the layer answers itself (a refused landing, the
    /// e-mail link's "Continue" page, a cross-site refusal, an outage) with
    /// the app's own look; see [`crate::pages`]. Default:
    /// [`default_page`](crate::pages::default_page).
    pub fn with_page_renderer<F>(mut self, render: F) -> Self
    where
        F: Fn(&crate::pages::PageContext<'_>) -> String + Send + Sync + 'static,
    {
        self.page_renderer = crate::pages::PageRenderer::new(render);
        self
    }

    /// The session cookie's `Max-Age`, capped at 400 days. Default: 30 days.
    pub fn with_session_max_age(mut self, max_age: Duration) -> Result<Self, ConfigError> {
        if max_age.is_zero() || max_age > MAX_COOKIE_AGE {
            return Err(ConfigError::OutOfRange(
                "session max age must be between 1 s and 400 days",
            ));
        }
        self.session_max_age = max_age;
        Ok(self)
    }

    /// The largest session-cookie value, in bytes, before a sign-in fails
    /// with [`ErrorKind::SessionTooLarge`](crate::ErrorKind::SessionTooLarge)
    /// (SECURITY.md T-C4). A value over 4,000 bytes is split into chunks
    /// (`name__0`, `name__1`, …) of at most 4,000 bytes each, so that each
    /// cookie stays within the 4,096 bytes browsers keep (RFC 6265bis §5.6).
    /// Between 4,000 and 16,000 (four chunks). Default: 8,000 (two chunks:
    /// many servers refuse request headers over 8 KiB, nginx's default).
    pub fn with_session_cookie_ceiling(mut self, bytes: usize) -> Result<Self, ConfigError> {
        let range =
            crate::cookie::MAX_VALUE_LEN..=crate::cookie::MAX_CHUNKS * crate::cookie::MAX_VALUE_LEN;
        if !range.contains(&bytes) {
            return Err(ConfigError::OutOfRange(
                "session cookie ceiling must be between 4,000 and 16,000 bytes",
            ));
        }
        self.session_cookie_ceiling = bytes;
        Ok(self)
    }

    /// How long a resolved user is served from the cache without asking the
    /// upstream (jittered by up to 10 %). Default: 60 s.
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache.fresh_ttl = ttl;
        self
    }

    /// How long past its TTL a cached user is still served while the
    /// upstream fails (stale-if-error). Default: 5 min.
    pub fn with_stale_window(mut self, window: Duration) -> Self {
        self.cache.stale_window = window;
        self
    }

    /// How long a definitive "invalid token" is remembered. Default: 10 s.
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.cache.negative_ttl = ttl;
        self
    }

    /// How long a token is not retried upstream after a transient failure.
    /// Default: 2 s.
    pub fn with_failure_cooldown(mut self, cooldown: Duration) -> Self {
        self.cache.failure_cooldown = cooldown;
        self
    }

    /// The cache's memory bound in bytes (users weighed by their size).
    /// Default: 64 MiB.
    pub fn with_cache_max_bytes(mut self, bytes: u64) -> Self {
        self.cache.max_bytes = bytes;
        self
    }

    /// The most user lookups in flight upstream at once; more wait up to
    /// the queue timeout, then count as unavailable. Default: 64, 1 s.
    pub fn with_upstream_concurrency(
        mut self,
        max_in_flight: usize,
        queue_timeout: Duration,
    ) -> Self {
        self.cache.max_in_flight = max_in_flight.max(1);
        self.cache.queue_timeout = queue_timeout;
        self
    }

    /// Shares every revocation (a sign-out, a user signed out everywhere or
    /// of all other sessions) with the app's other instances over Redis,
    /// and applies theirs: see [`bus`](crate::bus) for the guarantees and
    /// the worst-case delays. Give each instance the same bus settings and
    /// the same [`with_key`](Self::with_key). The layer must be built
    /// inside a tokio runtime (it starts the bus's tasks).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn with_revocation_bus(mut self, bus: crate::bus::RedisBus) -> Self {
        self.revocation_bus = Some(bus);
        self
    }

    /// Where auth events go (sign-in, sign-out, invalidated sessions,
    /// rejected flows); see [`crate::events`]. Default: `tracing` only.
    pub fn with_events(mut self, events: AuthEvents) -> Self {
        self.events = events;
        self
    }

    /// The session cookie's name, with its prefix.
    pub fn session_cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{}", self.cookie_base)
        } else {
            self.cookie_base.clone()
        }
    }

    /// The public origin.
    pub fn public_origin(&self) -> &Url {
        &self.public_origin
    }

    /// Whether cookies are `Secure` (an https origin).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The route prefix (default `/auth`).
    pub fn route_prefix(&self) -> &str {
        &self.route_prefix
    }

    /// The absolute URL of the OAuth/landing callback route: give it to the
    /// upstream as the app's redirect URL.
    pub fn callback_url(&self) -> String {
        self.absolute(&format!("{}/callback", self.route_prefix))
    }

    /// The `return_to` validator for this origin.
    pub fn return_to(&self) -> ReturnTo {
        ReturnTo::new(self.public_origin.clone(), &self.route_prefix)
    }

    pub(crate) fn absolute(&self, path: &str) -> String {
        self.public_origin
            .join(path)
            .map_or_else(|_| self.public_origin.to_string(), String::from)
    }

    /// The `Clear-Site-Data` value of sign-out responses, if any.
    pub(crate) fn clear_site_data_header(&self) -> Option<http::HeaderValue> {
        if self.clear_site_data.is_empty() {
            return None;
        }
        let value: Vec<&str> = self.clear_site_data.iter().map(|d| d.directive()).collect();
        http::HeaderValue::from_str(&value.join(", ")).ok()
    }

    pub(crate) fn attributes(&self) -> CookieAttributes {
        CookieAttributes {
            secure: self.secure,
        }
    }

    pub(crate) fn build_keys(&self) -> Keys {
        let current = match &self.key {
            Some(key) => cookie::Key::from(key),
            None => {
                tracing::warn!(
                    "authgate: no key configured (AuthConfig::with_key); using a random per-process key: \
                     sign-ins in flight break on restart and across instances"
                );
                cookie::Key::generate()
            }
        };
        let previous = self
            .previous_keys
            .iter()
            .map(|k| cookie::Key::from(k))
            .collect();
        Keys::new(current, previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_validated() {
        let cases = [
            ("https://app.example", true),
            ("https://app.example:8443", true),
            ("http://127.0.0.1:3000", true), // allow-fixed-port: an origin string, nothing binds it
            ("http://localhost:3000", true), // allow-fixed-port: an origin string, nothing binds it
            ("http://[::1]:3000", true),
            ("http://app.example", false),
            ("https://app.example/path", false),
            ("https://user@app.example", false),
            ("ftp://app.example", false),
            ("not a url", false),
        ];
        for (origin, ok) in cases {
            assert_eq!(AuthConfig::new(origin).is_ok(), ok, "{origin}");
        }
        assert!(AuthConfig::new_allowing_plain_http("http://app.example").is_ok());
    }

    #[test]
    fn cookie_names_follow_the_scheme() {
        let secure = AuthConfig::new("https://app.example").unwrap();
        assert_eq!(secure.session_cookie_name(), "__Host-authgate");
        let dev = AuthConfig::new("http://127.0.0.1:3000").unwrap(); // allow-fixed-port: an origin string, nothing binds it
        assert_eq!(dev.session_cookie_name(), "authgate");
        assert!(secure.clone().with_cookie_name("__Host-x").is_err());
        assert!(secure.clone().with_cookie_name("a;b").is_err());
        assert!(secure.with_key([0u8; 10]).is_err());
    }

    #[test]
    fn paths_must_be_local() {
        let config = AuthConfig::new("https://app.example").unwrap();
        for bad in ["signin", "//evil", "/\\evil", "/a b", ""] {
            assert!(config.clone().with_sign_in_page(bad).is_err(), "{bad:?}");
        }
        assert_eq!(config.callback_url(), "https://app.example/auth/callback");
    }

    #[test]
    fn debug_redacts_the_key() {
        let config = AuthConfig::new("https://app.example")
            .unwrap()
            .with_key([42u8; 64])
            .unwrap();
        assert!(!format!("{config:?}").contains("42"));
    }
}
