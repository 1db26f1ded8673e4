//! The SlashID dev server over real HTTP, spoken to from the wire protocol
//! (UPSTREAMS.md §3) with a plain HTTP client, never the crate's SlashID
//! client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{DevAlgorithm, SlashIdDev};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_key_set_publishes_signature_keys_and_follows_rotation() {
    let dev = SlashIdDev::builder()
        .with_algorithm(DevAlgorithm::Es256)
        .spawn()
        .await
        .unwrap();
    let url = format!("{}/.well-known/jwks.json", dev.url());
    let set: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(keys[0]["kid"], dev.current_kid().as_str());
    assert!(keys[0].get("d").is_none(), "no private part");

    let next = dev.rotate_keys();
    let set: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, [next.as_str(), "dev-es256-a"]);

    dev.set_jwks_failure(Some(503));
    assert_eq!(http().get(&url).send().await.unwrap().status(), 503);
}

#[tokio::test]
async fn errors_use_the_slashid_envelope_and_validate_reports_reasons() {
    let dev = SlashIdDev::spawn().await.unwrap();
    let token = dev.issue_token("ada@example.com");
    let unknown = http()
        .get(format!("{}/nowhere", dev.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["errors"][0]["httpcode"], 404);

    let me = http()
        .get(format!("{}/me", dev.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    let validate = |token: String| {
        http()
            .post(format!("{}/token/validate", dev.url()))
            .header("SlashID-OrgID", dev.org_id())
            .header("SlashID-API-Key", dev.api_key())
            .json(&json!({ "token": token }))
            .send()
    };
    let good: Value = validate(token.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(good["result"]["valid"], true);
    let foreign = dev.sign_claims(&json!({"iss": "elsewhere", "exp": 4_000_000_000u64}));
    let bad: Value = validate(foreign).await.unwrap().json().await.unwrap();
    assert_eq!(bad["result"]["valid"], false);
    assert_eq!(bad["result"]["invalidity_reason"], "invalid_issuer");
    dev.deactivate("ada@example.com");
    let inactive: Value = validate(token).await.unwrap().json().await.unwrap();
    assert_eq!(inactive["result"]["invalidity_reason"], "person_not_active");
}

#[tokio::test]
async fn anonymous_persons_need_a_known_organization() {
    let dev = SlashIdDev::spawn().await.unwrap();
    let url = format!("{}/persons/anonymous", dev.url());
    let refused = http().post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let created = http()
        .post(&url)
        .header("SlashID-OrgID", dev.org_id())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    assert!(body["result"].as_str().unwrap().split('.').count() == 3);
}

#[tokio::test]
async fn the_authorize_page_requires_pkce_s256_and_the_known_client() {
    let dev = SlashIdDev::spawn().await.unwrap();
    let page = |query: &str| {
        http()
            .get(format!("{}/oauth2/authorize?{query}", dev.url()))
            .send()
    };
    let good = "redirect_uri=https%3A%2F%2Fapp.example%2Fauth%2Fcallback&client_id=dev-client&response_type=code&state=s&scope=openid&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256";
    assert_eq!(page(good).await.unwrap().status(), StatusCode::OK);
    for bad in [
        good.replace("S256", "plain"),
        good.replace("dev-client", "other"),
        good.replace("https%3A", "javascript%3A"),
        good.replace("state=s&", ""),
    ] {
        assert_eq!(
            page(&bad).await.unwrap().status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}
