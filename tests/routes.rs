//! The layer's own routes against the dev upstream: sign-in start,
//! callback landings, sign-out (SECURITY.md T-A*, T-B*, T-D1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use authgate::ErrorKind;
use common::*;
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

const FLOW: &str = "__Host-authgate-flow";
const RESET: &str = "__Host-authgate-reset";
const LINK: &str = "__Host-authgate-link";

/// Starts an OAuth sign-in, runs the dev simulator, and returns the flow
/// cookie and the callback path.
async fn oauth_landing(site: &Site, provider: &str, return_to: &str) -> (String, String) {
    let path = format!("/auth/signin/{provider}?return_to={}", urlencode(return_to));
    let response = site.get(&path, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let target = location(&response).to_owned();
    assert_eq!(target, format!("{}/_auth/{provider}", site.dev.url()));
    let flow = set_cookie(response.headers(), FLOW).expect("flow cookie");
    let http = no_redirect_client();
    let landing = http
        .post(&target)
        .form(&[
            ("name", "Grace Hopper"),
            ("email", "grace@example.test"),
            ("decision", "continue"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), StatusCode::SEE_OTHER);
    let callback = local_path(landing.headers()["location"].to_str().unwrap());
    (format!("{FLOW}={}", flow.value()), callback)
}

/// SECURITY.md N3: answers on token-bearing routes are never stored and
/// never send the URL on as a referrer.
fn assert_private_landing(response: &http::Response<axum::body::Body>) {
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    assert!(
        response.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[tokio::test]
async fn oauth_sign_in_round_trip_sets_a_session_and_returns_to_the_page() {
    let site = site().await;
    let response = site
        .get("/auth/signin/google?return_to=%2Faccount%3Ftab%3D2", None)
        .await;
    assert_private_landing(&response);
    let flow = set_cookie(response.headers(), FLOW).unwrap();
    // T-B1 design: flow cookie attributes.
    assert_eq!(flow.secure(), Some(true));
    assert_eq!(flow.http_only(), Some(true));
    assert_eq!(flow.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(flow.path(), Some("/"));
    assert_eq!(flow.max_age(), Some(time::Duration::minutes(10)));
    assert!(
        !flow.value().contains("account"),
        "flow cookie is encrypted"
    );

    let (flow, callback) = oauth_landing(&site, "google", "/account?tab=2").await;
    assert!(callback.starts_with("/auth/callback?"));
    let response = site.get(&callback, Some(&flow)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // T-B5: 303 to a token-free URL, no-store, no-referrer.
    assert_eq!(location(&response), "https://app.example/account?tab=2");
    assert_private_landing(&response);
    let session = set_cookie(response.headers(), "__Host-authgate").expect("session cookie");
    assert!(
        is_removal(&set_cookie(response.headers(), FLOW).unwrap()),
        "flow cookie deleted"
    );
    assert!(!session.value().is_empty());

    let account = site
        .get("/account", Some(&site.cookie(session.value())))
        .await;
    assert_eq!(account.status(), StatusCode::OK);
    assert_eq!(
        body_string(account).await,
        "account: Grace Hopper <grace@example.test>"
    );
}

#[tokio::test]
async fn t_b1_oauth_landing_without_a_flow_cookie_signs_nobody_in() {
    let site = site().await;
    let (_flow, callback) = oauth_landing(&site, "github", "/account").await;
    let calls = site.dev.upstream_calls();
    let response = site.get(&callback, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(response.headers(), "__Host-authgate").is_none());
    assert_eq!(site.dev.upstream_calls(), calls, "no grant exchange");
}

#[tokio::test]
async fn t_b1_tampered_flow_cookie_is_rejected() {
    let site = site().await;
    let (flow, callback) = oauth_landing(&site, "google", "/account").await;
    let mut bytes = flow.into_bytes();
    let last = bytes.len() - 3;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let response = site.get(&callback, Some(&tampered)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(response.headers(), "__Host-authgate").is_none());
}

#[tokio::test]
async fn t_b3_replayed_grant_signs_nobody_in_and_keeps_the_first_session() {
    let site = site().await;
    let (flow, callback) = oauth_landing(&site, "discord", "/account").await;
    let first = site.get(&callback, Some(&flow)).await;
    let session = set_cookie(first.headers(), "__Host-authgate").unwrap();
    let cookie = format!("{flow}; {}", site.cookie(session.value()));

    // Signed in: back to the page with a notice, not an error (issue 10
    // point 2); the session is untouched.
    let replay = site.get(&callback, Some(&cookie)).await;
    assert_eq!(replay.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&replay),
        "https://app.example/account?notice=replayed-grant"
    );
    assert!(
        set_cookie(replay.headers(), "__Host-authgate").is_none(),
        "session untouched"
    );
    // Another browser, signed out: the page says what happened.
    let replay = site.get(&callback, Some(&flow)).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(replay.headers(), "__Host-authgate").is_none());
    let page = body_string(replay).await;
    assert!(page.contains("expired or was already used"), "{page}");

    let account = site
        .get("/account", Some(&site.cookie(session.value())))
        .await;
    assert_eq!(account.status(), StatusCode::OK);
}

#[tokio::test]
async fn t_b3_head_never_spends_the_grant() {
    let site = site().await;
    let (flow, callback) = oauth_landing(&site, "google", "/").await;
    let calls = site.dev.upstream_calls();
    let head = site.send(request("HEAD", &callback, Some(&flow))).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(set_cookies(head.headers()).is_empty());
    assert_eq!(site.dev.upstream_calls(), calls);
    let get = site.get(&callback, Some(&flow)).await;
    assert_eq!(
        get.status(),
        StatusCode::SEE_OTHER,
        "the grant is still good"
    );
}

#[tokio::test]
async fn magic_link_landing_signs_in() {
    let site = site().await;
    site.user("mia@example.test").await;
    let callback = site.magic_link_callback("mia@example.test").await;
    assert_eq!(
        query_param(&callback, "action").as_deref(),
        Some("magic-link")
    );
    let response = site.land(&callback, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/account");
    let session = set_cookie(response.headers(), "__Host-authgate").unwrap();
    let page = body_string(site.get("/", Some(&site.cookie(session.value()))).await).await;
    assert_eq!(page, "home: signed in as mia@example.test");
}

#[tokio::test]
async fn email_confirmation_landing_signs_in() {
    let site = site().await;
    site.dev.set_email_confirmation(true);
    let response = site
        .client
        .sign_up_with_email("eve@example.test", "password-1", None)
        .await
        .unwrap();
    assert!(response.session.is_none(), "confirmation pending");
    let link = site
        .dev
        .last_message_to("eve@example.test")
        .unwrap()
        .link
        .unwrap();
    let callback = site.follow_upstream(&link).await;
    let response = site.land(&callback, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(response.headers(), "__Host-authgate").unwrap();
    let signed_in = site.cookie(session.value());

    // Issue 10 point 2: the same confirmation link opened again in the
    // browser it signed in: back to the app with a notice, not an error
    // page saying "Sign-in failed … Back to sign in".
    let held = site.get(&callback, Some(&signed_in)).await;
    let link = set_cookie(held.headers(), LINK).expect("the link waits for its click");
    let again = site
        .send(form(
            "/auth/continue",
            Some(&format!("{signed_in}; {LINK}={}", link.value())),
            "",
        ))
        .await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&again),
        "https://app.example/account?notice=replayed-grant"
    );
    assert!(set_cookie(again.headers(), "__Host-authgate").is_none());
}

#[tokio::test]
async fn t_b5_reset_landing_moves_the_key_off_the_url_and_never_signs_in() {
    let site = site().await;
    site.user("rob@example.test").await;
    site.client
        .send_reset_pwd_email("rob@example.test")
        .await
        .unwrap();
    let link = site
        .dev
        .last_message_to("rob@example.test")
        .unwrap()
        .link
        .unwrap();
    let callback = site.follow_upstream(&link).await;
    let key = query_param(&callback, "access_token").unwrap();

    let response = site.get(&callback, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/reset-password");
    assert!(!location(&response).contains(&key));
    assert!(
        set_cookie(response.headers(), "__Host-authgate").is_none(),
        "T-B6.2: no session"
    );
    let reset = set_cookie(response.headers(), RESET).expect("reset cookie");
    assert!(!reset.value().contains(&key), "the key is sealed");
    assert_eq!(reset.http_only(), Some(true));
    let reset_cookie = format!("{RESET}={}", reset.value());

    let page = body_string(site.get("/reset-password", Some(&reset_cookie)).await).await;
    assert_eq!(page, "reset: pending");
    let done = site
        .send(form(
            "/reset-password",
            Some(&reset_cookie),
            "password=brand-new-1",
        ))
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert!(is_removal(&set_cookie(done.headers(), RESET).unwrap()));
    site.session("rob@example.test", "brand-new-1").await;
}

#[tokio::test]
async fn change_email_landing_redirects_with_a_notice() {
    let site = site().await;
    site.dev.set_email_confirmation(true);
    site.client
        .sign_up_with_email(
            "old@example.test",
            "password-1",
            Some(serde_json::json!({"emailVerified": true})),
        )
        .await
        .unwrap();
    let token = site.session("old@example.test", "password-1").await;
    let token = authgate::SessionToken::new(token).unwrap();
    site.client
        .change_email(&token, "password-1", "new@example.test")
        .await
        .unwrap();
    let link = site
        .dev
        .last_message_to("new@example.test")
        .unwrap()
        .link
        .unwrap();
    let callback = site.follow_upstream(&link).await;
    let response = site.get(&callback, None).await;
    assert_eq!(
        location(&response),
        "https://app.example/?notice=email-changed"
    );
}

#[tokio::test]
async fn t_b4_error_landings_are_escaped_and_capped() {
    let site = site().await;
    let big = "x".repeat(60_000);
    for (name, query) in [
        (
            "script",
            "action=oauth-signin&status=401&error=%3Cscript%3Ealert(1)%3C%2Fscript%3E".to_owned(),
        ),
        (
            "crlf",
            "action=oauth-signin&status=401&error=%0d%0aSet-Cookie:a=b".to_owned(),
        ),
        ("60 KB", format!("action=magic-link&status=500&error={big}")),
    ] {
        let response = site.get(&format!("/auth/callback?{query}"), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.headers().get("a").is_none());
        let session = set_cookie(response.headers(), "__Host-authgate");
        assert!(session.is_none(), "{name}: never touches the session");
        let page = body_string(response).await;
        assert!(!page.contains("<script>"), "{name}");
        assert!(page.len() < 2_000, "{name}: capped");
    }
}

#[tokio::test]
async fn t_b6_actions_are_an_exact_allow_list_and_bad_tokens_never_go_upstream() {
    let site = site().await;
    let calls = site.dev.upstream_calls();
    let long = "a".repeat(4097);
    let cases = [
        "action=Reset-Pwd&status=200&access_token=abc",
        "action=reset-pwd%00&status=200&access_token=abc",
        "action=reset-pwd%20&status=200&access_token=abc",
        "action=&status=200&access_token=abc",
        "action=unknown&status=200&access_token=abc",
        "action=magic-link&action=reset-pwd&status=200&access_token=abc",
        "action=magic-link&status=200&access_token=a&access_token=b",
        "action=magic-link&status=200",
        "action=magic-link&status=abc&access_token=abc",
        "status=200&access_token=abc",
        "action=magic-link&status=200&access_token=%0d%0a",
        "action=magic-link&status=200&access_token=a%20b",
    ];
    for query in cases
        .iter()
        .map(|q| q.to_string())
        .chain([format!("action=magic-link&status=200&access_token={long}")])
    {
        let response = site.get(&format!("/auth/callback?{query}"), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query:.80}");
    }
    assert_eq!(
        site.dev.upstream_calls(),
        calls,
        "no upstream call for any of them"
    );
}

#[tokio::test]
async fn t_b3_injected_key_reaches_the_upstream_as_one_value() {
    let site = site().await;
    for token in ["abc%26key%3Devil", "abc%23x", "..%2F..%2Fadmin"] {
        let response = site
            .land(
                &format!("/auth/callback?action=magic-link&status=200&access_token={token}"),
                None,
            )
            .await;
        // Held, then confirmed: the dev upstream sees one unknown key and
        // refuses it.
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{token}");
        assert!(set_cookie(response.headers(), "__Host-authgate").is_none());
    }
}

#[tokio::test]
async fn t_b3_tokens_in_page_queries_are_ignored() {
    let site = site().await;
    site.user("q@example.test").await;
    let callback = site.magic_link_callback("q@example.test").await;
    let key = query_param(&callback, "access_token").unwrap();
    let response = site
        .get(&format!("/account?access_token={key}"), None)
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(location(&response).starts_with("/signin?return_to="));
}

#[tokio::test]
async fn t_a4_host_headers_never_reach_a_location_or_cookie() {
    let site = site().await;
    let request = http::Request::get("/auth/signin/google?return_to=/account")
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "host=evil.example;proto=http")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = site.send(request).await;
    for (_, value) in response.headers() {
        assert!(!value.to_str().unwrap_or("").contains("evil.example"));
    }
    let response = site
        .send(
            http::Request::post("/auth/signout")
                .header("host", "evil.example")
                .header("origin", "https://evil.example")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_provider_is_a_404_and_other_prefix_paths_reach_the_app() {
    let site = site().await;
    let response = site.get("/auth/signin/google%0d%0aX:1", None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = site.get("/auth/signin/myspace", None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(set_cookies(response.headers()).is_empty());
}

#[tokio::test]
async fn t_d1_sign_out_is_post_only_and_same_origin_only() {
    let site = site().await;
    let (_, token) = site.user("out@example.test").await;
    let cookie = site.cookie(&token);
    let get = site.get("/auth/signout", Some(&cookie)).await;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()["allow"], "POST");

    let cases: [(&str, &[(&str, &str)]); 4] = [
        (
            "cross-site fetch metadata",
            &[("sec-fetch-site", "cross-site")],
        ),
        (
            "same-site fetch metadata",
            &[("sec-fetch-site", "same-site")],
        ),
        ("foreign origin", &[("origin", "https://evil.example")]),
        ("no headers at all", &[]),
    ];
    for (name, headers) in cases {
        let mut builder = http::Request::post("/auth/signout").header("cookie", &cookie);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = site
            .send(builder.body(axum::body::Body::empty()).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{name}");
        assert!(set_cookies(response.headers()).is_empty(), "{name}");
    }
    // Still signed in.
    assert_eq!(
        site.get("/account", Some(&cookie)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn t_d1_sign_out_revokes_upstream_clears_with_mirrored_attributes_and_tombstones() {
    let site = site().await;
    let (_, token) = site.user("bye@example.test").await;
    let cookie = site.cookie(&token);
    assert_eq!(
        site.get("/account", Some(&cookie)).await.status(),
        StatusCode::OK
    );

    let response = site
        .send(form("/auth/signout?return_to=/bye", Some(&cookie), ""))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/bye");
    // Issue 10 point 6: the cache and DOM storage, never every cookie of
    // the domain unless asked.
    assert_eq!(
        response.headers()["clear-site-data"],
        "\"cache\", \"storage\""
    );
    let removal = set_cookie(response.headers(), "__Host-authgate").unwrap();
    assert!(is_removal(&removal));
    assert_eq!(removal.secure(), Some(true));
    assert_eq!(removal.http_only(), Some(true));
    assert_eq!(removal.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(removal.path(), Some("/"));
    assert!(
        response.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("no-store")
    );

    let token = authgate::SessionToken::new(token).unwrap();
    let err = site.client.get_user(&token).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSession, "revoked upstream");
    let calls = site.dev.upstream_calls();
    let after = site.get("/account", Some(&cookie)).await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        site.dev.upstream_calls(),
        calls,
        "tombstone answers without upstream"
    );
}

#[tokio::test]
async fn t_d1_sign_out_without_a_session_is_idempotent() {
    let site = site().await;
    let calls = site.dev.upstream_calls();
    let response = site.send(form("/auth/signout", None, "")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/");
    assert_eq!(site.dev.upstream_calls(), calls);
}

#[tokio::test]
async fn t_d1_sign_out_clears_the_cookie_even_when_the_upstream_is_down() {
    let site = site().await;
    let (_, token) = site.user("down@example.test").await;
    let cookie = site.cookie(&token);
    site.dev.clone().shutdown().await;
    let response = site.send(form("/auth/signout", Some(&cookie), "")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(is_removal(
        &set_cookie(response.headers(), "__Host-authgate").unwrap()
    ));
}

#[tokio::test]
async fn sign_out_scopes_others_and_all() {
    let site = site().await;
    let (_, here) = site.user("multi@example.test").await;
    let there = site.session("multi@example.test", "password-1").await;
    for token in [&here, &there] {
        assert_eq!(
            site.get("/account", Some(&site.cookie(token)))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let response = site
        .send(form(
            "/auth/signout?scope=others",
            Some(&site.cookie(&here)),
            "",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        set_cookie(response.headers(), "__Host-authgate").is_none(),
        "this session kept"
    );
    assert_eq!(
        site.get("/account", Some(&site.cookie(&here)))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        site.get("/account", Some(&site.cookie(&there)))
            .await
            .status(),
        StatusCode::SEE_OTHER,
        "the other session is gone, also from the cache"
    );

    let third = site.session("multi@example.test", "password-1").await;
    assert_eq!(
        site.get("/account", Some(&site.cookie(&third)))
            .await
            .status(),
        StatusCode::OK
    );
    let response = site
        .send(form(
            "/auth/signout?scope=all",
            Some(&site.cookie(&here)),
            "",
        ))
        .await;
    assert!(is_removal(
        &set_cookie(response.headers(), "__Host-authgate").unwrap()
    ));
    for token in [&here, &third] {
        assert_eq!(
            site.get("/account", Some(&site.cookie(token)))
                .await
                .status(),
            StatusCode::SEE_OTHER
        );
    }
    let bad = site
        .send(form("/auth/signout?scope=everything", None, ""))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn t_a1_sign_out_return_to_never_leaves_the_origin() {
    let site = site().await;
    let mut inputs: Vec<String> = [
        "//evil.example",
        "/\\evil.example",
        "https:evil.example",
        "/%09/evil.example",
        "/.//evil.example",
        "https://app.example@evil.example",
        "javascript:alert(1)",
        "/auth/callback?access_token=x",
        "/ok%0d%0aSet-Cookie:%20__Host-authgate=attacker",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/open-redirect-payloads.json"
    );
    match std::fs::read_to_string(corpus) {
        Ok(text) => inputs.extend(serde_json::from_str::<Vec<String>>(&text).unwrap()),
        Err(_) => {
            eprintln!("corpus skipped: {corpus} not found (CI has ../shared beside the repo)")
        }
    }
    let total = inputs.len();
    for input in inputs {
        let path = format!("/auth/signout?return_to={}", urlencode(&input));
        let response = site.send(form(&path, None, "")).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{input:?}");
        let target = location(&response);
        let page = url::Url::parse("https://app.example/some/page").unwrap();
        let resolved = page.join(target).unwrap();
        assert_eq!(resolved.origin(), page.origin(), "{input:?} -> {target}");
        assert!(
            !resolved.path().starts_with("/auth/"),
            "{input:?} -> {target}"
        );
        assert_eq!(
            set_cookies(response.headers()).len(),
            1,
            "{input:?}: only our removal"
        );
    }
    eprintln!("sign-out return_to: {total} inputs through the route, 0 escapes");
}

#[tokio::test]
async fn callback_sessions_record_the_browsers_device() {
    let site = site().await;
    site.user("ua@example.test").await;
    let callback = site.magic_link_callback("ua@example.test").await;
    let response = site
        .land(
            &callback,
            Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
        )
        .await;
    let session = set_cookie(response.headers(), "__Host-authgate").unwrap();
    let token = authgate::SessionToken::new(session.value()).unwrap();
    let sessions = site.client.get_all_sessions(&token).await.unwrap();
    let this = sessions.iter().find(|s| s.token == token).unwrap();
    assert_eq!(this.device(), "Chrome on Linux");
}

/// SECURITY.md T-B6.4: a magic link (or an address confirmation) signs in
/// only after a click. Mail scanners that open every link (HEAD, GET, twice)
/// spend nothing and get no session; a cross-site POST is refused; the
/// click signs in once, and a replay does not.
#[tokio::test]
async fn t_b6_4_email_links_wait_for_a_click_so_scanners_spend_nothing() {
    let site = site().await;
    site.user("scan@example.test").await;
    let callback = site.magic_link_callback("scan@example.test").await;
    let token = query_param(&callback, "access_token").unwrap();
    let calls = site.dev.upstream_calls();

    // The scanner.
    let head = site.send(request("HEAD", &callback, None)).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(set_cookies(head.headers()).is_empty());
    let mut held = None;
    for _ in 0..2 {
        let response = site.get(&callback, None).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "https://app.example/auth/continue");
        assert_private_landing(&response);
        assert!(set_cookie(response.headers(), "__Host-authgate").is_none());
        let cookie = set_cookie(response.headers(), LINK).expect("the link waits in a cookie");
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax));
        assert!(!cookie.value().contains(&token), "encrypted");
        held = Some(format!("{LINK}={}", cookie.value()));
    }
    let held = held.unwrap();
    let page = site.get("/auth/continue", Some(&held)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(set_cookie(page.headers(), "__Host-authgate").is_none());
    let html = body_string(page).await;
    assert!(
        html.contains(r#"<form method="post" action="/auth/continue">"#),
        "{html}"
    );
    assert!(!html.contains(&token));
    assert_eq!(site.dev.upstream_calls(), calls, "nothing spent so far");

    // Without the cookie (another browser, or expired): nothing to continue.
    let lost = site.get("/auth/continue", None).await;
    assert_eq!(lost.status(), StatusCode::BAD_REQUEST);

    // A cross-site POST is refused and leaves the link for the real click.
    let mut cross = form("/auth/continue", Some(&held), "");
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    cross
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let refused = site.send(cross).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(set_cookies(refused.headers()).is_empty());
    assert_eq!(site.dev.upstream_calls(), calls);

    // The click.
    let signed_in = site.send(form("/auth/continue", Some(&held), "")).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_in), "https://app.example/account");
    let session = set_cookie(signed_in.headers(), "__Host-authgate").expect("signed in");
    assert!(is_removal(&set_cookie(signed_in.headers(), LINK).unwrap()));
    let home = body_string(site.get("/", Some(&site.cookie(session.value()))).await).await;
    assert_eq!(home, "home: signed in as scan@example.test");

    // A replay of the same cookie: the grant is spent.
    let replay = site.send(form("/auth/continue", Some(&held), "")).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(replay.headers(), "__Host-authgate").is_none());

    // A tampered cookie is refused.
    let tampered = site
        .get(
            "/auth/continue",
            Some(&format!("{LINK}=AAAA{}", &held[LINK.len() + 1..])),
        )
        .await;
    assert_eq!(tampered.status(), StatusCode::BAD_REQUEST);
    assert!(is_removal(&set_cookie(tampered.headers(), LINK).unwrap()));
}

/// The confirmation can be switched off: the link's GET signs in.
#[tokio::test]
async fn email_links_sign_in_on_get_when_confirmation_is_off() {
    let site = site_with(|config| config.with_email_link_confirmation(false)).await;
    site.user("direct@example.test").await;
    let callback = site.magic_link_callback("direct@example.test").await;
    let response = site.get(&callback, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "https://app.example/account");
    assert!(set_cookie(response.headers(), "__Host-authgate").is_some());
    assert!(set_cookie(response.headers(), LINK).is_none());
}

/// Runs the dev simulator for a sign-in already started (`target` is the
/// upstream URL the start redirected to) and returns the callback path.
async fn simulate_consent(target: &str, name: &str, email: &str) -> String {
    let landing = no_redirect_client()
        .post(target)
        .form(&[("name", name), ("email", email), ("decision", "continue")])
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), StatusCode::SEE_OTHER);
    local_path(landing.headers()["location"].to_str().unwrap())
}

/// SEAM.md M1–M3, issue 9 point 2: two tabs of one browser start a Google
/// and a GitHub sign-in; Altogic carries no `state` back, so the core keeps
/// both flows and picks the one whose provider the exchange names. Each tab
/// lands on its own `return_to`, and the sign-in event names the provider
/// that really signed in.
#[tokio::test]
async fn two_tabs_signing_in_with_two_providers_each_land_on_their_own_page() {
    let (events, mut received) = authgate::events::AuthEvents::channel(64);
    let site = site_with(|config| config.with_events(events)).await;

    // Tab 1 starts Google; tab 2 starts GitHub with the browser's cookies.
    let first = site
        .get("/auth/signin/google?return_to=%2Fa%3Ftab%3D1", None)
        .await;
    let google = location(&first).to_owned();
    let jar = format!(
        "{FLOW}={}",
        set_cookie(first.headers(), FLOW).unwrap().value()
    );
    let second = site
        .get("/auth/signin/github?return_to=%2Fb%3Ftab%3D2", Some(&jar))
        .await;
    let github = location(&second).to_owned();
    let jar = format!(
        "{FLOW}={}",
        set_cookie(second.headers(), FLOW).unwrap().value()
    );

    let google_callback = simulate_consent(&google, "Grace Hopper", "grace@example.test").await;
    let github_callback = simulate_consent(&github, "Ada Lovelace", "ada@example.test").await;

    // The first tab's landing arrives second.
    let landed = site.get(&github_callback, Some(&jar)).await;
    assert_eq!(landed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&landed), "https://app.example/b?tab=2");
    let left = set_cookie(landed.headers(), FLOW).expect("the other flow is kept");
    assert!(!is_removal(&left));
    let jar = format!("{FLOW}={}", left.value());

    let landed = site.get(&google_callback, Some(&jar)).await;
    assert_eq!(landed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&landed), "https://app.example/a?tab=1");
    assert!(is_removal(&set_cookie(landed.headers(), FLOW).unwrap()));

    let mut providers = Vec::new();
    while let Ok(event) = received.try_recv() {
        if let authgate::events::AuthEvent::SignedIn { method, .. } = event {
            providers.push(method.to_string());
        }
    }
    assert_eq!(providers, ["oauth:github", "oauth:google"]);
}

/// A landing for a provider this browser never started while another
/// flow is in flight (login CSRF with a planted landing): nobody is signed
/// in, and the session the exchange created is ended upstream.
#[tokio::test]
async fn a_landing_for_a_provider_never_started_here_is_refused_and_its_session_ended() {
    let site = site().await;
    let started = site.get("/auth/signin/google?return_to=%2Fa", None).await;
    let jar = format!(
        "{FLOW}={}",
        set_cookie(started.headers(), FLOW).unwrap().value()
    );
    // The attacker's own GitHub landing, planted in the victim's browser.
    let github = format!("{}/_auth/github", site.dev.url());
    let callback = simulate_consent(&github, "Mallory", "mallory@example.test").await;
    let calls = site.dev.upstream_calls();
    let response = site.get(&callback, Some(&jar)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(response.headers(), "__Host-authgate").is_none());
    // The victim's own Google flow stays in flight.
    assert!(set_cookie(response.headers(), FLOW).is_none());
    let body = body_string(response).await;
    assert!(body.contains("No sign-in with this provider"), "{body}");
    // The grant exchange, then the sign-out of the session it created.
    assert_eq!(site.dev.upstream_calls(), calls + 2);
}

/// SECURITY.md T-B1, issue 10 points 1 and 3: a failure landing's text is
/// whatever an attacker put in the URL, so the page shows a fixed message
/// chosen by the landing's kind and the text goes to the log only; every
/// refused landing is a `FlowRejected` event with its reason.
#[tokio::test]
async fn t_b1_failure_pages_never_reflect_the_landings_text_and_emit_their_reason() {
    use authgate::events::{AuthEvent, AuthEvents, FlowRejection};
    let (events, mut received) = AuthEvents::channel(64);
    let site = site_with(|config| config.with_events(events)).await;
    let started = site.get("/auth/signin/google?return_to=%2Fa", None).await;
    let jar = format!(
        "{FLOW}={}",
        set_cookie(started.headers(), FLOW).unwrap().value()
    );
    let lure = "Your+account+is+locked.+Call+%2B1+555+0100+or+visit+evil.example";
    for (query, reason, shown) in [
        (
            format!("action=oauth-signin&status=400&error={lure}"),
            FlowRejection::UpstreamRefused,
            "The sign-in service refused this sign-in",
        ),
        (
            format!("action=oauth-signin&status=401&error={lure}"),
            FlowRejection::ConsentDenied,
            "cancelled at the sign-in provider",
        ),
        (
            format!("action=magic-link&status=500&error={lure}"),
            FlowRejection::UpstreamRefused,
            "The sign-in service refused this sign-in",
        ),
        (
            format!("action=magic-link&status=200&access_token=not-a-grant&error={lure}"),
            FlowRejection::UpstreamRefused,
            "The sign-in service refused this sign-in",
        ),
    ] {
        let response = site
            .get(&format!("/auth/callback?{query}"), Some(&jar))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let page = body_string(response).await;
        assert!(page.contains(shown), "{query}: {page}");
        for reflected in ["locked", "evil.example", "0100"] {
            assert!(
                !page.contains(reflected),
                "{query} reflects {reflected}: {page}"
            );
        }
        let mut reasons = Vec::new();
        while let Ok(event) = received.try_recv() {
            if let AuthEvent::FlowRejected { reason, .. } = event {
                reasons.push(reason);
            }
        }
        assert_eq!(reasons, [reason], "{query}");
    }
}

/// Issue 10 point 6: `Clear-Site-Data` on sign-out is configurable;
/// `"cookies"` only on request (it clears the whole registrable domain).
#[tokio::test]
async fn sign_out_clear_site_data_is_configurable() {
    use authgate::ClearSiteData;
    for (directives, expected) in [
        (
            vec![ClearSiteData::Cache, ClearSiteData::Cookies],
            Some("\"cache\", \"cookies\""),
        ),
        (vec![], None),
    ] {
        let site = site_with(|config| config.with_clear_site_data(&directives)).await;
        let (_, token) = site.user("csd@example.test").await;
        let response = site
            .send(form("/auth/signout", Some(&site.cookie(&token)), ""))
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response
                .headers()
                .get("clear-site-data")
                .map(|v| v.to_str().unwrap()),
            expected
        );
    }
}

/// Issue 10 point 2: a failed password-reset link gets its own page and
/// way out, and an app can send it to its own "ask for a new link" page.
#[tokio::test]
async fn reset_link_failures_have_their_own_page_or_the_apps() {
    let landing = "/auth/callback?action=reset-pwd&status=400&error=Link+expired";
    let site = site().await;
    let response = site.get(landing, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let page = body_string(response).await;
    assert!(
        page.contains("<title>Password reset link not accepted</title>"),
        "{page}"
    );
    assert!(page.contains("Ask for a new link"), "{page}");
    assert!(!page.contains("Link expired"), "{page}");

    let site =
        site_with(|config| config.with_reset_failure_page("/forgot-password").unwrap()).await;
    let response = site.get(landing, None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&response),
        "https://app.example/forgot-password?notice=upstream-refused"
    );
}
