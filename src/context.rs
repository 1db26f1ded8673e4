//! What the layer shares between requests ([`Shared`]) and what it puts in
//! each request's extensions ([`RequestAuth`]), plus the response hygiene
//! applied on the way out.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::AccessError;

use http::header::Entry;
use http::header::{CACHE_CONTROL, EXPIRES, HeaderName, PRAGMA, SET_COOKIE, VARY};
use http::{Extensions, HeaderMap, HeaderValue};

use std::time::{Duration, SystemTime};

use crate::config::AuthConfig;
use crate::cookie::{
    CookieAttributes, CookieFinder, CookieScan, Keys, MAX_VALUE_LEN, Presence, SessionCodec,
    WireValue,
};
use crate::error::Error;
use crate::events::{AuthEvent, FlowRejection};
use crate::redirect::ReturnTo;
use crate::resolve::{AuthState, CookieChange, Resolution, Resolver};
use crate::upstream::{Capabilities, Grant, Session, SignOutOutcome, SignOutScope, User};

/// The `Cache-Control` of any response that sets or clears a cookie
/// (SECURITY.md §4, the CVE-2025-48947 fix).
pub(crate) const NO_STORE_STRICT: &str = "private, no-cache, no-store, must-revalidate, max-age=0";
/// `Clear-Site-Data` (W3C Clear Site Data §3.1); the `http` crate has no
/// constant for it.
pub(crate) const CLEAR_SITE_DATA: HeaderName = HeaderName::from_static("clear-site-data");

/// The `Cache-Control` of a response whose request resolved a user.
pub(crate) const NO_STORE_PRIVATE: &str = "private, no-store";

/// Everything the layer's services share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: AuthConfig,
    pub(crate) resolver: Resolver,
    pub(crate) keys: Keys,
    /// What the upstream supports, read once.
    pub(crate) capabilities: Capabilities,
    /// The session cookie's codec (also held by the resolver, for
    /// rotations).
    pub(crate) codec: SessionCodec,
    /// The absolute callback URL given to the upstream.
    pub(crate) callback_url: url::Url,
    /// The flow cookie of [`Correlation::Single`](crate::upstream::Correlation::Single)
    /// upstreams; the others get one cookie per flow, `{flow_name}.{hash}`.
    pub(crate) flow_name: String,
    pub(crate) reset_name: String,
    /// The encrypted cookie holding an e-mail link's landing until the user
    /// confirms it.
    pub(crate) link_name: String,
    /// The encrypted cookie holding a session an e-mail link opened while
    /// another account was signed in, until the user says which to keep.
    pub(crate) pending_name: String,
    pub(crate) pending_finder: CookieFinder,
    pub(crate) return_to: ReturnTo,
    pub(crate) attributes: CookieAttributes,
    pub(crate) cookie_finder: CookieFinder,
    pub(crate) flow_finder: CookieFinder,
    pub(crate) reset_finder: CookieFinder,
    pub(crate) link_finder: CookieFinder,
    /// Cloned into requests that arrive with no extensions (see
    /// [`AuthSlot::insert`]).
    pub(crate) extensions: Extensions,
    /// The `Clear-Site-Data` of sign-out responses, if any.
    pub(crate) clear_site_data: Option<HeaderValue>,
}

impl Shared {
    pub(crate) fn new(
        config: AuthConfig,
        resolver: Resolver,
        keys: Keys,
        capabilities: Capabilities,
        codec: SessionCodec,
    ) -> Self {
        let callback_url = url::Url::parse(&config.callback_url())
            .unwrap_or_else(|_| config.public_origin.clone());
        let session_name = config.session_cookie_name();
        let flow_name = format!("{session_name}-flow");
        let reset_name = format!("{session_name}-reset");
        let link_name = format!("{session_name}-link");
        let pending_name = format!("{session_name}-pending");
        Self {
            cookie_finder: CookieFinder::new(&session_name),
            flow_finder: CookieFinder::new(&flow_name),
            reset_finder: CookieFinder::new(&reset_name),
            link_finder: CookieFinder::new(&link_name),
            pending_finder: CookieFinder::new(&pending_name),
            pending_name,
            link_name,
            extensions: extensions_template(),
            clear_site_data: config.clear_site_data_header(),
            flow_name,
            reset_name,
            return_to: config.return_to(),
            attributes: config.attributes(),
            config,
            resolver,
            keys,
            capabilities,
            codec,
            callback_url,
        }
    }

