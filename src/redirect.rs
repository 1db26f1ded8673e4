//! The one `return_to` validator. Every redirect target that comes from
//! input goes through [`ReturnTo::validate`].
//!
//! The algorithm is the one SECURITY.md Appendix A measured with zero
//! escapes: WHATWG-join the input against the public origin, require the
//! same origin and no userinfo, refuse the auth routes themselves (no loops,
//! no token replays), and emit the **re-serialized absolute URL** — never the
//! raw string and never a bare path.

use url::Url;

/// The longest `return_to` accepted, in bytes.
pub const MAX_RETURN_TO_LEN: usize = 2048;

/// Validates redirect targets against the public origin.
///
/// ```
/// use authgate::redirect::ReturnTo;
///
/// let policy = ReturnTo::new("https://app.example".parse()?, "/auth");
/// assert_eq!(
///     policy.validate("/account?tab=1").as_deref(),
///     Some("https://app.example/account?tab=1")
/// );
/// assert_eq!(policy.validate("//evil.example"), None);
/// assert_eq!(policy.validate("/auth/callback?access_token=x"), None);
/// # Ok::<(), url::ParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReturnTo {
    base: Url,
    auth_prefix: String,
}

impl ReturnTo {
    /// A validator for `origin` (its path is ignored) that refuses paths
    /// under `auth_prefix`.
    pub fn new(origin: Url, auth_prefix: &str) -> Self {
        let mut base = origin;
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        Self {
            base,
            auth_prefix: auth_prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The absolute same-origin URL for `input`, or `None` if it must not be
    /// used (then redirect to your fallback).
    pub fn validate(&self, input: &str) -> Option<String> {
        if input.is_empty() || input.len() > MAX_RETURN_TO_LEN {
            return None;
        }
        let url = self.base.join(input).ok()?;
        let same_origin = url.origin() == self.base.origin();
        let no_userinfo = url.username().is_empty() && url.password().is_none();
        if !same_origin || !no_userinfo || self.is_auth_route(url.path()) {
            return None;
        }
        Some(url.into())
    }

    /// Like [`validate`](Self::validate) with a fallback path (joined to the
    /// origin) when the input is missing or refused.
    pub fn validate_or(&self, input: Option<&str>, fallback: &str) -> String {
        input
            .and_then(|input| self.validate(input))
            .or_else(|| self.base.join(fallback).ok().map(String::from))
            .unwrap_or_else(|| self.base.to_string())
    }

    fn is_auth_route(&self, path: &str) -> bool {
        path.strip_prefix(&self.auth_prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReturnTo {
        ReturnTo::new(Url::parse("https://app.example").unwrap(), "/auth")
    }

    /// The T-A1 list of SECURITY.md, each raw and once-percent-decoded.
    const T_A1: &[&str] = &[
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "\\\\evil.example",
        "/\\/evil.example",
        "/%5cevil.example",
        "//%5cevil.example",
        "https:evil.example",
        "https:/evil.example",
        "http:\\\\evil.example",
        "HTTPS://evil.example",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java%0d%0ascript%0d%0a:alert(0)",
        "javascript://%250Aalert(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\n/evil.example",
        " //evil.example",
        "\u{8}//evil.example",
        "%09//evil.example",
        "/%09/evil.example",
        "%2F%2Fevil.example",
        "/%2e%2e//evil.example",
        "..//evil.example",
        "/.//evil.example",
        "/..//evil.example",
        "https://app.example@evil.example",
        "//app.example@evil.example",
        "https://app.example.evil.example/",
        "https://evil.example#@app.example",
        "https://evil.example?@app.example",
        "http://app.example\\@evil.example",
        "//3627734734",
        "http://0xd83ad6ce",
        "http://[::ffff:216.58.214.206]",
        "//evil%E3%80%82example",
        "http://app.example/",
        "https://app.example:444/",
        "/auth/callback?access_token=x",
        "/auth/signin/google",
        "/auth/signout",
        "%zz",
        "",
    ];

    fn decoded(input: &str) -> String {
        url::form_urlencoded::parse(format!("x={}", input.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }

    /// What a browser does with the emitted `Location`: resolve it against
    /// the page URL. It must stay on the origin.
    pub(crate) fn assert_safe(policy: &ReturnTo, input: &str) {
        if let Some(location) = policy.validate(input) {
            assert!(
                !location.contains(['\r', '\n', '\t', '\0']),
                "{input:?} -> {location:?}"
            );
            let request = Url::parse("https://app.example/some/page").unwrap();
            let resolved = request.join(&location).unwrap();
            assert_eq!(
                resolved.origin(),
                request.origin(),
                "{input:?} escaped to {location:?}"
            );
            assert_eq!(resolved.as_str(), location, "{input:?} not canonical");
            assert!(http::HeaderValue::from_str(&location).is_ok(), "{input:?}");
        }
    }

    #[test]
    fn t_a1_payloads_never_escape_the_origin() {
        let policy = policy();
        for input in T_A1 {
            assert_safe(&policy, input);
            assert_safe(&policy, &decoded(input));
        }
    }

    #[test]
    fn t_a1_off_origin_and_auth_routes_are_refused() {
        let policy = policy();
        for input in [
            "//evil.example",
            "https://app.example@evil.example",
            "http://app.example/",
            "https://app.example:444/",
            "/auth/callback?access_token=x",
            "/auth/signout",
            "/auth",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(policy.validate(input), None, "{input:?}");
        }
        assert_eq!(policy.validate(&"a".repeat(10_000)), None);
    }

    #[test]
    fn t_a1_same_origin_targets_are_kept() {
        let policy = policy();
        let cases = [
            ("/account", "https://app.example/account"),
            (
                "/view/?param=http://example.com",
                "https://app.example/view/?param=http://example.com",
            ),
            (
                "/url%20with%20spaces/",
                "https://app.example/url%20with%20spaces/",
            ),
            (
                "/%2F%2Fevil.example",
                "https://app.example/%2F%2Fevil.example",
            ),
            ("https://app.example/x?y#z", "https://app.example/x?y#z"),
            ("/authors", "https://app.example/authors"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                policy.validate(input).as_deref(),
                Some(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn t_a3_crlf_never_reaches_a_header() {
        let policy = policy();
        for input in [
            "/ok\r\nSet-Cookie: __Host-sid=attacker",
            "/ok%0d%0aSet-Cookie:%20__Host-sid=attacker",
            "/ok\nX:1",
            "/ok\0",
            "/ok\x7f",
        ] {
            assert_safe(&policy, input);
            assert_safe(&policy, &decoded(input));
        }
    }

    #[test]
    fn open_redirect_corpus_never_escapes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/testdata/open-redirect-payloads.json"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipped: corpus not found at {path} (CI has ../shared beside the repo)");
            return;
        };
        let payloads: Vec<String> = serde_json::from_str(&text).unwrap();
        assert!(payloads.len() >= 485, "corpus shrank: {}", payloads.len());
        let policy = ReturnTo::new(Url::parse("https://whitelisted.com").unwrap(), "/auth");
        let mut kept = 0;
        for payload in &payloads {
            for input in [payload.clone(), decoded(payload)] {
                if policy.validate(&input).is_some() {
                    kept += 1;
                }
                let request = Url::parse("https://whitelisted.com/page").unwrap();
                if let Some(location) = policy.validate(&input) {
                    let resolved = request.join(&location).unwrap();
                    assert_eq!(
                        resolved.origin(),
                        request.origin(),
                        "{input:?} -> {location}"
                    );
                    assert_eq!(resolved.as_str(), location);
                }
            }
        }
        eprintln!(
            "open-redirect corpus: {} payloads x2, {kept} kept same-origin, 0 escapes",
            payloads.len()
        );
    }
}
