//! Seam v2 in the core, proven with the test kit's in-memory upstream in
//! its modes: rotation (SECURITY.md R10), expiry caps (T-H2), revocation
//! horizons and user-wide marks (SEAM.md M14), sealed and chunked sessions
//! (T-C4, M13, M17).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use authgate::events::SignInMethod;
use authgate::test::{Fault, MemoryUpstream, SessionChange, TestKit};
use authgate::{Auth, AuthConfig, CurrentUser, ErrorKind, Grant, SessionToken};
use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use http::header::{COOKIE, SET_COOKIE};
use http::{Response, StatusCode};
use tower::ServiceExt as _;

type App = authgate::AuthService<Router>;

fn config() -> AuthConfig {
    AuthConfig::new("https://app.test")
        .unwrap()
        .with_key([3u8; 64])
        .unwrap()
}

fn app(kit: &TestKit) -> App {
    let router = Router::new()
        .route(
            "/account",
            get(|user: CurrentUser| async move { user.id.clone() }),
        )
        .route(
            "/tokens",
            get(|auth: Auth, _user: CurrentUser| async move {
                let before = auth.token().map(|t| t.expose().to_owned());
                let now = auth.session().await.map(|s| s.token.expose().to_owned());
                format!("{} {}", before.unwrap_or_default(), now.unwrap_or_default())
            }),
        )
        .route(
            "/adopt",
            post(
                |auth: Auth, Query(query): Query<Vec<(String, String)>>| async move {
                    let token = SessionToken::new(query[0].1.clone()).unwrap();
                    auth.sign_in(Grant::new(token, SignInMethod::Password))
                        .unwrap();
                    "adopted"
                },
            ),
        )
        .route(
            "/form",
            post(|_: authgate::SameOrigin| async move { "posted" }),
        )
        .route(
            "/ended",
            get(|auth: Auth| async move { auth.session_ended().await.to_string() }),
        )
        .route(
            "/debug",
            get(|auth: Auth| async move { format!("{auth:?}") }),
        )
        .route(
            "/signout-local",
            post(|auth: Auth| async move {
                auth.sign_out_locally();
                "signed out here"
            }),
        )
        .route(
            "/grant",
            post(|auth: Auth| async move {
                let token = SessionToken::new("x".repeat(9_000)).unwrap();
                match auth.sign_in(Grant::new(token, SignInMethod::Password)) {
                    Ok(()) => "signed in".into_response(),
                    Err(err) => {
                        assert_eq!(err.kind(), ErrorKind::SessionTooLarge);
                        (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
                    }
                }
            }),
        )
        .with_state(());
    kit.layer().layer(router)
}

async fn send(app: &App, request: http::Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

async fn body(response: Response<Body>) -> String {
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn set_value(kit: &TestKit, response: &Response<Body>) -> String {
    match kit.session_change(response) {
        SessionChange::Set(value) => value,
        other => panic!("expected a new session cookie, got {other:?}"),
    }
}

/// A kit on `upstream`, its app, a user, and requests carrying a session of
/// that user that has been served once (so the cache holds it).
async fn signed_in_and_warm(
    upstream: MemoryUpstream,
) -> (
    TestKit,
    App,
    authgate::test::TestUser,
    authgate::test::TestRequest,
) {
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let request = kit.signed_in(&user);
    assert_eq!(
        send(&app, request.get("/account")).await.status(),
        StatusCode::OK
    );
    (kit, app, user, request)
}

/// R10: 100 concurrent requests carrying a session that is due for a
/// refresh make one rotation, and every one of them sets the same new
/// cookie; a request still carrying the old cookie inside the successor
/// window is served and healed; past it, the old session is gone.
#[tokio::test(start_paused = true)]
async fn r10_a_due_session_rotates_once_and_every_waiting_request_sets_the_same_cookie() {
    let upstream = MemoryUpstream::default().with_rotation(Duration::from_secs(300));
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let old = kit.session_cookie(&user);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            let request = kit.with_session_cookie(&old).get("/account");
            tokio::spawn(async move { app.oneshot(request).await.unwrap() })
        })
        .collect();
    let mut values = HashSet::new();
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        values.insert(set_value(&kit, &response));
    }
    assert_eq!(kit.upstream().rotations(), 1, "one rotation");
    assert_eq!(kit.upstream_lookups(), 1, "one lookup");
    assert_eq!(values.len(), 1, "every response sets the same cookie");
    let new = values.into_iter().next().unwrap();
    assert_ne!(new, old);

    // The new cookie is warm: served from the cache, nothing set.
    let response = send(&app, kit.with_session_cookie(&new).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(kit.session_change(&response), SessionChange::Unchanged);
    assert_eq!(kit.upstream_lookups(), 1);

    // A sibling that left with the old cookie: served and healed.
    tokio::time::advance(Duration::from_secs(20)).await;
    let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(set_value(&kit, &response), new);
    assert_eq!(kit.upstream_lookups(), 1, "no second refresh");

    // Past the successor window the old session is simply dead.
    tokio::time::advance(Duration::from_secs(11)).await;
    let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
    assert_ne!(response.status(), StatusCode::OK);
    assert_eq!(kit.session_change(&response), SessionChange::Cleared);

    // Due again: the upstream's recheck time ends the new cookie's freshness.
    tokio::time::advance(Duration::from_secs(300)).await;
    let response = send(&app, kit.with_session_cookie(&new).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let newer = set_value(&kit, &response);
    assert!(newer != new && newer != old);
    assert_eq!(kit.upstream().rotations(), 2);
}

/// `Auth::token` is the cookie's token; `Auth::session` resolves first, so
/// after a rotation in the same request it is the new session (SEAM.md M16).
#[tokio::test]
async fn auth_session_is_the_rotated_session() {
    let upstream = MemoryUpstream::default().with_rotation(Duration::from_secs(300));
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let response = send(&app, kit.signed_in(&user).get("/tokens")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body(response).await;
    let (before, now) = text.split_once(' ').unwrap();
    assert!(!before.is_empty() && !now.is_empty());
    assert_ne!(before, now);
}

/// SEAM.md M14, issue 9 point 5: a lookup is held at the upstream for 2 s;
/// meanwhile the same user signs out everywhere from another browser. When
/// the held answer arrives, the first browser is not signed in, neither
/// then nor on its next request.
#[tokio::test(start_paused = true)]
async fn m14_a_held_lookup_never_signs_in_a_browser_signed_out_everywhere_meanwhile() {
    let kit = TestKit::with_config(config());
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let first = kit.signed_in(&user);
    let second = kit.signed_in(&user);
    let response = send(&app, second.get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);

    kit.fail(&user, Fault::Delay(Duration::from_secs(2)));
    let held = {
        let app = app.clone();
        let request = first.get("/account");
        tokio::spawn(async move { app.oneshot(request).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lookups = kit.upstream_lookups();
    assert_eq!(lookups, 2, "the first browser's lookup is at the upstream");

    let signed_out = send(&app, second.post_form("/auth/signout?scope=all", "")).await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert_eq!(kit.session_change(&signed_out), SessionChange::Cleared);
    assert_eq!(kit.sessions_of(&user), 0);

    let response = held.await.unwrap();
    assert_ne!(response.status(), StatusCode::OK, "not signed in then");
    assert_eq!(kit.session_change(&response), SessionChange::Cleared);
    let response = send(&app, first.get("/account")).await;
    assert_ne!(response.status(), StatusCode::OK, "nor on the next request");
}

/// SECURITY.md T-H2 and SEAM.md M5: the session's expiry caps the cache's
/// deadlines, so an expired session is never served stale during an
/// outage (a session without expiry is, within the stale window), and a
/// sign-in's cookie lives no longer than its session.
#[tokio::test(start_paused = true)]
async fn t_h2_an_expired_session_is_never_served_stale() {
    for (lifetime, served_stale) in [(Some(30), false), (None, true)] {
        let mut upstream = MemoryUpstream::default();
        if let Some(secs) = lifetime {
            upstream = upstream.with_session_lifetime(Duration::from_secs(secs));
        }
        let (kit, app, user, request) = signed_in_and_warm(upstream).await;
        kit.fail(&user, Fault::Unavailable);
        tokio::time::advance(Duration::from_secs(31)).await;
        let response = send(&app, request.get("/account")).await;
        let expected = if served_stale {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        assert_eq!(response.status(), expected, "lifetime {lifetime:?}");
        // An outage never signs anyone out.
        assert_eq!(kit.session_change(&response), SessionChange::Unchanged);
    }

    let upstream = MemoryUpstream::default().with_session_lifetime(Duration::from_secs(30));
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let landed = send(&app, kit.anonymous().get(&kit.magic_link(&user))).await;
    assert_eq!(landed.status(), StatusCode::SEE_OTHER);
    let line = landed
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .find(|c| c.name() == "__Host-authgate")
        .unwrap();
    let max_age = line.max_age().unwrap().whole_seconds();
    assert!((1..=30).contains(&max_age), "Max-Age {max_age}");
}

/// SEAM.md M14: for an upstream that cannot end sessions, a local
/// sign-out's tombstone lasts until the session expires, not for the
/// cache's horizon; for one that can, the upstream is asked again after
/// the horizon.
#[tokio::test(start_paused = true)]
async fn tombstones_last_as_long_as_the_upstream_revocation_horizon_says() {
    let hour = Duration::from_secs(3600);
    for (until_expiry, asked_again) in [(true, false), (false, true)] {
        let mut upstream = MemoryUpstream::default().with_session_lifetime(hour);
        if until_expiry {
            upstream = upstream.with_revocation_until_expiry();
        }
        let (kit, app, _, request) = signed_in_and_warm(upstream).await;
        let out = send(&app, request.post_form("/signout-local", "")).await;
        assert_eq!(kit.session_change(&out), SessionChange::Cleared);
        // A sign-out in a handler clears site data too (issue 10 point 6).
        assert_eq!(out.headers()["clear-site-data"], "\"cache\", \"storage\"");
        // The browser keeps sending the old cookie (a copy, a replay).
        tokio::time::advance(Duration::from_secs(600)).await;
        let lookups = kit.upstream_lookups();
        let response = send(&app, request.get("/account")).await;
        let was_asked = kit.upstream_lookups() > lookups;
        assert_eq!(was_asked, asked_again, "until_expiry={until_expiry}");
        if until_expiry {
            assert_ne!(response.status(), StatusCode::OK);
        }
    }
}

/// SEAM.md M13, M17, SECURITY.md T-C4: a sealed session larger than one
/// cookie is split into chunks; the browser's chunks are joined into the
/// cache key, so the second request costs no upstream call, and the cookie
/// never shows the token.
#[tokio::test]
async fn sealed_sessions_over_one_cookie_are_chunked_and_stay_warm() {
    let upstream = MemoryUpstream::default()
        .with_sealed_sessions()
        .with_token_bytes(2_000);
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let request = kit.signed_in(&user);
    let probe = request.get("/account");
    let header = probe.headers()[COOKIE].to_str().unwrap().to_owned();
    assert!(header.contains("__Host-authgate__0=") && header.contains("__Host-authgate__1="));
    assert!(!header.contains("__Host-authgate="));
    for lookups in [1, 1] {
        let response = send(&app, request.get("/account")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(kit.upstream_lookups(), lookups);
    }

    // A sign-in writes the chunks, each within a browser's 4096 bytes.
    let landed = send(&app, kit.anonymous().get(&kit.magic_link(&user))).await;
    assert_eq!(landed.status(), StatusCode::SEE_OTHER);
    let chunks: Vec<_> = landed
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .filter(|c| c.name().starts_with("__Host-authgate__"))
        .collect();
    assert_eq!(chunks.len(), 2);
    assert!(
        chunks
            .iter()
            .all(|c| c.name().len() + c.value().len() <= 4096)
    );
    let value = set_value(&kit, &landed);
    let response = send(&app, kit.with_session_cookie(&value).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(kit.upstream_lookups(), 1, "primed by the sign-in");
}

/// A chunked sealed session that rotates: every chunk is replaced.
#[tokio::test]
async fn a_rotated_chunked_session_replaces_every_chunk() {
    let upstream = MemoryUpstream::default()
        .with_sealed_sessions()
        .with_token_bytes(2_000)
        .with_rotation(Duration::from_secs(300));
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let old = kit.session_cookie(&user);
    let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let new = set_value(&kit, &response);
    assert_ne!(new, old);
    let response = send(&app, kit.with_session_cookie(&new).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(kit.session_change(&response), SessionChange::Unchanged);
    assert_eq!(kit.upstream().rotations(), 1);
}

/// SECURITY.md T-C4: a session over the cookie ceiling fails the sign-in
/// with a page that says why (not a 503: a retry cannot help), sets no
/// cookie, and the upstream session just created is ended.
#[tokio::test]
async fn t_c4_a_session_over_the_ceiling_fails_clearly_and_is_ended_upstream() {
    let upstream = MemoryUpstream::default().with_token_bytes(5_000);
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let landed = send(&app, kit.anonymous().get(&kit.magic_link(&user))).await;
    assert_eq!(landed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(kit.session_change(&landed), SessionChange::Unchanged);
    let text = body(landed).await;
    assert!(
        text.contains("too large") && text.contains("will not help"),
        "{text}"
    );
    assert_eq!(kit.sessions_of(&user), 0, "the new session was ended");

    // Through the handle: an error, and nothing set.
    let response = send(&app, kit.anonymous().post_form("/grant", "")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(SET_COOKIE).is_none());
}

/// SEAM.md M2–M3, SECURITY.md T-B1: with `state` correlation each flow has
/// its own cookie, and the core checks the landing's `state` against it
/// before the upstream sees the code: a repeated or unknown `state` is
/// refused without spending the code; two flows in flight both land.
#[tokio::test]
async fn t_b1_state_flows_are_checked_by_the_core_before_the_upstream() {
    let kit = TestKit::with_upstream(config(), MemoryUpstream::default().with_state_correlation());
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let start = |return_to: &str| {
        let app = app.clone();
        let request = kit
            .anonymous()
            .get(&format!("/auth/signin/test?return_to={return_to}"));
        async move {
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            let target = response.headers()["location"].to_str().unwrap().to_owned();
            let state = target.split_once("state=").unwrap().1.to_owned();
            let flow = response
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
                .find(|c| c.name().starts_with("__Host-authgate-flow."))
                .unwrap();
            (state, format!("{}={}", flow.name(), flow.value()))
        }
    };
    let (state_a, cookie_a) = start("/a").await;
    let (state_b, cookie_b) = start("/b").await;
    assert_ne!(cookie_a, cookie_b, "one cookie per flow");
    let jar = format!("{cookie_a}; {cookie_b}");
    let land = |query: String| {
        let app = app.clone();
        let mut request = kit.anonymous().get(&format!("/auth/callback?{query}"));
        request.headers_mut().insert(COOKIE, jar.parse().unwrap());
        async move { app.oneshot(request).await.unwrap() }
    };
    let code = kit.authorization_code(&user);
    for refused in [
        format!("state={state_a}&state={state_a}&code={code}"),
        format!("state={state_b}x&code={code}"),
        format!("state=&code={code}"),
        format!("state={state_a}&code={code}&code={code}"),
        format!("state={state_a}&code={code}&provider=other&provider=other"),
    ] {
        let response = land(refused.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{refused}");
        assert_eq!(kit.session_change(&response), SessionChange::Unchanged);
    }
    // The code was never spent: the real landings still work, each on its
    // own page, the second tab's first.
    let response = land(format!("state={state_b}&code={code}")).await;
    assert_eq!(response.headers()["location"], "https://app.test/b");
    set_value(&kit, &response);
    let code = kit.authorization_code(&user);
    let response = land(format!("state={state_a}&code={code}")).await;
    assert_eq!(response.headers()["location"], "https://app.test/a");
    set_value(&kit, &response);
}

/// A session rotated just before it is signed out: the successor is what
/// ends, upstream and here, whichever cookie the sign-out carries; neither
/// cookie works afterwards (the successor mark does not outlive it).
#[tokio::test(start_paused = true)]
async fn signing_out_a_rotated_session_ends_its_successor_too() {
    for sign_out_with_old in [true, false] {
        let upstream = MemoryUpstream::default().with_rotation(Duration::from_secs(300));
        let kit = TestKit::with_upstream(config(), upstream);
        let app = app(&kit);
        let user = kit.user("ada@example.test");
        let old = kit.session_cookie(&user);
        let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
        let new = set_value(&kit, &response);
        assert_eq!(kit.sessions_of(&user), 1);

        let with = if sign_out_with_old { &old } else { &new };
        let out = send(
            &app,
            kit.with_session_cookie(with).post_form("/auth/signout", ""),
        )
        .await;
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        assert_eq!(kit.session_change(&out), SessionChange::Cleared);
        assert_eq!(kit.sessions_of(&user), 0, "ended upstream");
        for cookie in [&old, &new] {
            let response = send(&app, kit.with_session_cookie(cookie).get("/account")).await;
            assert_ne!(
                response.status(),
                StatusCode::OK,
                "old={sign_out_with_old}, cookie is new: {}",
                cookie == &new
            );
        }
    }
}

/// SEAM.md review: anyone can post any cookie to the sign-out route; a
/// value that resolves to nobody is not sent upstream and leaves no
/// tombstone (which would otherwise pile up), only the invalid answer's
/// short negative entry.
#[tokio::test(start_paused = true)]
async fn signing_out_a_junk_cookie_leaves_no_tombstone() {
    let kit = TestKit::with_config(config());
    let app = app(&kit);
    let junk = "f".repeat(48);
    let out = send(
        &app,
        kit.with_session_cookie(&junk)
            .post_form("/auth/signout", ""),
    )
    .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(kit.session_change(&out), SessionChange::Cleared);
    assert_eq!(kit.upstream_lookups(), 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    send(&app, kit.with_session_cookie(&junk).get("/account")).await;
    assert_eq!(
        kit.upstream_lookups(),
        2,
        "asked again once the negative entry expired"
    );
}

/// SECURITY.md T-G1: the `Auth` handle's `Debug` never shows the cookie.
#[tokio::test]
async fn t_g1_auth_debug_never_shows_the_session() {
    for upstream in [
        MemoryUpstream::default(),
        MemoryUpstream::default().with_sealed_sessions(),
    ] {
        let kit = TestKit::with_upstream(config(), upstream);
        let app = app(&kit);
        let user = kit.user("ada@example.test");
        let value = kit.session_cookie(&user);
        let response = send(&app, kit.with_session_cookie(&value).get("/debug")).await;
        let text = body(response).await;
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.contains(&value[..16]), "{text}");
    }
}

/// Issue 10 point 4: signing in over another session ends the replaced
/// session here at once and upstream in the background (never blocking
/// the new sign-in), so it does not keep working on other instances.
#[tokio::test]
async fn signing_in_over_a_session_ends_the_replaced_one() {
    let kit = TestKit::with_config(config());
    let app = app(&kit);
    let ada = kit.user("ada@example.test");
    let bob = kit.user("bob@example.test");
    let old = kit.session_cookie(&ada);
    let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // A password sign-in in a handler (`Auth::sign_in`) over Ada's session.
    let bobs = kit.session(&bob);
    let adopt = format!("/adopt?token={}", bobs.expose());
    let landed = send(&app, kit.with_session_cookie(&old).post_form(&adopt, "")).await;
    assert_eq!(landed.status(), StatusCode::OK);
    let new = set_value(&kit, &landed);
    assert_ne!(new, old);
    // Refused here at once, whatever the upstream says.
    let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
    assert_ne!(response.status(), StatusCode::OK);
    // Ended upstream in the background.
    for _ in 0..100 {
        if kit.sessions_of(&ada) == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        kit.sessions_of(&ada),
        0,
        "the replaced session is ended upstream"
    );
    let response = send(&app, kit.with_session_cookie(&new).get("/account")).await;
    assert_eq!(body(response).await, bob.id());
}

/// Issue 10 point 2: a used magic link opened again by the browser it
/// signed in goes home with a notice; opened by a signed-out browser, the
/// page is titled for a link, not a generic sign-in failure.
#[tokio::test]
async fn a_used_link_opened_again_while_signed_in_goes_home_with_a_notice() {
    let kit = TestKit::with_config(config());
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let link = kit.magic_link(&user);
    let landed = send(&app, kit.anonymous().get(&link)).await;
    let session = set_value(&kit, &landed);

    let again = send(&app, kit.with_session_cookie(&session).get(&link)).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        again.headers()["location"],
        "https://app.test/?notice=replayed-grant"
    );
    assert_eq!(kit.session_change(&again), SessionChange::Unchanged);

    let elsewhere = send(&app, kit.anonymous().get(&link)).await;
    assert_eq!(elsewhere.status(), StatusCode::BAD_REQUEST);
    let page = body(elsewhere).await;
    assert!(
        page.contains("<title>Sign-in link not accepted</title>"),
        "{page}"
    );
}

/// Issue 10 point 5: every page the layer draws itself goes through the
/// app's renderer with a typed context; texts are authgate's own.
#[tokio::test]
async fn every_layer_page_goes_through_the_apps_renderer() {
    use authgate::pages::PageContext;
    let config = config().with_page_renderer(|page: &PageContext<'_>| {
        format!(
            "<main data-kind=\"{:?}\" data-status=\"{}\" data-retry=\"{:?}\">{}</main>",
            page.kind,
            page.status.as_u16(),
            page.retry_after,
            page.title
        )
    });
    let kit = TestKit::with_config(config);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let link = kit.magic_link(&user);
    send(&app, kit.anonymous().get(&link)).await;
    let html = |request: http::Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            (status, body(response).await)
        }
    };
    let cross_site = http::Request::post("/auth/signout")
        .header("accept", "text/html")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let cross_site_form = http::Request::post("/form")
        .header("accept", "text/html")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    let cases = [
        (kit.anonymous().get(&link), "LandingRefused(MagicLink)", 400),
        (
            kit.anonymous().get("/auth/signin/nope"),
            "UnknownProvider",
            404,
        ),
        (
            kit.anonymous().get("/auth/signout"),
            "MethodNotAllowed",
            405,
        ),
        (cross_site, "CrossSiteRefused", 403),
        (cross_site_form, "CrossSiteRefused", 403),
    ];
    for (request, kind, status) in cases {
        let (got, page) = html(request).await;
        assert_eq!(got.as_u16(), status, "{kind}: {page}");
        assert!(
            page.starts_with(&format!(
                "<main data-kind=\"{kind}\" data-status=\"{status}\""
            )),
            "{kind}: {page}"
        );
    }
    // An outage with no usable cached user: the 503 page, with its retry.
    let request = kit.signed_in(&user);
    kit.fail(&user, Fault::Unavailable);
    let (status, page) = html(request.get("/account")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.starts_with(
            "<main data-kind=\"Unavailable\" data-status=\"503\" data-retry=\"Some(5)\">"
        ),
        "{page}"
    );
}

/// SECURITY.md T-B6.4, issue 10 point 4: an e-mail link that would switch
/// a signed-in browser to another account asks first, naming both; the new
/// session waits sealed; "stay" ends it upstream, "switch" signs it in and
/// ends the replaced one. A link for the account already signed in just
/// signs in.
#[tokio::test]
async fn an_email_link_for_another_account_asks_before_switching() {
    let kit = TestKit::with_config(config());
    let app = app(&kit);
    let ada = kit.user("ada@example.test");
    let mallory = kit.user("mallory@example.test");
    let mine = kit.session_cookie(&ada);
    let pending_cookie = |response: &Response<Body>| {
        response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
            .find(|c| c.name() == "__Host-authgate-pending")
            .map(|c| format!("{}={}", c.name(), c.value()))
    };
    let answer = |choice: &str, pending: &str| {
        let mut request = kit
            .with_session_cookie(&mine)
            .post_form(&format!("/auth/continue?account={choice}"), "");
        let cookies = format!("{}; {pending}", request.headers()[COOKIE].to_str().unwrap());
        request
            .headers_mut()
            .insert(COOKIE, cookies.parse().unwrap());
        request
    };

    for (choice, switched) in [("stay", false), ("switch", true)] {
        let link = kit.magic_link(&mallory);
        let asked = send(&app, kit.with_session_cookie(&mine).get(&link)).await;
        assert_eq!(asked.status(), StatusCode::OK, "{choice}");
        assert_eq!(kit.session_change(&asked), SessionChange::Unchanged);
        let pending = pending_cookie(&asked).expect("the new session waits sealed");
        assert!(!pending.contains("mallory"));
        let page = body(asked).await;
        assert!(page.contains("ada@example.test"), "{page}");
        assert!(page.contains("mallory@example.test"), "{page}");
        assert_eq!(kit.sessions_of(&mallory), 1, "the pending session");

        let answered = send(&app, answer(choice, &pending)).await;
        assert_eq!(answered.status(), StatusCode::SEE_OTHER, "{choice}");
        if switched {
            let new = set_value(&kit, &answered);
            let who = send(&app, kit.with_session_cookie(&new).get("/account")).await;
            assert_eq!(body(who).await, mallory.id());
        } else {
            assert_eq!(kit.session_change(&answered), SessionChange::Unchanged);
            assert!(
                answered.headers()["location"]
                    .to_str()
                    .unwrap()
                    .ends_with("notice=account-switch-cancelled")
            );
            assert_eq!(
                kit.sessions_of(&mallory),
                0,
                "the pending session was ended"
            );
            let who = send(&app, kit.with_session_cookie(&mine).get("/account")).await;
            assert_eq!(body(who).await, ada.id(), "still Ada");
        }
    }

    // The account already signed in: no question.
    let again = kit.magic_link(&ada);
    let landed = send(&app, kit.with_session_cookie(&mine).get(&again)).await;
    assert_eq!(landed.status(), StatusCode::SEE_OTHER);
    assert!(pending_cookie(&landed).is_none());
}

/// Issue 11 point 2: a browser whose session ended elsewhere is told so.
/// `Auth::session_ended` is true only when the cookie named a session the
/// upstream refused (the layer removes it); a page navigation that needs a
/// user goes to the sign-in page with `notice=session-ended`. No cookie, a
/// live session or a malformed cookie: false, and no notice.
#[tokio::test]
async fn a_session_ended_elsewhere_is_told_apart_from_no_session() {
    let kit = TestKit::with_upstream(config(), MemoryUpstream::default());
    let app = app(&kit);
    let live = kit.user("live@example.test");
    let ended = kit.user("ended@example.test");
    kit.fail(&ended, Fault::Invalid);

    let answer = send(&app, kit.signed_in(&ended).get("/ended")).await;
    assert_eq!(kit.session_change(&answer), SessionChange::Cleared);
    assert_eq!(body(answer).await, "true");
    let account = send(&app, kit.signed_in(&ended).get("/account")).await;
    assert_eq!(account.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        account.headers()[http::header::LOCATION],
        "/signin?return_to=%2Faccount&notice=session-ended"
    );

    assert_eq!(
        body(send(&app, kit.signed_in(&live).get("/ended")).await).await,
        "false"
    );
    assert_eq!(
        body(send(&app, kit.anonymous().get("/ended")).await).await,
        "false"
    );
    let anonymous = send(&app, kit.anonymous().get("/account")).await;
    assert_eq!(
        anonymous.headers()[http::header::LOCATION],
        "/signin?return_to=%2Faccount"
    );
    let mut junk = kit.anonymous().get("/ended");
    let cookie = format!("{}=%%%not-a-session", config().session_cookie_name());
    junk.headers_mut()
        .insert(http::header::COOKIE, cookie.parse().unwrap());
    let answer = send(&app, junk).await;
    assert_eq!(kit.session_change(&answer), SessionChange::Cleared);
    assert_eq!(
        body(answer).await,
        "false",
        "a malformed cookie ended nothing"
    );
}

// ---------------------------------------------------------------------------
// OpenID Connect Back-Channel Logout 1.0 (SECURITY.md §5 item 7): the
// route, the `sid`/`sub` marks, and hostile requests. The kit's provider
// keeps every session valid afterwards (like a locally verified ID token),
// so only the layer's marks can end them.

fn back_channel_kit() -> (TestKit, App) {
    let upstream = MemoryUpstream::default()
        .with_sealed_sessions()
        .with_revocation_until_expiry()
        .with_back_channel_logout();
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    (kit, app)
}

/// The provider's POST: a form with `logout_token`, no cookies, cross-site.
fn logout_post(body: impl Into<Body>) -> http::Request<Body> {
    http::Request::post("/auth/backchannel-logout")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.into())
        .unwrap()
}

async fn post_logout_token(app: &App, token: &str) -> Response<Body> {
    let form = format!("logout_token={token}");
    send(app, logout_post(form)).await
}

async fn account_status(app: &App, kit: &TestKit, cookie: &str) -> StatusCode {
    send(app, kit.with_session_cookie(cookie).get("/account"))
        .await
        .status()
}

/// `sid`: the logout ends the one session the provider names, cached here
/// or not, and not the user's other sessions; the token is good once; the
/// answer is an empty, uncacheable 200 (§2.8).
#[tokio::test]
async fn back_channel_logout_by_sid_ends_that_session_only() {
    let (kit, app) = back_channel_kit();
    let user = kit.user("ada@example.test");
    let laptop = kit.session_cookie(&user);
    let phone = kit.session_cookie(&user);
    let unseen = kit.session_cookie(&user);
    assert_eq!(account_status(&app, &kit, &laptop).await, StatusCode::OK);
    assert_eq!(account_status(&app, &kit, &phone).await, StatusCode::OK);

    let token = kit.logout_token(&user, Some(&laptop));
    let response = post_logout_token(&app, &token).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(body(response).await, "");

    let lookups = kit.upstream_lookups();
    let response = send(&app, kit.with_session_cookie(&laptop).get("/account")).await;
    assert_ne!(response.status(), StatusCode::OK, "the named session ends");
    assert_eq!(kit.session_change(&response), SessionChange::Cleared);
    assert_eq!(kit.upstream_lookups(), lookups, "refused from the mark");
    assert_eq!(account_status(&app, &kit, &phone).await, StatusCode::OK);
    assert_eq!(account_status(&app, &kit, &unseen).await, StatusCode::OK);

    // A session of the ended provider session never seen here yet is
    // refused when its lookup completes.
    let token = kit.logout_token(&user, Some(&unseen));
    assert_eq!(
        post_logout_token(&app, &token).await.status(),
        StatusCode::OK
    );
    assert_ne!(account_status(&app, &kit, &unseen).await, StatusCode::OK);
    assert_eq!(account_status(&app, &kit, &phone).await, StatusCode::OK);

    // Replayed: the provider's verifier refuses it.
    let response = post_logout_token(&app, &token).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(response).await, r#"{"error":"invalid_request"}"#);
}

/// `sub` alone: every session of the user ends, cached or in flight;
/// another user keeps theirs; a sign-in after the logout works.
#[tokio::test(start_paused = true)]
async fn back_channel_logout_by_sub_ends_every_session_of_the_user_and_a_lookup_in_flight() {
    let (kit, app) = back_channel_kit();
    let ada = kit.user("ada@example.test");
    let bob = kit.user("bob@example.test");
    let warm = kit.session_cookie(&ada);
    let held = kit.session_cookie(&ada);
    let bobs = kit.session_cookie(&bob);
    assert_eq!(account_status(&app, &kit, &warm).await, StatusCode::OK);
    assert_eq!(account_status(&app, &kit, &bobs).await, StatusCode::OK);

    kit.fail(&ada, Fault::Delay(Duration::from_secs(2)));
    let in_flight = {
        let app = app.clone();
        let request = kit.with_session_cookie(&held).get("/account");
        tokio::spawn(async move { app.oneshot(request).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The kit reports when each provider session signed in (`iat` is
    // whole seconds, and a session of the logout's own second is spared):
    // let a real second pass.
    std::thread::sleep(Duration::from_millis(1100));
    let token = kit.logout_token(&ada, None);
    assert_eq!(
        post_logout_token(&app, &token).await.status(),
        StatusCode::OK
    );

    let response = in_flight.await.unwrap();
    assert_ne!(
        response.status(),
        StatusCode::OK,
        "the held answer is refused"
    );
    kit.heal(&ada);
    assert_ne!(account_status(&app, &kit, &warm).await, StatusCode::OK);
    assert_eq!(account_status(&app, &kit, &bobs).await, StatusCode::OK);
    let fresh = kit.session_cookie(&ada);
    assert_eq!(
        account_status(&app, &kit, &fresh).await,
        StatusCode::OK,
        "a sign-in after the logout is served"
    );
}

/// R10 with back-channel logout: the provider session keeps its `sid`
/// across a refresh, so the logout ends the new cookie and the old one
/// whose successor it was.
#[tokio::test(start_paused = true)]
async fn back_channel_logout_ends_a_rotated_session_old_and_new_cookie() {
    let upstream = MemoryUpstream::default()
        .with_sealed_sessions()
        .with_revocation_until_expiry()
        .with_back_channel_logout()
        .with_rotation(Duration::from_secs(300));
    let kit = TestKit::with_upstream(config(), upstream);
    let app = app(&kit);
    let user = kit.user("ada@example.test");
    let old = kit.session_cookie(&user);
    let response = send(&app, kit.with_session_cookie(&old).get("/account")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let new = set_value(&kit, &response);

    let token = kit.logout_token(&user, Some(&new));
    assert_eq!(
        post_logout_token(&app, &token).await.status(),
        StatusCode::OK
    );
    for (name, cookie) in [("new", &new), ("old, inside the successor window", &old)] {
        let response = send(&app, kit.with_session_cookie(cookie).get("/account")).await;
        assert_ne!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(
            kit.session_change(&response),
            SessionChange::Cleared,
            "{name}"
        );
    }
    assert_eq!(
        kit.upstream().rotations(),
        1,
        "no refresh for an ended session"
    );
}

/// Hostile and malformed requests get a bare 400 (405 for other methods)
/// with `no-store`, never reflect their input, end nothing, and a body
/// over 16 KiB is not read to its end (declared or streamed).
#[tokio::test]
async fn back_channel_logout_refuses_malformed_requests_without_reflecting_them() {
    let (kit, app) = back_channel_kit();
    let user = kit.user("ada@example.test");
    let session = kit.session_cookie(&user);
    assert_eq!(account_status(&app, &kit, &session).await, StatusCode::OK);
    let valid = kit.logout_token(&user, Some(&session));

    let response = send(
        &app,
        http::Request::get(format!("/auth/backchannel-logout?logout_token={valid}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");

    let probe = "<script>alert(1)</script>";
    let streamed = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 1024]))),
    );
    let cases: Vec<(&str, http::Request<Body>)> = vec![
        (
            "JSON body",
            http::Request::post("/auth/backchannel-logout")
                .header("content-type", "application/json")
                .body(Body::from(format!(r#"{{"logout_token":"{valid}"}}"#)))
                .unwrap(),
        ),
        ("no token", logout_post("other=1")),
        ("empty token", logout_post("logout_token=")),
        (
            "two tokens",
            logout_post(format!("logout_token={valid}&logout_token={valid}")),
        ),
        ("forged token", logout_post(format!("logout_token={probe}"))),
        (
            "declared over 16 KiB",
            http::Request::post("/auth/backchannel-logout")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-length", "17000")
                .body(Body::from(format!("logout_token={valid}")))
                .unwrap(),
        ),
        (
            "streamed over 16 KiB",
            logout_post(Body::from_stream(streamed)),
        ),
    ];
    for (name, request) in cases {
        let response = send(&app, request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{name}");
        let text = body(response).await;
        assert_eq!(text, r#"{"error":"invalid_request"}"#, "{name}");
    }
    assert_eq!(
        account_status(&app, &kit, &session).await,
        StatusCode::OK,
        "nothing was ended"
    );
    // The valid token was never spent by the refused requests.
    assert_eq!(
        post_logout_token(&app, &valid).await.status(),
        StatusCode::OK
    );
    assert_ne!(account_status(&app, &kit, &session).await, StatusCode::OK);
}

/// Without an upstream that verifies logout tokens the path is the app's.
#[tokio::test]
async fn without_back_channel_support_the_path_goes_to_the_app() {
    let kit = TestKit::with_config(config());
    let app = app(&kit);
    let response = send(&app, logout_post("logout_token=x")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