    /// A page of the layer, drawn by the app's renderer (or authgate's).
    pub(crate) fn render_page(&self, page: &crate::pages::PageContext<'_>) -> String {
        self.config.page_renderer.render(page)
    }

    /// The lines a resolution's cookie change writes.
    #[cold]
    pub(crate) fn codec_lines(&self, change: &CookieChange, had: Presence) -> Vec<String> {
        match change {
            CookieChange::Keep => Vec::new(),
            CookieChange::Clear => self.codec.removal_lines(had),
            CookieChange::Set(next) => {
                let max_age = next
                    .cookie_until
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                self.codec.set_lines(&next.wire, max_age, had)
            }
        }
    }

    /// The request's session: its cookie value (the cache key) and the
    /// session decoded from it, and which cookie forms it carried.
    pub(crate) fn current_session(
        &self,
        headers: &HeaderMap,
    ) -> (Option<CurrentSession>, Presence) {
        let scan = self.cookie_finder.scan(headers);
        let presence = scan.presence();
        let current = WireValue::of(&scan).and_then(|wire| {
            let session = self.codec.decode(wire.as_bytes())?;
            Some(CurrentSession {
                key: wire.as_bytes().into(),
                session,
            })
        });
        (current, presence)
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

    /// Turns a grant into the session cookie lines: primes the cache with
    /// the user, forgets the browser's previous session, reports the
    /// sign-in. A session over the cookie ceiling is an
    /// [`ErrorKind::SessionTooLarge`](crate::ErrorKind::SessionTooLarge)
    /// error, and nothing changes.
    pub(crate) fn sign_in(
        &self,
        previous: Option<&CurrentSession>,
        had: Presence,
        grant: Grant,
    ) -> Result<Vec<String>, Error> {
        let resolver = &self.resolver;
        let wire = self.codec.encode(&grant.session)?;
        if let Some(previous) = previous.filter(|p| *p.key != *wire.as_bytes()) {
            // The replaced session is ended here at once and upstream in
            // the background: it must not keep working elsewhere, and the
            // new sign-in must not wait for it (issue 10 point 4).
            resolver.revoke(&previous.key, previous.session.expires_at);
            self.end_in_background(previous.session.clone());
        }
        resolver.emit(AuthEvent::SignedIn {
            user_id: grant.user.as_ref().map(|u| u.id.clone()),
            method: grant.method.clone(),
            session: resolver.session_hash(wire.as_bytes()),
        });
        let lines = self
            .codec
            .set_lines(&wire, self.codec.max_age(&grant.session), had);
        if let Some(user) = grant.user {
            resolver.prime(
                wire.as_bytes(),
                user,
                grant.session.expires_at,
                grant.recheck_at,
                grant.session_id.as_deref(),
            );
        }
        Ok(lines)
    }

    /// Ends a session upstream without waiting (best effort: a failure is
    /// logged; the session is tombstoned here already).
    pub(crate) fn end_in_background(&self, session: Session) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let upstream = self.resolver.upstream().clone();
        let after = self.callback_url.clone();
        runtime.spawn(async move {
            if let Err(err) = upstream.sign_out(&session, SignOutScope::This, &after).await {
                tracing::info!(error = %err, "authgate: a replaced session could not be ended upstream");
            }
        });
    }

