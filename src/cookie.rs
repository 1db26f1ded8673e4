//! The cookie codec: finding the session cookie in `Cookie` headers,
//! encoding its value, building `Set-Cookie` lines, and sealing the
//! short-lived flow and reset cookies with the app key. Pure: no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, CookieJar, Key, SameSite};
use http::HeaderMap;
use http::header::COOKIE;
use serde::{Serialize, de::DeserializeOwned};

use crate::upstream::{MAX_TOKEN_LEN, SessionToken};

/// Marks a session-cookie value that holds a base64url-encoded token.
const ENCODED_MARK: u8 = b'~';

/// The longest session-cookie value read; longer values are never valid.
const MAX_VALUE_LEN: usize = MAX_TOKEN_LEN;

/// What the request's `Cookie` headers say about the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionCookie {
    /// No session cookie.
    Absent,
    /// Exactly one well-formed session cookie.
    Present(SessionToken),
    /// A session cookie that can never be valid (bad encoding, too long).
    Malformed,
    /// Two different values under our name: never choose by order
    /// (SECURITY.md T-C3).
    Ambiguous,
}

/// The raw session-cookie value in a request, not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieScan<'h> {
    Absent,
    Present(&'h [u8]),
    Ambiguous,
}

/// Finds one cookie by name in `Cookie` headers: a pass over the pairs
/// that compares only their first bytes with the name, with no parsing or
/// copying of the other cookies (a third of the instructions of splitting
/// and trimming every pair, see BENCHMARKS.md). Property-tested to pick the
/// same value as the `cookie` crate.
#[derive(Debug, Clone)]
pub(crate) struct CookieFinder {
    name: Box<[u8]>,
}

impl CookieFinder {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.as_bytes().into(),
        }
    }

    /// Scans every `Cookie` header at the byte level. Unrelated cookies may
    /// hold any bytes (SECURITY.md T-C5); several `Cookie` header fields
    /// are tolerated; two different values are ambiguous (T-C3). The name is
    /// matched exactly and case-sensitively.
    pub(crate) fn scan<'h>(&self, headers: &'h HeaderMap) -> CookieScan<'h> {
        let name = &*self.name;
        let mut found: Option<&[u8]> = None;
        for header in headers.get_all(COOKIE) {
            let mut rest = header.as_bytes();
            loop {
                let end = memchr::memchr(b';', rest);
                let pair = rest[..end.unwrap_or(rest.len())].trim_ascii_start();
                if let Some(after) = pair.strip_prefix(name)
                    && let Some(value) = after.trim_ascii_start().strip_prefix(b"=")
                {
                    let value = value.trim_ascii();
                    match found {
                        Some(previous) if previous != value => return CookieScan::Ambiguous,
                        _ => found = Some(value),
                    }
                }
                match end {
                    Some(end) => rest = &rest[end + 1..],
                    None => break,
                }
            }
        }
        found.map_or(CookieScan::Absent, CookieScan::Present)
    }
}

impl CookieFinder {
    /// Reads the session cookie and decodes its token.
    pub(crate) fn find(&self, headers: &HeaderMap) -> SessionCookie {
        decode_scan(self.scan(headers))
    }

    /// The raw value of this cookie (the flow and reset cookies); `None`
    /// when absent, ambiguous or not UTF-8.
    pub(crate) fn raw<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        match self.scan(headers) {
            CookieScan::Present(value) => std::str::from_utf8(value).ok(),
            CookieScan::Absent | CookieScan::Ambiguous => None,
        }
    }
}

#[cfg(test)]
fn scan_session_cookie<'h>(headers: &'h HeaderMap, name: &str) -> CookieScan<'h> {
    CookieFinder::new(name).scan(headers)
}

fn decode_scan(scan: CookieScan<'_>) -> SessionCookie {
    match scan {
        CookieScan::Absent => SessionCookie::Absent,
        CookieScan::Ambiguous => SessionCookie::Ambiguous,
        CookieScan::Present(value) => match decode_token(value) {
            Some(token) => SessionCookie::Present(token),
            None => SessionCookie::Malformed,
        },
    }
}

