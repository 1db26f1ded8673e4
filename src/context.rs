//! What the layer shares between requests ([`Shared`]) and what it puts in
//! each request's extensions ([`RequestAuth`]), plus the response hygiene
//! applied on the way out.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::Entry;
use http::header::{CACHE_CONTROL, EXPIRES, PRAGMA, SET_COOKIE, VARY};
use http::{Extensions, HeaderMap, HeaderValue};

use crate::config::AuthConfig;
use crate::cookie::{CookieAttributes, CookieFinder, CookieScan, Keys, decode_token, encode_token};
use crate::events::{AuthEvent, FlowRejection};
use crate::redirect::ReturnTo;
use crate::resolve::{AuthState, Resolution, Resolver};
use crate::upstream::{Grant, SessionToken, User};

/// The `Cache-Control` of any response that sets or clears a cookie
/// (SECURITY.md §4, the CVE-2025-48947 fix).
pub(crate) const NO_STORE_STRICT: &str = "private, no-cache, no-store, must-revalidate, max-age=0";
/// The `Cache-Control` of a response whose request resolved a user.
pub(crate) const NO_STORE_PRIVATE: &str = "private, no-store";

/// Everything the layer's services share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: AuthConfig,
    pub(crate) resolver: Resolver,
    pub(crate) keys: Keys,
    pub(crate) session_name: String,
    pub(crate) flow_name: String,
    pub(crate) reset_name: String,
    /// The encrypted cookie holding an e-mail link's landing until the user
    /// confirms it.
    pub(crate) link_name: String,
    pub(crate) return_to: ReturnTo,
    pub(crate) attributes: CookieAttributes,
    pub(crate) cookie_finder: CookieFinder,
    pub(crate) flow_finder: CookieFinder,
    pub(crate) reset_finder: CookieFinder,
    pub(crate) link_finder: CookieFinder,
    /// Cloned into requests that arrive with no extensions (see
    /// [`AuthSlot::insert`]).
    pub(crate) extensions: Extensions,
}

impl Shared {
    pub(crate) fn new(config: AuthConfig, resolver: Resolver, keys: Keys) -> Self {
        let session_name = config.session_cookie_name();
        let flow_name = format!("{session_name}-flow");
        let reset_name = format!("{session_name}-reset");
        let link_name = format!("{session_name}-link");
        Self {
            cookie_finder: CookieFinder::new(&session_name),
            flow_finder: CookieFinder::new(&flow_name),
            reset_finder: CookieFinder::new(&reset_name),
            link_finder: CookieFinder::new(&link_name),
            link_name,
            extensions: extensions_template(),
            flow_name,
            reset_name,
            session_name,
            return_to: config.return_to(),
            attributes: config.attributes(),
            config,
            resolver,
            keys,
        }
    }

    /// A validated `return_to`, or the fallback; a refused input is
    /// reported as an open-redirect attempt.
    pub(crate) fn return_to_or(&self, input: Option<&str>, fallback: &str) -> String {
        if let Some(input) = input.filter(|i| !i.is_empty()) {
            match self.return_to.validate(input) {
                Some(url) => return url,
                None => self.resolver.emit(AuthEvent::FlowRejected {
                    reason: FlowRejection::OpenRedirect,
                    session: None,
                }),
            }
        }
        self.return_to.validate_or(None, fallback)
    }

    /// Turns a grant into the session cookie line: primes the cache with the
    /// user, forgets the browser's previous session, reports the sign-in.
    pub(crate) fn sign_in(&self, previous: Option<&SessionToken>, grant: Grant) -> String {
        let resolver = &self.resolver;
        if let Some(previous) = previous.filter(|p| **p != grant.token) {
            resolver.revoke(previous);
        }
        resolver.emit(AuthEvent::SignedIn {
            user_id: grant.user.as_ref().map(|u| u.id.clone()),
            method: grant.method.clone(),
            session: resolver.session_hash(&grant.token),
        });
        let line = self.session_cookie(&grant);
        if let Some(user) = grant.user {
            resolver.prime(&grant.token, user);
        }
        line
    }

    /// The `Set-Cookie` line that stores a session token.
    pub(crate) fn session_cookie(&self, grant: &Grant) -> String {
        let mut max_age = self.config.session_max_age;
        if let Some(remaining) = grant
            .expires_at
            .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
        {
            max_age = max_age.min(remaining);
        }
        self.attributes
            .build(&self.session_name, encode_token(&grant.token), max_age)
    }
}

/// What the layer puts in a request's extensions: the request's context.
#[derive(Debug, Clone)]
pub(crate) struct AuthSlot(pub(crate) Option<Arc<RequestAuth>>);

