#![doc = include_str!("docs.md")]
// The crate docs link to feature-gated modules; without the feature, each
// link goes to the feature flags table instead of breaking. The empty line
// ends docs.md's last paragraph, so the link definitions below are read as
// such.
#![doc = ""]
#![cfg_attr(feature = "altogic", doc = "[gated-altogic]: crate::altogic")]
#![cfg_attr(not(feature = "altogic"), doc = "[gated-altogic]: #feature-flags")]
#![cfg_attr(feature = "webcom", doc = "[gated-webcom]: crate::webcom")]
#![cfg_attr(not(feature = "webcom"), doc = "[gated-webcom]: #feature-flags")]
#![cfg_attr(feature = "oidc", doc = "[gated-oidc]: crate::oidc")]
#![cfg_attr(not(feature = "oidc"), doc = "[gated-oidc]: #feature-flags")]
#![cfg_attr(feature = "slashid", doc = "[gated-slashid]: crate::slashid")]
#![cfg_attr(not(feature = "slashid"), doc = "[gated-slashid]: #feature-flags")]
#![cfg_attr(feature = "dev-upstream", doc = "[gated-dev]: crate::dev")]
#![cfg_attr(not(feature = "dev-upstream"), doc = "[gated-dev]: #feature-flags")]
#![cfg_attr(feature = "test-util", doc = "[gated-test]: mod@crate::test")]
#![cfg_attr(not(feature = "test-util"), doc = "[gated-test]: #feature-flags")]
#![cfg_attr(feature = "test-util", doc = "[gated-test-kit]: crate::test::TestKit")]
#![cfg_attr(not(feature = "test-util"), doc = "[gated-test-kit]: #feature-flags")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "altogic")]
#[cfg_attr(docsrs, doc(cfg(feature = "altogic")))]
pub mod altogic;
mod cache;
mod config;
mod context;
mod cookie;
mod error;
pub mod events;
mod extract;
mod guard;
mod layer;
#[cfg(feature = "oidc")]
#[cfg_attr(docsrs, doc(cfg(feature = "oidc")))]
pub mod oidc;
pub mod pages;
pub mod redirect;
pub mod rejection;
mod resolve;
mod routes;
#[cfg(feature = "slashid")]
#[cfg_attr(docsrs, doc(cfg(feature = "slashid")))]
pub mod slashid;
pub mod upstream;
#[cfg(feature = "webcom")]
#[cfg_attr(docsrs, doc(cfg(feature = "webcom")))]
pub mod webcom;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod bus;

#[cfg(feature = "dev-upstream")]
#[cfg_attr(docsrs, doc(cfg(feature = "dev-upstream")))]
pub mod dev;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[path = "test_kit.rs"]
pub mod test;

pub use config::{AuthConfig, ClearSiteData};
pub use error::{ConfigError, Error, ErrorKind, UpstreamErrorItem};
pub use extract::{Auth, CurrentUser, SameOrigin, is_same_origin};
pub use guard::{RequireGroup, RequireGroupService};
pub use layer::{AuthLayer, AuthService, ResponseFuture};
pub use resolve::{AuthState, Resolver};
pub use upstream::{Grant, SessionToken, SignOutScope, Upstream, User};

/// The README's code blocks, compiled as doc tests (the quick start and the
/// test-kit snippet must build as written).
#[cfg(all(doctest, feature = "altogic", feature = "test-util"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