fn is_plain_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Decodes a session-cookie value: plain tokens as they are, others from
/// base64url after the `~` mark.
pub(crate) fn decode_token(value: &[u8]) -> Option<SessionToken> {
    if value.is_empty() || value.len() > MAX_VALUE_LEN {
        return None;
    }
    if value[0] == ENCODED_MARK {
        let bytes = URL_SAFE_NO_PAD.decode(&value[1..]).ok()?;
        return SessionToken::new(String::from_utf8(bytes).ok()?);
    }
    if !value.iter().all(|&b| is_plain_token_byte(b)) {
        return None;
    }
    std::str::from_utf8(value).ok().and_then(SessionToken::new)
}

/// Encodes a token as a cookie-octet-only value (SECURITY.md T-C7).
pub(crate) fn encode_token(token: &SessionToken) -> String {
    let raw = token.expose();
    if raw.bytes().all(is_plain_token_byte) {
        raw.to_owned()
    } else {
        let mut value = String::with_capacity(1 + raw.len().div_ceil(3) * 4);
        value.push(ENCODED_MARK as char);
        URL_SAFE_NO_PAD.encode_string(raw, &mut value);
        value
    }
}

/// The attributes every cookie of ours carries.
#[derive(Debug, Clone)]
pub(crate) struct CookieAttributes {
    pub(crate) secure: bool,
}

impl CookieAttributes {
    pub(crate) fn build(&self, name: &str, value: String, max_age: Duration) -> String {
        let max_age = time::Duration::try_from(max_age).unwrap_or(time::Duration::ZERO);
        Cookie::build((name.to_owned(), value))
            .path("/")
            .secure(self.secure)
            .http_only(true)
            .same_site(SameSite::Lax)
            .max_age(max_age)
            .build()
            .to_string()
    }

    /// A deletion that mirrors the attributes the cookie was set with.
    pub(crate) fn removal(&self, name: &str) -> String {
        self.build(name, String::new(), Duration::ZERO)
    }
}

/// The app key and previous keys still accepted for decryption.
#[derive(Clone)]
pub(crate) struct Keys {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub(crate) fn new(current: Key, previous: Vec<Key>) -> Self {
        Self { current, previous }
    }

    /// 32 bytes derived from the current key, for keyed hashes.
    pub(crate) fn hash_key(&self) -> &[u8] {
        self.current.signing()
    }

    /// Encrypts `payload` for the cookie `name` (the name is the AEAD's
    /// associated data, so a value cannot move to another cookie). The
    /// payload carries its purpose and its own expiry.
    pub(crate) fn seal<T: Serialize>(
        &self,
        name: &str,
        purpose: &str,
        payload: &T,
        ttl: Duration,
    ) -> Option<String> {
        let expires = unix_now().saturating_add(ttl.as_secs());
        let envelope = Envelope {
            purpose,
            expires,
            payload,
        };
        let json = serde_json::to_string(&envelope).ok()?;
        let mut jar = CookieJar::new();
        jar.private_mut(&self.current)
            .add(Cookie::new(name.to_owned(), json));
        jar.get(name).map(|c| c.value().to_owned())
    }

    /// Decrypts and checks a sealed value: right cookie name, right purpose,
    /// not expired. Any key, current or previous, may open it.
    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        name: &str,
        purpose: &str,
        value: &str,
    ) -> Option<T> {
        let jar = CookieJar::new();
        let plain = std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| {
                jar.private(key)
                    .decrypt(Cookie::new(name.to_owned(), value.to_owned()))
            })?;
        let envelope: OwnedEnvelope<T> = serde_json::from_str(plain.value()).ok()?;
        (envelope.purpose == purpose && envelope.expires >= unix_now()).then_some(envelope.payload)
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    purpose: &'a str,
    expires: u64,
    payload: &'a T,
}

#[derive(serde::Deserialize)]
struct OwnedEnvelope<T> {
    purpose: String,
    expires: u64,
    payload: T,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn token(s: &str) -> SessionCookie {
        SessionCookie::Present(SessionToken::new(s).unwrap())
    }