impl AuthSlot {
    /// The context of a request that went through the layer.
    pub(crate) fn of(extensions: &Extensions) -> Option<&Arc<RequestAuth>> {
        extensions.get::<AuthSlot>()?.0.as_ref()
    }

    /// Puts `auth` in the request's extensions. A request arriving with
    /// none (hyper adds none) gets a clone of the layer's template, whose
    /// map already holds an empty slot and has room for seven entries:
    /// axum's router adds three (`OriginalUri`, `MatchedPath`, URL
    /// parameters), which would regrow a map made for a first insert
    /// (callgrind: the regrowth cost more than the insert itself).
    pub(crate) fn insert(extensions: &mut Extensions, shared: &Shared, auth: Arc<RequestAuth>) {
        if extensions.is_empty() {
            let mut fresh = shared.extensions.clone();
            if let Some(slot) = fresh.get_mut::<AuthSlot>() {
                slot.0 = Some(auth);
                *extensions = fresh;
                return;
            }
        }
        extensions.insert(AuthSlot(Some(auth)));
    }
}

/// Extensions holding an empty [`AuthSlot`] in a map with eight buckets.
fn extensions_template() -> Extensions {
    #[derive(Clone)]
    struct Room<const N: usize>;
    let mut template = Extensions::new();
    template.insert(AuthSlot(None));
    // A fourth entry grows the map to eight buckets; removing the fillers
    // keeps the buckets, and a clone keeps them too.
    template.insert(Room::<0>);
    template.insert(Room::<1>);
    template.insert(Room::<2>);
    template.remove::<Room<0>>();
    template.remove::<Room<1>>();
    template.remove::<Room<2>>();
    template
}

/// A cookie change to apply to the response.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// `Set-Cookie` lines to add.
    pub(crate) set_cookies: Vec<String>,
    /// The session cookie is being replaced or removed: the resolution's own
    /// removal must not be added.
    pub(crate) session_written: bool,
}

/// What the request's `Cookie` headers said about the session cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum CookieState {
    #[default]
    Absent,
    Present,
    Malformed,
    Ambiguous,
}

#[derive(Debug, Default)]
struct RequestState {
    cookie: CookieState,
    /// The fresh cached user the layer found (the warm path: no token copy).
    prefetched: Option<Arc<User>>,
    /// The token, copied only when the cache could not answer.
    token: Option<SessionToken>,
    resolution: Option<Resolution>,
    changes: Changes,
}

thread_local! {
    /// Request contexts whose last request has finished, for reuse: the
    /// warm path then allocates nothing but its extension slot.
    static POOL: RefCell<Vec<Arc<RequestAuth>>> = const { RefCell::new(Vec::new()) };
}

const POOL_SIZE: usize = 64;

/// The per-request auth context in the request's extensions.
#[derive(Debug)]
pub(crate) struct RequestAuth {
    pub(crate) shared: Arc<Shared>,
    state: Mutex<RequestState>,
}

