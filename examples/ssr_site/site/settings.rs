//! The site's settings, read from the environment once at start-up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The default listen address.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:3000";

/// The shortest `AUTHGATE_KEY` accepted, in bytes (what
/// `AuthConfig::with_key` requires).
pub(crate) const MIN_KEY_LEN: usize = 64;

/// Which auth service the site talks to.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum UpstreamSetting {
    /// The embedded dev upstream, started in-process.
    Dev,
    /// An Altogic(-compatible) environment.
    Altogic { url: String, client_key: String },
    /// The embedded Webcom dev server (`AUTHGATE_UPSTREAM=webcom`).
    WebcomDev,
    /// A Webcom(-compatible) server (`WEBCOM_URL`, `WEBCOM_APP_ID`).
    Webcom { url: String, app_id: String },
    /// The embedded SlashID dev server (`AUTHGATE_UPSTREAM=slashid`).
    SlashIdDev,
    /// A SlashID organization (`SLASHID_URL`, `SLASHID_ORG_ID`, and
    /// optionally `SLASHID_API_KEY` and `SLASHID_CLIENT_ID` for hosted
    /// login).
    SlashId {
        url: String,
        org_id: String,
        api_key: Option<String>,
        client_id: Option<String>,
    },
    /// Any OpenID Provider (`AUTHGATE_UPSTREAM=oidc`: `OIDC_ISSUER`,
    /// `OIDC_CLIENT_ID`, and `OIDC_CLIENT_SECRET` unless the client is
    /// public; `OIDC_SCOPES` and `OIDC_GROUPS_CLAIM` optionally).
    Oidc {
        issuer: String,
        client_id: String,
        client_secret: Option<String>,
        scopes: Option<String>,
        groups_claim: Option<String>,
    },
}

impl fmt::Debug for UpstreamSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dev => f.write_str("Dev"),
            Self::WebcomDev => f.write_str("WebcomDev"),
            Self::SlashIdDev => f.write_str("SlashIdDev"),
            Self::SlashId {
                url,
                org_id,
                api_key,
                client_id,
            } => f
                .debug_struct("SlashId")
                .field("url", url)
                .field("org_id", org_id)
                .field("api_key", &api_key.as_ref().map(|_| "<redacted>"))
                .field("client_id", client_id)
                .finish(),
            Self::Oidc {
                issuer,
                client_id,
                client_secret,
                scopes,
                groups_claim,
            } => f
                .debug_struct("Oidc")
                .field("issuer", issuer)
                .field("client_id", client_id)
                .field(
                    "client_secret",
                    &client_secret.as_ref().map(|_| "<redacted>"),
                )
                .field("scopes", scopes)
                .field("groups_claim", groups_claim)
                .finish(),
            Self::Webcom { url, app_id } => f
                .debug_struct("Webcom")
                .field("url", url)
                .field("app_id", app_id)
                .finish(),
            Self::Altogic { url, .. } => f
                .debug_struct("Altogic")
                .field("url", url)
                .field("client_key", &"<redacted>")
                .finish(),
        }
    }
}