    /// Ends a session in `scope`: upstream first, then locally whatever the
    /// upstream said (tombstone, user-wide mark), and reports it. The
    /// caller has resolved the session (`resolution`) and clears the cookie
    /// (except for [`SignOutScope::Others`], where it sets the rotated
    /// session if there is one).
    ///
    /// A session the resolution rotated is signed out as its successor (the
    /// old one is spent), and both cookie values are tombstoned. A session
    /// that resolved to nobody is not sent upstream and leaves no
    /// tombstone: anyone can post any cookie here, and a definitive
    /// "invalid" is remembered already.
    pub(crate) async fn end_session(
        &self,
        current: &CurrentSession,
        resolution: &Resolution,
        scope: SignOutScope,
        after: &url::Url,
    ) -> Result<SignOutOutcome, Error> {
        let resolver = &self.resolver;
        if matches!(resolution.state, AuthState::Anonymous) {
            return Ok(SignOutOutcome::Done);
        }
        let user_id = resolution.state.user().map(|u| u.id.clone());
        let successor = match &resolution.cookie {
            CookieChange::Set(next) => self
                .codec
                .decode(next.wire.as_bytes())
                .map(|session| (next.wire.clone(), session)),
            _ => None,
        };
        let (key, session) = match &successor {
            Some((wire, session)) => (wire.as_bytes(), session),
            None => (&*current.key, &current.session),
        };
        let result = resolver.upstream().sign_out(session, scope, after).await;
        if let Err(err) = &result {
            tracing::warn!(error = %err, "authgate: upstream sign-out failed; signed out locally");
        }
        match (scope, &user_id) {
            (SignOutScope::Others, Some(id)) => resolver.revoke_user(id, Some(key)),
            (SignOutScope::All, Some(id)) => resolver.revoke_user(id, None),
            _ => {}
        }
        if scope != SignOutScope::Others {
            resolver.revoke(&current.key, current.session.expires_at);
            if let Some((wire, session)) = &successor {
                resolver.revoke(wire.as_bytes(), session.expires_at);
            }
        }
        resolver.emit(AuthEvent::SignedOut {
            user_id,
            scope,
            session: resolver.session_hash(key),
        });
        result
    }
}

/// A request's session cookie, read and decoded. `Debug` is redacted.
#[derive(Clone)]
pub(crate) struct CurrentSession {
    /// The cookie's value: the cache key.
    pub(crate) key: Box<[u8]>,
    pub(crate) session: Session,
}

impl std::fmt::Debug for CurrentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentSession")
            .field("key", &"<redacted>")
            .field("session", &self.session)
            .finish()
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
    /// A sign-out: send the configured `Clear-Site-Data`.
    pub(crate) clear_site_data: bool,
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
    /// Which session-cookie forms the request carried.
    presence: Presence,
    /// The fresh cached user the layer found (the warm path: no copy).
    prefetched: Option<Arc<User>>,
    /// The session, copied and decoded only when the cache could not answer
    /// (boxed: the warm path moves only a null pointer).
    session: Option<Box<CurrentSession>>,
    resolution: Option<Resolution>,
    changes: Changes,
}

/// The warm path's probe: the cookie value as the cache key, as it is;
/// only a miss copies and decodes it.
#[inline]
fn probe(
    shared: &Shared,
    wire: &[u8],
) -> (CookieState, Option<Arc<User>>, Option<Box<CurrentSession>>) {
    if let Some(user) = shared.resolver.fresh(wire) {
        return (CookieState::Present, Some(user), None);
    }
    match shared.codec.decode(wire) {
        Some(session) => (
            CookieState::Present,
            None,
            Some(Box::new(CurrentSession {
                key: wire.into(),
                session,
            })),
        ),
        None => (CookieState::Malformed, None, None),
    }
}

/// [`probe`] for a chunked cookie: the chunks joined on the stack first.
#[cold]
#[inline(never)]
fn probe_chunked(
    shared: &Shared,
    scan: &CookieScan<'_>,
) -> (CookieState, Option<Arc<User>>, Option<Box<CurrentSession>>) {
    match WireValue::of(scan) {
        Some(wire) => probe(shared, wire.as_bytes()),
        None => (CookieState::Malformed, None, None),
    }
}

thread_local! {
    /// Request contexts whose last request has finished, for reuse: the
    /// warm path then allocates nothing but its extension slot.
    static POOL: RefCell<Vec<Arc<RequestAuth>>> = const { RefCell::new(Vec::new()) };
}

const POOL_SIZE: usize = 64;

