//! The authgate example site: server-rendered pages for every flow of the
//! Altogic `AuthManager`, on the embedded dev upstream unless `ALTOGIC_URL`
//! and `ALTOGIC_CLIENT_KEY` are set. See `examples/ssr_site/README.md`.
//!
//! ```sh
//! cargo run --release --example ssr_site --features dev-upstream,axum-extra
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
    // ones show on the account page. `_dev` holds the dev upstream's handle
    // for as long as the site runs.
    let (client, options, _dev, upstream_note) = match &settings.upstream {
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
            (client, options, Some(dev), note)
        }
        UpstreamSetting::Altogic { url, client_key } => {
            let client = altogic::Client::builder(url, client_key);
            let note = format!(
                "upstream {}; set its redirect URL to {}",
                url.trim_end_matches('/'),
                config.callback_url()
            );
            (client, SiteOptions::default(), None, note)
        }
    };
    let app = site::app(config, client, options)
        .map_err(|err| format!("ALTOGIC_URL / ALTOGIC_CLIENT_KEY: {err}"))?;
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