/// Everything the environment configures.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `AUTHGATE_ADDR`.
    pub(crate) addr: SocketAddr,
    /// `AUTHGATE_PUBLIC_URL`, if set.
    pub(crate) public_url: Option<String>,
    /// `ALTOGIC_URL` + `ALTOGIC_CLIENT_KEY`, or the dev upstream.
    pub(crate) upstream: UpstreamSetting,
    /// `AUTHGATE_KEY`, if set (its bytes are the key).
    pub(crate) key: Option<Vec<u8>>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field("public_url", &self.public_url)
            .field("upstream", &self.upstream)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Settings {
    /// Reads the process environment.
    pub(crate) fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    /// Empty values count as unset.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let addr_text = get("AUTHGATE_ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_owned());
        let addr = addr_text.trim().parse::<SocketAddr>().map_err(|_| {
            format!("AUTHGATE_ADDR must be an IP address and port, like {DEFAULT_ADDR}; got {addr_text:?}")
        })?;
        let upstream = match get("AUTHGATE_UPSTREAM").as_deref().map(str::trim) {
            None | Some("altogic") => match (get("ALTOGIC_URL"), get("ALTOGIC_CLIENT_KEY")) {
                (None, None) => UpstreamSetting::Dev,
                (Some(url), Some(client_key)) => UpstreamSetting::Altogic { url, client_key },
                (Some(_), None) | (None, Some(_)) => {
                    return Err(
                        "set both ALTOGIC_URL and ALTOGIC_CLIENT_KEY to use Altogic, or neither to use the embedded dev upstream"
                            .to_owned(),
                    );
                }
            },
            Some("webcom") => match (get("WEBCOM_URL"), get("WEBCOM_APP_ID")) {
                (None, None) => UpstreamSetting::WebcomDev,
                (Some(url), Some(app_id)) => UpstreamSetting::Webcom { url, app_id },
                (Some(_), None) | (None, Some(_)) => {
                    return Err(
                        "set both WEBCOM_URL and WEBCOM_APP_ID to use Webcom, or neither to use the embedded Webcom dev server"
                            .to_owned(),
                    );
                }
            },
            Some("slashid") => match (get("SLASHID_URL"), get("SLASHID_ORG_ID")) {
                (None, None) => UpstreamSetting::SlashIdDev,
                (Some(url), Some(org_id)) => UpstreamSetting::SlashId {
                    url,
                    org_id,
                    api_key: get("SLASHID_API_KEY"),
                    client_id: get("SLASHID_CLIENT_ID"),
                },
                (Some(_), None) | (None, Some(_)) => {
                    return Err(
                        "set both SLASHID_URL and SLASHID_ORG_ID to use SlashID, or neither to use the embedded SlashID dev server"
                            .to_owned(),
                    );
                }
            },
            Some("oidc") => match (get("OIDC_ISSUER"), get("OIDC_CLIENT_ID")) {
                (Some(issuer), Some(client_id)) => UpstreamSetting::Oidc {
                    issuer: issuer.trim().to_owned(),
                    client_id: client_id.trim().to_owned(),
                    client_secret: get("OIDC_CLIENT_SECRET").filter(|s| !s.is_empty()),
                    scopes: get("OIDC_SCOPES").filter(|s| !s.trim().is_empty()),
                    groups_claim: get("OIDC_GROUPS_CLAIM").filter(|s| !s.trim().is_empty()),
                },
                _ => {
                    return Err(
                        "AUTHGATE_UPSTREAM=oidc needs OIDC_ISSUER and OIDC_CLIENT_ID (and OIDC_CLIENT_SECRET for a \
                         confidential client); scripts/ssr-site-oidc.sh runs the site on a local OpenID Provider"
                            .to_owned(),
                    );
                }
            },
            Some(other) => {
                return Err(format!(
                    "AUTHGATE_UPSTREAM must be `altogic` (the default), `webcom`, `slashid` or `oidc`; got {other:?}"
                ));
            }
        };
        let key = match get("AUTHGATE_KEY") {
            None => None,
            Some(key) if key.len() < MIN_KEY_LEN => {
                return Err(format!(
                    "AUTHGATE_KEY must be at least {MIN_KEY_LEN} bytes long, got {}; \
                     generate one with `openssl rand -base64 64 | tr -d '\\n'`",
                    key.len()
                ));
            }
            Some(key) => Some(key.into_bytes()),
        };
        Ok(Self {
            addr,
            public_url: get("AUTHGATE_PUBLIC_URL")
                .map(|url| url.trim().trim_end_matches('/').to_owned()),
            upstream,
            key,
        })
    }

    /// `AUTHGATE_PUBLIC_URL`, else `http://` + the bound address (a
    /// wildcard address becomes 127.0.0.1, the loopback it also answers on).
    pub(crate) fn public_url_for(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let mut addr = bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        format!("http://{addr}")
    }
}