/// `POOL.with_borrow_mut(f)`, same panics, through `LocalKey::try_with`,
/// for `finish`. `try_with` is `#[inline]`, so rustc copies it into this
/// module's codegen unit and LLVM can inline it; `with`/`with_borrow_mut`
/// are not: their instances go to a codegen unit of their own, and whether
/// that one was merged with this module's depended on the sizes of
/// unrelated modules and on the crate's hash (its path). When it was not
/// (9d4ec7c, built in /work/main), `finish` called the pool out of line:
/// +21 instructions per request on the warm path. `prepare`'s call was
/// inlined in every build measured, and switching it too reshuffled the
/// codegen units (+12 elsewhere), so it keeps `with_borrow_mut`.
#[inline]
fn with_pool<R>(f: impl FnOnce(&mut Vec<Arc<RequestAuth>>) -> R) -> R {
    match POOL.try_with(|pool| f(&mut pool.borrow_mut())) {
        Ok(value) => value,
        Err(err) => pool_gone(err),
    }
}

/// The panic of `LocalKey::with` (the thread's locals are being destroyed).
#[cold]
#[inline(never)]
#[track_caller]
fn pool_gone(err: AccessError) -> ! {
    panic!("cannot access a Thread Local Storage value during or after destruction: {err:?}")
}

/// The per-request auth context in the request's extensions.
#[derive(Debug)]
pub(crate) struct RequestAuth {
    pub(crate) shared: Arc<Shared>,
    state: Mutex<RequestState>,
}

impl RequestAuth {
    /// Reads the session cookie and probes the cache (no upstream call).
    pub(crate) fn prepare(shared: &Arc<Shared>, headers: &HeaderMap) -> (Arc<Self>, CookieState) {
        let scan = shared.cookie_finder.scan(headers);
        let (cookie, prefetched, session, presence) = match scan {
            // Longer than one cookie we could have set: never valid.
            CookieScan::Present(value) if value.len() > MAX_VALUE_LEN => {
                (CookieState::Malformed, None, None, Presence::single())
            }
            CookieScan::Present(value) => {
                let (cookie, prefetched, session) = probe(shared, value);
                (cookie, prefetched, session, Presence::single())
            }
            CookieScan::Absent => (CookieState::Absent, None, None, Presence::default()),
            CookieScan::Ambiguous => (CookieState::Ambiguous, None, None, Presence::default()),
            CookieScan::Malformed(presence) => (CookieState::Malformed, None, None, presence),
            CookieScan::Chunked { presence, .. } => {
                let (cookie, prefetched, session) = probe_chunked(shared, &scan);
                (cookie, prefetched, session, presence)
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
                    state.presence = presence;
                    state.prefetched = prefetched;
                    state.session = session;
                }
                auth
            }
            None => Arc::new(Self {
                shared: shared.clone(),
                state: Mutex::new(RequestState {
                    cookie,
                    presence,
                    prefetched,
                    session,
                    ..RequestState::default()
                }),
            }),
        };
        (auth, cookie)
    }

    /// Which session-cookie forms the request carried.
    pub(crate) fn presence(&self) -> Presence {
        self.lock().presence
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RequestState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves the user once per request (a second call returns the first
    /// answer).
    pub(crate) async fn resolve(&self) -> Resolution {
        let (session, cookie) = {
            let mut state = self.lock();
            if let Some(resolution) = &state.resolution {
                return resolution.clone();
            }
            if let Some(user) = state.prefetched.take() {
                let resolution = Resolution::signed_in(user, false);
                state.resolution = Some(resolution.clone());
                return resolution;
            }
            (state.session.clone(), state.cookie)
        };
        let resolution = match (session, cookie) {
            // Boxed: the cold path's future is large, and keeping it inline
            // would make every extractor future (and its moves) larger.
            (Some(current), _) => {
                Box::pin(self.shared.resolver.resolve(&current.key, &current.session)).await
            }
            (None, CookieState::Malformed) => Resolution {
                state: AuthState::Anonymous,
                cookie: CookieChange::Clear,
            },
            (None, _) => Resolution {
                state: AuthState::Anonymous,
                cookie: CookieChange::Keep,
            },
        };
        self.lock().resolution = Some(resolution.clone());
        resolution
    }

    /// The signed-in user, if this request has resolved one already (no
    /// lookup: for pages drawn after an extractor ran).
    pub(crate) fn resolved_user(&self) -> Option<Arc<User>> {
        self.lock()
            .resolution
            .as_ref()
            .and_then(|resolution| resolution.state.user().cloned())
    }

    /// True when the request's cookie named a session that has ended (the
    /// upstream said it is invalid, or it was revoked here): the cookie is
    /// being removed. A malformed cookie is not an ended session.
    pub(crate) async fn session_ended(&self) -> bool {
        let resolution = self.resolve().await;
        matches!(resolution.cookie, CookieChange::Clear) && self.lock().session.is_some()
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
            let resolution = state.resolution.take();
            // A page rendered for a cookie-bearing request may be
            // user-specific; one rendered without still depends on cookies.
            let asked = match (resolution.is_some(), state.cookie) {
                (false, _) => Asked::No,
                (true, CookieState::Absent) => Asked::WithoutCookie,
                (true, _) => Asked::WithCookie,
            };
            if let Some(Resolution { state: _, cookie }) = resolution
                && !matches!(cookie, CookieChange::Keep)
                && !state.changes.session_written
            {
                let lines = auth.shared.codec_lines(&cookie, state.presence);
                state.changes.set_cookies.extend(lines);
            }
            apply_hygiene(headers, &state.changes.set_cookies, asked);
            if state.changes.clear_site_data {
                // Reset here, not with the rest: the warm path never sets it.
                state.changes.clear_site_data = false;
                if let Some(value) = &auth.shared.clear_site_data {
                    headers.insert(CLEAR_SITE_DATA, value.clone());
                }
            }
            if !reusable {
                return;
            }
            // Field by field: the `Set-Cookie` vector keeps its buffer.
            state.cookie = CookieState::Absent;
            state.presence = Presence::default();
            state.prefetched = None;
            state.session = None;
            state.changes.set_cookies.clear();
            state.changes.session_written = false;
        }
        with_pool(|pool| {
            if pool.len() >= POOL_SIZE {
                // Full, e.g. of contexts of layers that are gone (tests):
                // the oldest goes, so no old layer is kept alive for long.
                pool.remove(0);
            }
            pool.push(auth);
        });
    }
}