impl RequestAuth {
    /// Reads the session cookie and probes the cache (no upstream call).
    pub(crate) fn prepare(shared: &Arc<Shared>, headers: &HeaderMap) -> (Arc<Self>, CookieState) {
        let mut prefetched = None;
        let mut token = None;
        let cookie = match shared.cookie_finder.scan(headers) {
            CookieScan::Absent => CookieState::Absent,
            CookieScan::Ambiguous => CookieState::Ambiguous,
            CookieScan::Present(value) => {
                // An exact match with a cached token needs no decoding or
                // alphabet check; only a miss decodes and validates.
                prefetched = shared.resolver.fresh(value);
                if prefetched.is_none() {
                    token = decode_token(value);
                }
                if prefetched.is_some() || token.is_some() {
                    CookieState::Present
                } else {
                    CookieState::Malformed
                }
            }
        };
        let pooled = POOL.with_borrow_mut(|pool| {
            // Usually one layer per thread: its context is on top.
            if pool.last().is_some_and(|a| Arc::ptr_eq(&a.shared, shared)) {
                return pool.pop();
            }
            let index = pool.iter().position(|a| Arc::ptr_eq(&a.shared, shared))?;
            Some(pool.swap_remove(index))
        });
        let auth = match pooled {
            Some(auth) => {
                {
                    let mut state = auth.lock();
                    state.cookie = cookie;
                    state.prefetched = prefetched;
                    state.token = token;
                }
                auth
            }
            None => Arc::new(Self {
                shared: shared.clone(),
                state: Mutex::new(RequestState {
                    cookie,
                    prefetched,
                    token,
                    ..RequestState::default()
                }),
            }),
        };
        (auth, cookie)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RequestState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves the user once per request (a second call returns the first
    /// answer).
    pub(crate) async fn resolve(&self) -> Resolution {
        let (token, cookie) = {
            let mut state = self.lock();
            if let Some(resolution) = &state.resolution {
                return resolution.clone();
            }
            if let Some(user) = state.prefetched.take() {
                let resolution = Resolution::signed_in(user, false);
                state.resolution = Some(resolution.clone());
                return resolution;
            }
            (state.token.clone(), state.cookie)
        };
        let resolution = match (token, cookie) {
            // Boxed: the cold path's future is large, and keeping it inline
            // would make every extractor future (and its moves) larger.
            (Some(token), _) => Box::pin(self.shared.resolver.resolve(&token)).await,
            (None, CookieState::Malformed) => Resolution {
                state: AuthState::Anonymous,
                clear_cookie: true,
            },
            (None, _) => Resolution {
                state: AuthState::Anonymous,
                clear_cookie: false,
            },
        };
        self.lock().resolution = Some(resolution.clone());
        resolution
    }

    pub(crate) fn with_changes<R>(&self, f: impl FnOnce(&mut Changes) -> R) -> R {
        f(&mut self.lock().changes)
    }

    /// Applies the cookie changes and cache hygiene to the response
    /// headers, then returns the context to this thread's pool when
    /// nothing else holds it (one lock for both).
    pub(crate) fn finish(auth: Arc<Self>, headers: &mut HeaderMap) {
        // Nobody else holds it, so nobody can clone it meanwhile.
        let reusable = Arc::strong_count(&auth) == 1;
        {
            let mut state = auth.lock();
            let clear = state.resolution.as_ref().is_some_and(|r| r.clear_cookie);
            if clear && !state.changes.session_written {
                let removal = auth.shared.attributes.removal(&auth.shared.session_name);
                state.changes.set_cookies.push(removal);
            }
            // A page rendered for a cookie-bearing request may be user-specific.
            let resolved = state.resolution.is_some() && state.cookie != CookieState::Absent;
            apply_hygiene(headers, &state.changes.set_cookies, resolved);
            if !reusable {
                return;
            }
            // Field by field: the `Set-Cookie` vector keeps its buffer.
            state.cookie = CookieState::Absent;
            state.prefetched = None;
            state.token = None;
            state.resolution = None;
            state.changes.set_cookies.clear();
            state.changes.session_written = false;
        }
        POOL.with_borrow_mut(|pool| {
            if pool.len() >= POOL_SIZE {
                // Full, e.g. of contexts of layers that are gone (tests):
                // the oldest goes, so no old layer is kept alive for long.
                pool.remove(0);
            }
            pool.push(auth);
        });
    }
}

/// Adds `Set-Cookie` lines and the cache headers of SECURITY.md §4:
/// cookie writes get the strict `no-store` set, user-resolved responses
/// `private, no-store`; both get `Vary: Cookie` appended, overriding
/// whatever the handler set (`public`, `s-maxage`).
pub(crate) fn apply_hygiene(headers: &mut HeaderMap, set_cookies: &[String], resolved: bool) {
    for line in set_cookies {
        match HeaderValue::from_str(line) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.append(SET_COOKIE, value);
            }
            Err(_) => tracing::error!("authgate: a Set-Cookie line could not be encoded; dropped"),
        }
    }
    if !set_cookies.is_empty() {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE_STRICT));
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        headers.insert(EXPIRES, HeaderValue::from_static("0"));
    } else if resolved {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE_PRIVATE));
    } else {
        return;
    }
    match headers.entry(VARY) {
        Entry::Vacant(vary) => {
            vary.insert(HeaderValue::from_static("Cookie"));
        }
        Entry::Occupied(mut vary) => {
            let varies_on_cookie = vary.iter().any(|value| {
                value.to_str().is_ok_and(|v| {
                    v.split(',').any(|token| {
                        let token = token.trim();
                        token == "*" || token.eq_ignore_ascii_case("cookie")
                    })
                })
            });
            if !varies_on_cookie {
                vary.append(HeaderValue::from_static("Cookie"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hygiene_overrides_public_and_appends_vary() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        );
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        apply_hygiene(&mut headers, &["a=b".to_owned()], false);
        assert_eq!(headers[CACHE_CONTROL], NO_STORE_STRICT);
        let vary: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Cookie"]);
        assert_eq!(headers[PRAGMA], "no-cache");

        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, s-maxage=60"),
        );
        apply_hygiene(&mut headers, &[], true);
        assert_eq!(headers[CACHE_CONTROL], NO_STORE_PRIVATE);
        assert_eq!(headers[VARY], "Cookie");

        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("public"));
        apply_hygiene(&mut headers, &[], false);
        assert_eq!(headers[CACHE_CONTROL], "public");
        assert!(headers.get(VARY).is_none());
    }
}