    #[test]
    fn session_cookie_scan_table() {
        // SECURITY.md T-C3, T-C5 and Appendix B's cookie header set.
        let n = "__Host-sid";
        let big = format!("__Host-sid={}", "a".repeat(64 * 1024));
        let many: String =
            (0..500).map(|i| format!("c{i}=v; ")).collect::<String>() + "__Host-sid=abc";
        let cases: Vec<(&str, Vec<&[u8]>, SessionCookie)> = vec![
            ("absent", vec![b"a=b"], SessionCookie::Absent),
            ("simple", vec![b"__Host-sid=abc"], token("abc")),
            (
                "non-utf8 neighbour (T-C5)",
                vec![b"_ga=\xff\xfe; __Host-sid=VALID"],
                token("VALID"),
            ),
            (
                "non-utf8 in ours",
                vec![b"__Host-sid=VAL\x80ID"],
                SessionCookie::Malformed,
            ),
            (
                "quoted value belongs to the value",
                vec![b"__Host-sid=\"VALID\""],
                SessionCookie::Malformed,
            ),
            (
                "junk around",
                vec![b"__Host-sid=VALID;;; ;=x; =; novalue"],
                token("VALID"),
            ),
            (
                "percent junk",
                vec![b"__Host-sid=%ZZ"],
                SessionCookie::Malformed,
            ),
            (
                "duplicate names differ (T-C3)",
                vec![b"__Host-sid=A; __Host-sid=B"],
                SessionCookie::Ambiguous,
            ),
            (
                "duplicate same value",
                vec![b"__Host-sid=A; __Host-sid=A"],
                token("A"),
            ),
            (
                "case variant is not ours",
                vec![b"__host-sid=evil"],
                SessionCookie::Absent,
            ),
            (
                "split headers",
                vec![b"a=1", b"__Host-sid=abc"],
                token("abc"),
            ),
            (
                "split headers disagree",
                vec![b"__Host-sid=x", b"__Host-sid=y"],
                SessionCookie::Ambiguous,
            ),
            (
                "64 KiB value",
                vec![big.as_bytes()],
                SessionCookie::Malformed,
            ),
            ("500 cookies", vec![many.as_bytes()], token("abc")),
            (
                "empty value",
                vec![b"__Host-sid="],
                SessionCookie::Malformed,
            ),
            (
                "prefix of another name",
                vec![b"__Host-sidx=1"],
                SessionCookie::Absent,
            ),
        ];
        for (name, values, expected) in cases {
            assert_eq!(
                CookieFinder::new(n).find(&headers(&values)),
                expected,
                "{name}"
            );
        }
    }

