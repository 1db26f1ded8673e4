#![doc = include_str!("docs.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod altogic;
mod cache;
mod config;
mod context;
mod cookie;
mod error;
pub mod events;
mod extract;
mod layer;
pub mod redirect;
pub mod rejection;
mod resolve;
mod routes;
pub mod upstream;

#[cfg(feature = "dev-upstream")]
#[cfg_attr(docsrs, doc(cfg(feature = "dev-upstream")))]
pub mod dev;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[path = "test_kit.rs"]
pub mod test;

pub use config::AuthConfig;
pub use error::{ConfigError, Error, ErrorKind, UpstreamErrorItem};
pub use extract::{Auth, CurrentUser, SameOrigin, is_same_origin};
pub use layer::{AuthLayer, AuthService, ResponseFuture};
pub use resolve::{AuthState, Resolver};
pub use upstream::{Grant, SessionToken, SignOutScope, Upstream, User};
