//! The authgate example site: server-rendered pages for every flow of the
//! Altogic `AuthManager`, on the embedded dev upstream unless `ALTOGIC_URL`
//! and `ALTOGIC_CLIENT_KEY` are set; or (`AUTHGATE_UPSTREAM=webcom`) of the
//! Orange Webcom `Authentication` service, on the embedded Webcom dev
//! server unless `WEBCOM_URL` and `WEBCOM_APP_ID` are set. See
//! `examples/ssr_site/README.md`.
//!
//! ```sh
//! cargo run --release --example ssr_site --features dev-upstream,axum-extra
//! AUTHGATE_UPSTREAM=webcom cargo run --release --example ssr_site --features dev-upstream,axum-extra,webcom
//! AUTHGATE_UPSTREAM=slashid cargo run --release --example ssr_site --features dev-upstream,axum-extra,slashid
//! scripts/ssr-site-oidc.sh   # AUTHGATE_UPSTREAM=oidc on a local OpenID Provider
//! ```

mod site;

use std::error::Error;
use std::io::Write as _;
use std::process::ExitCode;

use authgate::altogic;
use axum::extract::Request;
use tracing_subscriber::EnvFilter;

use site::SiteOptions;
use site::settings::{Settings, UpstreamSetting};

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr: stdout carries only the "listening on" line that
    // scripts wait for.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ssr_site: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let settings = Settings::from_env()?;
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", settings.addr))?;
    let bound = listener.local_addr()?;
    let public_url = settings.public_url_for(bound);
    let config = site::auth_config(&public_url, settings.key.as_deref())
        .map_err(|err| format!("AUTHGATE_PUBLIC_URL / AUTHGATE_KEY: {err}"))?;

    // One `AuthEvents` (in `options.events`) goes to the layer and to the
    // client: `site::app` wires both. Every event is logged and the recent
    // ones show on the account page. `_dev` holds the dev server's handle
    // for as long as the site runs.
    let (app, _dev, upstream_note): (site::App, Option<Box<dyn Send>>, String) = match &settings
        .upstream
    {
        UpstreamSetting::Dev => {
            let dev = site::spawn_dev_upstream().await?;
            dev.set_redirect_url(&config.callback_url());
            let client = altogic::Client::builder(dev.url(), dev.client_key());
            let options = SiteOptions::for_dev(&dev);
            let note = format!(
                "embedded dev upstream at {} (e-mails and SMS codes: {}/_dev/outbox)",
                dev.url(),
                dev.url()
            );
            let app = site::app(config, client, options)
                .map_err(|err| format!("the dev upstream's client: {err}"))?;
            (app, Some(Box::new(dev)), note)
        }
        UpstreamSetting::Altogic { url, client_key } => {
            let client = altogic::Client::builder(url, client_key);
            let note = format!(
                "upstream {}; set its redirect URL to {}",
                url.trim_end_matches('/'),
                config.callback_url()
            );
            let app = site::app(config, client, SiteOptions::default())
                .map_err(|err| format!("ALTOGIC_URL / ALTOGIC_CLIENT_KEY: {err}"))?;
            (app, None, note)
        }
        #[cfg(feature = "webcom")]
        UpstreamSetting::WebcomDev => {
            let dev = site::spawn_webcom_dev().await?;
            let client = authgate::webcom::Client::builder(dev.url(), dev.app_id());
            let options = SiteOptions::for_webcom_dev(&dev);
            let note = format!(
                "embedded Webcom dev server at {} (codes: {}/_dev/outbox)",
                dev.url(),
                dev.url()
            );
            let app = site::webcom_app(config, client, options)
                .map_err(|err| format!("the Webcom dev server's client: {err}"))?;
            (app, Some(Box::new(dev)), note)
        }
        #[cfg(feature = "webcom")]
        UpstreamSetting::Webcom { url, app_id } => {
            let client = authgate::webcom::Client::builder(url, app_id);
            let note = format!(
                "Webcom at {}, application {app_id}; allow {} as a return address",
                url.trim_end_matches('/'),
                config.callback_url()
            );
            let app = site::webcom_app(config, client, SiteOptions::default())
                .map_err(|err| format!("WEBCOM_URL / WEBCOM_APP_ID: {err}"))?;
            (app, None, note)
        }
        #[cfg(feature = "slashid")]
        UpstreamSetting::SlashIdDev => {
            let dev = site::spawn_slashid_dev().await?;
            let client = site::slashid_dev_client(&dev);
            let note = format!(
                "embedded SlashID dev server at {}, organization {} (on its login page choose an e-mail and groups; try `admin`)",
                dev.url(),
                dev.org_id()
            );
            let app = site::slashid_app(config, client, site::SiteOptions::for_slashid_dev())
                .map_err(|err| format!("the SlashID dev server's client: {err}"))?;
            (app, Some(Box::new(dev)), note)
        }
        #[cfg(feature = "slashid")]
        UpstreamSetting::SlashId {
            url,
            org_id,
            api_key,
            client_id,
        } => {
            let mut client = authgate::slashid::Client::builder(url, org_id);
            if let Some(key) = api_key {
                client = client.with_api_key(key);
            }
            if let Some(id) = client_id {
                client = client.with_hosted_login(id);
            }
            let note = format!(
                "SlashID at {}, organization {org_id}; allow {} as the hosted login's redirect URI",
                url.trim_end_matches('/'),
                config.callback_url()
            );
            let app = site::slashid_app(config, client, SiteOptions::default())
                .map_err(|err| format!("SLASHID_URL / SLASHID_ORG_ID: {err}"))?;
            (app, None, note)
        }
        #[cfg(feature = "oidc")]
        UpstreamSetting::Oidc {
            issuer,
            client_id,
            client_secret,
            scopes,
            groups_claim,
        } => {
            let after_sign_out = format!("{public_url}/?notice=signed-out");
            let mut client = authgate::oidc::Client::builder(issuer, client_id)
                .with_post_logout_redirect(&after_sign_out);
            if let Some(secret) = client_secret {
                client = client.with_client_secret(secret);
            }
            if let Some(scopes) = scopes {
                let scopes: Vec<&str> = scopes.split_whitespace().collect();
                client = client.with_scopes(&scopes);
            }
            if let Some(claim) = groups_claim {
                client = client.with_groups_claim(claim.trim());
            }
            let note = format!(
                "OpenID Provider {issuer}, client {client_id}; register the redirect URI {}, \
                 the post-logout redirect URI {after_sign_out} and the back-channel logout URI \
                 {public_url}/auth/backchannel-logout",
                config.callback_url()
            );
            let app = site::oidc_app(config, client, SiteOptions::default())
                .await
                .map_err(|err| format!("OIDC_ISSUER / OIDC_CLIENT_ID: {err}"))?;
            (app, None, note)
        }
        #[cfg(not(feature = "oidc"))]
        UpstreamSetting::Oidc { .. } => {
            return Err("AUTHGATE_UPSTREAM=oidc needs the oidc feature: \
                 cargo run --release --example ssr_site --features dev-upstream,axum-extra,oidc"
                .into());
        }
        #[cfg(not(feature = "slashid"))]
        UpstreamSetting::SlashIdDev | UpstreamSetting::SlashId { .. } => {
            return Err("AUTHGATE_UPSTREAM=slashid needs the slashid feature: \
                 cargo run --release --example ssr_site --features dev-upstream,axum-extra,slashid"
                .into());
        }
        #[cfg(not(feature = "webcom"))]
        UpstreamSetting::WebcomDev | UpstreamSetting::Webcom { .. } => {
            return Err(
                    "AUTHGATE_UPSTREAM=webcom needs the webcom feature: \
                     cargo run --release --example ssr_site --features dev-upstream,axum-extra,webcom"
                        .into(),
                );
        }
    };
    eprintln!("ssr_site: {upstream_note}");
    eprintln!("ssr_site: public URL {public_url}");

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{bound}")?;
    stdout.flush()?;
    drop(stdout);

    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(app),
    )
    .with_graceful_shutdown(async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "ssr_site: cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
    .await?;
    Ok(())
}
