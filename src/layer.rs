//! [`AuthLayer`], its service [`AuthService`] and its [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::AuthConfig;
use crate::context::{AuthSlot, CookieState, RequestAuth, Shared};
use crate::cookie::SessionCodec;
use crate::events::{AuthEvent, FlowRejection};
use crate::resolve::{Resolver, ResolverParts};
use crate::routes;
use crate::upstream::Upstream;

/// The tower layer that puts authgate in front of an app.
///
/// On every request it reads the session cookie (no upstream call), puts
/// the per-request auth context in the extensions for the extractors,
/// answers its own routes under the prefix (`/auth/signin/{provider}`,
/// `/auth/callback`, `/auth/signout`), and on the way out applies cookie
/// changes and `Cache-Control`/`Vary` hygiene. See the
/// [crate docs](crate) for an example.
///
/// It runs on Tokio with the time driver enabled (`#[tokio::main]` has it;
/// a hand-built runtime needs `enable_all()` or `enable_time()`): upstream
/// lookups have deadlines. Without it every lookup fails, and requests that
/// need one get a 503.
///
/// Wrap the whole app (`AuthLayer::new(..).layer(router)`) rather than
/// attaching it with `Router::layer`: axum boxes each layered route, which
/// costs about 1,400 instructions per request more (BENCHMARKS.md), and
/// the layer then also sees requests that no route matches. Finish the
/// router with `with_state(())` before wrapping it: `into_make_service`
/// does that for a bare `Router`, but not through a layer, and axum then
/// turns each handler into a service on every request (about 260
/// instructions and an allocation).
#[derive(Clone)]
#[must_use]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Builds the layer: the resolver, its cache and the cookie keys.
    pub fn new(config: AuthConfig, upstream: impl Upstream) -> Self {
        Self::from_arc(config, Arc::new(upstream))
    }

    /// Like [`new`](Self::new), with an upstream that is already shared.
    pub fn from_arc(config: AuthConfig, upstream: Arc<dyn Upstream>) -> Self {
        if !config.secure {
            tracing::warn!(
                origin = %config.public_origin,
                "authgate: development mode: plain-http origin, cookies without Secure and without the __Host- prefix"
            );
        }
        let keys = config.build_keys();
        let capabilities = upstream.capabilities();
        let codec = SessionCodec::new(
            capabilities.storage,
            config.session_cookie_name(),
            keys.clone(),
            config.session_cookie_ceiling,
            config.attributes(),
            config.session_max_age,
        );
        #[cfg(feature = "redis")]
        let (fanout, bus) = match &config.revocation_bus {
            Some(bus) => {
                let (fanout, starter) = bus.start(&keys);
                (Some(fanout), Some(starter))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "redis"))]
        let fanout = None;
        let resolver = Resolver::new(
            upstream,
            ResolverParts {
                fanout,
                hash_key: keys.hash_key().to_vec(),
                settings: config.cache.clone(),
                events: config.events.clone(),
                codec: codec.clone(),
                revocation: capabilities.revocation,
                session_max_age: config.session_max_age,
            },
        );
        #[cfg(feature = "redis")]
        if let Some(bus) = bus {
            bus.spawn(&resolver);
        }
        Self {
            shared: Arc::new(Shared::new(config, resolver, keys, capabilities, codec)),
        }
    }

    /// Wraps a service (the app) in the layer. The same as
    /// [`Layer::layer`], without importing the trait.
    pub fn layer<S>(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }

    /// A key for the app's own [`PrivateCookieJar`] and [`SignedCookieJar`]
    /// (flash messages, preferences), derived from the layer's key
    /// ([`AuthConfig::with_key`]) with HMAC-SHA256 under a fixed label: the
    /// app keeps one secret, and a cookie of one never opens as the other.
    ///
    /// Rotation: the jars take one key, so when the app key changes, jar
    /// cookies sealed under the previous one no longer open (fine for
    /// short-lived cookies such as flash messages; keep long-lived data
    /// elsewhere). Without a configured key it derives from the layer's
    /// random per-process key, like the layer's own cookies.
    ///
    #[cfg_attr(feature = "test-util", doc = "```")]
    #[cfg_attr(not(feature = "test-util"), doc = "```ignore")]
    /// # use authgate::{AuthConfig, AuthLayer, test::MemoryUpstream};
    /// use axum_extra::extract::cookie::Key;
    /// # let config = AuthConfig::new("https://app.example")?.with_key([7u8; 64])?;
    /// let layer = AuthLayer::new(config, MemoryUpstream::default());
    /// let key: Key = layer.cookie_jar_key();
    /// // Put `key` in the app's state with `impl FromRef<AppState> for Key`.
    /// # Ok::<(), authgate::ConfigError>(())
    /// ```
    ///
    /// [`PrivateCookieJar`]: axum_extra::extract::cookie::PrivateCookieJar
    /// [`SignedCookieJar`]: axum_extra::extract::cookie::SignedCookieJar
    #[cfg(feature = "axum-extra")]
    pub fn cookie_jar_key(&self) -> axum_extra::extract::cookie::Key {
        self.shared.keys.derive("authgate: axum-extra cookie jars")
    }

    /// The resolver (cache and upstream lookups) behind this layer.
    pub fn resolver(&self) -> &Resolver {
        &self.shared.resolver
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.shared.config
    }

    /// The session cookie's codec.
    #[cfg(feature = "test-util")]
    pub(crate) fn codec(&self) -> &SessionCodec {
        &self.shared.codec
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthLayer::layer(self, inner)
    }
}

/// The service made by [`AuthLayer`]. See the [crate docs](crate).
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> AuthService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    // Read only by the back-channel logout route (a size-limited form);
    // every axum and hyper body qualifies.
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if let Some(route) = routes::match_route(&self.shared, req.uri().path()) {
            let (parts, body) = req.into_parts();
            let shared = self.shared.clone();
            let future: Pin<Box<dyn Future<Output = Response<Bytes>> + Send>> =
                if route == routes::Route::BackChannelLogout {
                    Box::pin(routes::back_channel_logout(shared, parts, body))
                } else {
                    Box::pin(routes::handle(shared, route, parts))
                };
            return ResponseFuture {
                kind: Kind::Route { future },
            };
        }
        let (auth, cookie) = RequestAuth::prepare(&self.shared, req.headers());
        if cookie == CookieState::Ambiguous {
            self.shared.resolver.emit(AuthEvent::FlowRejected {
                reason: FlowRejection::DuplicateCookies,
                session: None,
            });
        }
        AuthSlot::insert(req.extensions_mut(), &self.shared, auth.clone());
        ResponseFuture {
            kind: Kind::Inner {
                future: self.inner.call(req),
                auth: Some(auth),
            },
        }
    }
}

pin_project! {
    /// The response future of [`AuthService`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner {
            #[pin]
            future: F,
            auth: Option<Arc<RequestAuth>>,
        },
        Route {
            future: Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>,
        },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, auth } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(auth) = auth.take() {
                    RequestAuth::finish(auth, response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Route { future } => {
                let response = ready!(future.as_mut().poll(cx));
                Poll::Ready(Ok(response.map(B::from)))
            }
        }
    }
}
