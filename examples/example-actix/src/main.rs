//! Run with: `cargo run -p example-actix`
//!
//! An actix-web HTTPS server whose certificates CertAuto obtains and swaps
//! live (`certauto_actix::serve`). With no `CERTAUTO_DIRECTORY` it uses the local CA
//! (offline); with one, it obtains from that ACME CA, answering HTTP-01 on its
//! own HTTP port or TLS-ALPN-01 on its own HTTPS port. Configuration:
//! `CERTAUTO_*` variables, see `certauto::env` (`CERTAUTO_ON_DEMAND` turns on on-demand TLS for
//! an allowlist: the first request for a new allowed name gets its
//! certificate during the handshake). `GET /` answers 200 over
//! HTTPS; HTTP redirects.

use std::process::ExitCode;

use actix_web::{App, HttpServer, web};
use certauto::env::EnvSettings;
use certauto_actix::{acme_http01, https_redirect};

#[actix_web::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-actix: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = EnvSettings::from_env()?;
    let setup = settings.build().await?;
    let config = setup.config;
    let tokens = setup.tokens;

    let https_listener = std::net::TcpListener::bind(settings.https_addr)?;
    let https_port = https_listener.local_addr()?.port();
    // TLS handshakes in certauto-core's acceptor (the one certauto-axum
    // uses); actix-http serves the requests.
    let https = certauto_actix::serve(https_listener, &config, || {
        App::new().route(
            "/",
            web::get().to(|| async { "Hello from CertAuto over HTTPS\n" }),
        )
    })?
    .run();
    let http = HttpServer::new(move || {
        App::new()
            .configure(acme_http01(tokens.clone()))
            .default_service(https_redirect(https_port))
    })
    .bind(settings.http_addr)?
    .run();

    config
        .manage_in_background(settings.domains.iter().map(|d| d.to_string()))
        .await?;
    // Renewal checks every CERTAUTO_RENEW_CHECK (default 10 minutes).
    let maintenance = certauto::start_maintenance(&config);
    tracing::info!(
        https = %settings.https_addr,
        http = %settings.http_addr,
        domains = ?settings.domains,
        storage = ?settings.storage,
        "serving"
    );
    // actix handles SIGINT/SIGTERM: both servers stop gracefully.
    let (a, b) = tokio::join!(https, http);
    config.cache().stop();
    maintenance.await;
    a?;
    b?;
    Ok(())
}