/// Whether the handler asked who is signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    No,
    /// It asked, and the request had no session cookie: the page is the
    /// anonymous variant, and a shared cache must not serve it to a
    /// browser that has one.
    WithoutCookie,
    /// It asked, with a session cookie: the page may be the user's own.
    WithCookie,
}

/// Adds `Set-Cookie` lines and the cache headers of SECURITY.md §4:
/// cookie writes get the strict `no-store` set, user-resolved responses
/// `private, no-store`, overriding whatever the handler set (`public`,
/// `s-maxage`); those and every response whose handler asked for the user
/// get `Vary: Cookie` appended.
pub(crate) fn apply_hygiene(headers: &mut HeaderMap, set_cookies: &[String], asked: Asked) {
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
    } else {
        match asked {
            Asked::WithCookie => {
                headers.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE_PRIVATE));
            }
            Asked::WithoutCookie => {}
            Asked::No => return,
        }
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
        apply_hygiene(&mut headers, &["a=b".to_owned()], Asked::No);
        assert_eq!(headers[CACHE_CONTROL], NO_STORE_STRICT);
        let vary: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Cookie"]);
        assert_eq!(headers[PRAGMA], "no-cache");

        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, s-maxage=60"),
        );
        apply_hygiene(&mut headers, &[], Asked::WithCookie);
        assert_eq!(headers[CACHE_CONTROL], NO_STORE_PRIVATE);
        assert_eq!(headers[VARY], "Cookie");

        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("public"));
        apply_hygiene(&mut headers, &[], Asked::No);
        assert_eq!(headers[CACHE_CONTROL], "public");
        assert!(headers.get(VARY).is_none());
    }
}