    /// The targeted scan picks the same value as the `cookie` crate's
    /// full parser, on random headers built from an adversarial alphabet.
    #[test]
    fn targeted_scan_agrees_with_the_cookie_crate() {
        use rand::{Rng, SeedableRng};
        let name = "__Host-sid";
        let pieces = [
            "__Host-sid",
            "__Host-sid",
            "__host-sid",
            "__Host-sidx",
            "x__Host-sid",
            "a",
            "b",
            "c",
            "=",
            "=",
            ";",
            ";",
            "; ",
            " ",
            "\t",
            "\"",
            "val",
            "tok-1",
            "tok.2",
            "__Host-",
            "sid",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut checked = 0;
        for _ in 0..100_000 {
            let header: String = (0..rng.gen_range(1..12))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let Ok(value) = http::HeaderValue::from_str(&header) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(COOKIE, value);
            let ours = scan_session_cookie(&map, name);
            let theirs: Vec<String> = Cookie::split_parse(header.as_str())
                .filter_map(Result::ok)
                .filter(|c| c.name() == name)
                .map(|c| c.value().to_owned())
                .collect();
            let expected = match theirs.as_slice() {
                [] => CookieScan::Absent,
                [first, rest @ ..] if rest.iter().all(|v| v == first) => {
                    CookieScan::Present(first.as_bytes())
                }
                _ => CookieScan::Ambiguous,
            };
            // The cookie crate drops pairs it cannot parse (e.g. an empty
            // name before ours); compare where it kept everything.
            let parsed_all = Cookie::split_parse(header.as_str()).all(|c| c.is_ok());
            if parsed_all {
                assert_eq!(ours, expected, "header {header:?}");
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn t_c4_tokens_that_would_not_fit_a_cookie_are_refused() {
        let name = "__Host-authgate";
        for (len, special, fits) in [
            (3000, false, true),
            (4000, false, true),
            (4001, false, false),
            (4096, false, false),
            (10_000, false, false),
            (2900, true, true),
            (3000, true, false),
        ] {
            let mut raw = "a".repeat(len);
            if special {
                raw.replace_range(0..1, ";");
            }
            let token = SessionToken::new(raw);
            assert_eq!(token.is_some(), fits, "{len} special={special}");
            if let Some(token) = token {
                let value = encode_token(&token);
                // RFC 6265bis §5.6: name + value within 4096 bytes.
                assert!(name.len() + value.len() <= 4096, "{len}");
                assert_eq!(decode_token(value.as_bytes()), Some(token));
            }
        }
    }

    #[test]
    fn token_encoding_round_trips_any_token() {
        // SECURITY.md T-C7: `;`, `,`, space, `"`, `\`, non-ASCII.
        for raw in [
            "plain-Token_1.2",
            "a;b",
            "a,b",
            "a b",
            "q\"uote",
            "back\\slash",
            "ünï",
            "~x",
        ] {
            let token = SessionToken::new(raw).unwrap();
            let value = encode_token(&token);
            assert!(
                value.bytes().all(|b| is_plain_token_byte(b) || b == b'~'),
                "{raw}: {value}"
            );
            assert_eq!(decode_token(value.as_bytes()), Some(token), "{raw}");
        }
    }

    #[test]
    fn sealed_cookies_are_bound_to_name_purpose_and_key() {
        let keys = Keys::new(Key::generate(), vec![]);
        let sealed = keys
            .seal(
                "__Host-ag-flow",
                "flow",
                &"payload",
                Duration::from_secs(600),
            )
            .unwrap();
        let open = |name, purpose, value: &str| keys.open::<String>(name, purpose, value);
        assert_eq!(
            open("__Host-ag-flow", "flow", &sealed).as_deref(),
            Some("payload")
        );
        // T-C6: another cookie name or purpose does not open it.
        assert_eq!(open("__Host-ag", "flow", &sealed), None);
        assert_eq!(open("__Host-ag-flow", "reset", &sealed), None);
        // T-B1.10: one flipped byte.
        let mut bytes = sealed.clone().into_bytes();
        bytes[10] ^= 1;
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(open("__Host-ag-flow", "flow", &flipped), None);
        // Rotation: a previous key still opens; an unknown key does not.
        let rotated = Keys::new(Key::generate(), vec![keys.current.clone()]);
        assert_eq!(
            rotated
                .open::<String>("__Host-ag-flow", "flow", &sealed)
                .as_deref(),
            Some("payload")
        );
        let stranger = Keys::new(Key::generate(), vec![]);
        assert_eq!(
            stranger.open::<String>("__Host-ag-flow", "flow", &sealed),
            None
        );
        // Expired.
        let expired = keys.seal("n", "flow", &"p", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(keys.open::<String>("n", "flow", &expired), None);
    }

    #[test]
    fn set_cookie_lines_parse_with_the_cookie_crate() {
        let attrs = CookieAttributes { secure: true };
        let line = attrs.build("__Host-ag", "abc".into(), Duration::from_secs(60));
        let parsed = Cookie::parse(line).unwrap();
        assert_eq!(parsed.name(), "__Host-ag");
        assert_eq!(parsed.secure(), Some(true));
        assert_eq!(parsed.http_only(), Some(true));
        assert_eq!(parsed.same_site(), Some(SameSite::Lax));
        assert_eq!(parsed.path(), Some("/"));
        assert_eq!(parsed.domain(), None);
        let removal = Cookie::parse(attrs.removal("__Host-ag")).unwrap();
        assert_eq!(removal.value(), "");
        assert_eq!(removal.max_age(), Some(time::Duration::ZERO));
        assert_eq!(removal.secure(), Some(true));
        assert_eq!(removal.path(), Some("/"));
    }
}
