//! Wire helpers shared by the upstream clients: strict JSON (duplicate
//! keys refused), the JSON media-type check, a size-capped answer reader,
//! and (with `jwt`) the OAuth pieces SlashID and OpenID Connect share:
//! PKCE (RFC 7636) and random tokens.

use std::fmt;

use serde_json::Value;

#[cfg(feature = "jwt")]
use crate::error::Error;

/// `application/json` or `application/*+json`, with any parameters.
pub(crate) fn is_json_media_type(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The HTTP client of an upstream: the app's own (`given`, which must not
/// follow redirects), else one with these timeouts, redirects off
/// (SECURITY.md T-E1) and authgate's user agent.
#[cfg_attr(
    not(any(
        feature = "altogic",
        feature = "webcom",
        feature = "slashid",
        feature = "oidc"
    )),
    allow(dead_code)
)]
pub(crate) fn http_client(
    given: Option<reqwest::Client>,
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, crate::error::ConfigError> {
    match given {
        Some(http) => Ok(http),
        None => reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| crate::error::ConfigError::HttpClient),
    }
}

/// An answer read whole: its status, whether it says it is JSON, its body.
#[cfg(feature = "jwt")]
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    pub(crate) json: bool,
    pub(crate) bytes: Vec<u8>,
}

#[cfg(feature = "jwt")]
impl Answer {
    /// The body as strict JSON, if it says it is JSON and parses.
    #[cfg_attr(not(feature = "oidc"), allow(dead_code))]
    pub(crate) fn value(&self) -> Option<Value> {
        if self.json {
            strict_json(&self.bytes).ok()
        } else {
            None
        }
    }
}

/// Sends `request` and reads its answer, at most `limit` bytes (a larger
/// one is a bad answer, SECURITY.md T-E1). A 5xx is an outage error; any
/// other status is the caller's to read.
#[cfg(feature = "jwt")]
pub(crate) async fn send(request: reqwest::RequestBuilder, limit: usize) -> Result<Answer, Error> {
    let mut response = request.send().await.map_err(Error::from_reqwest)?;
    let status = response.status();
    if status.is_server_error() {
        return Err(Error::from_status(status));
    }
    let json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| is_json_media_type(value.as_bytes()));
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(Error::bad_answer("upstream answer too large"));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Error::from_reqwest)? {
        if bytes.len() + chunk.len() > limit {
            return Err(Error::bad_answer("upstream answer too large"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        json,
        bytes,
    })
}

/// 32 bytes from the OS random source, base64url (43 characters): a PKCE
/// verifier (RFC 7636 §4.1) or an OpenID Connect `nonce`.
#[cfg(feature = "jwt")]
#[cfg_attr(not(any(feature = "slashid", feature = "oidc")), allow(dead_code))]
pub(crate) fn random_token() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2).
#[cfg(feature = "jwt")]
#[cfg_attr(not(any(feature = "slashid", feature = "oidc")), allow(dead_code))]
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Parses JSON like `serde_json`, but refuses objects with a duplicate key
/// (where `serde_json::Value` silently keeps the last one, so
/// `{"_id":"a","_id":"b"}` would name another user).
pub(crate) fn strict_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde::de::DeserializeSeed::deserialize(StrictValue, &mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct StrictValue;

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without duplicate object keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictValue)?;
            if object.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("duplicate object key"));
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_json_refuses_duplicate_keys_at_any_depth() {
        assert!(strict_json(br#"{"_id":"u1","_id":"u2"}"#).is_err());
        assert!(strict_json(br#"{"a":[{"k":1,"k":2}]}"#).is_err());
        assert!(strict_json(br#"{"_id":"u1"} trailing"#).is_err());
        let value =
            strict_json(br#"{"_id":"u1","n":1.5,"l":[true,null,-3],"o":{"x":"y"}}"#).unwrap();
        assert_eq!(
            value,
            json!({"_id":"u1","n":1.5,"l":[true,null,-3],"o":{"x":"y"}})
        );
    }

    #[cfg(feature = "jwt")]
    #[test]
    fn pkce_follows_rfc_7636_appendix_b() {
        // T-B2.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let verifier = random_token();
        assert_eq!(verifier.len(), 43);
        assert_ne!(verifier, random_token());
    }

    #[test]
    fn json_media_types() {
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/problem+json", true),
            ("text/html", false),
            ("text/json", false),
            ("application/jsonx", false),
        ] {
            assert_eq!(is_json_media_type(value.as_bytes()), json, "{value}");
        }
    }
}
