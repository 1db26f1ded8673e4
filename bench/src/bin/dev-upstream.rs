//! authgate's in-memory dev upstream (`authgate::dev::DevUpstream`) in a
//! process of its own, so that the benchmark server's RSS holds only the
//! app and its cache (in production the users live at the hosted service).
//!
//! Prints `upstream URL CLIENT_KEY` and `ready`; stops on SIGTERM/SIGINT
//! and prints how many REST calls it answered.

use std::io::Write as _;

use authgate::dev::DevUpstream;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream = DevUpstream::spawn().await?;
    println!("upstream {} {}", upstream.url(), upstream.client_key());
    println!("ready");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("upstream_calls {}", upstream.upstream_calls());
    std::io::stdout().flush()?;
    std::process::exit(0)
}
