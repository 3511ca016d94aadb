//! Run with: `cargo run -p example-actix`
//!
//! An actix-web HTTPS server whose certificates CertAuto obtains and swaps
//! live (`certauto_actix::serve`). With no `CERTAUTO_DIRECTORY` it uses the local CA
//! (offline); with one, it obtains from that ACME CA, answering HTTP-01 on its
//! own HTTP port or TLS-ALPN-01 on its own HTTPS port. Configuration:
//! `CERTAUTO_*` variables, see `certauto::env` (`CERTAUTO_ON_DEMAND` turns on on-demand TLS for
//! an allowlist: the first request for a new allowed name gets its
//! certificate during the handshake). `GET /` answers 200 over
//! HTTPS; HTTP redirects. With `CERTAUTO_ADMIN_ADDR`, a separate admin
//! listener answers `GET /metrics` (Prometheus text,
//! `metrics-exporter-prometheus`) and `GET /status` (JSON, `Config::status`).

use std::process::ExitCode;

use actix_web::{App, HttpResponse, HttpServer, web};
use certauto::Config;
use certauto::env::EnvSettings;
use certauto_actix::{acme_http01, https_redirect};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

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
    // The recorder goes in before anything records.
    let metrics = match settings.admin_addr {
        Some(_) => Some(prometheus(&settings)?),
        None => None,
    };
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

    let admin = match (settings.admin_addr, metrics) {
        (Some(addr), Some(metrics)) => {
            let config = web::Data::new(config.clone());
            let metrics = web::Data::new(metrics);
            tracing::info!(admin = %addr, "admin listener: GET /metrics, GET /status");
            Some(
                HttpServer::new(move || {
                    App::new()
                        .app_data(config.clone())
                        .app_data(metrics.clone())
                        .route("/metrics", web::get().to(render_metrics))
                        .route("/status", web::get().to(render_status))
                })
                .workers(1)
                .bind(addr)?
                .run(),
            )
        }
        _ => None,
    };
    let admin = async move {
        match admin {
            Some(server) => server.await,
            None => Ok(()),
        }
    };

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
    let (a, b, c) = tokio::join!(https, http, admin);
    config.cache().stop();
    maintenance.await;
    a?;
    b?;
    c?;
    Ok(())
}

/// The Prometheus recorder behind `GET /metrics`: the issuance duration as a
/// histogram (buckets, not client-side quantiles, so instances aggregate),
/// and gauges no one has updated for three renewal checks (at least an hour)
/// dropped, so the expiry series of certificates that left the cache (set to
/// NaN, refreshed by no check since) do not pile up.
fn prometheus(settings: &EnvSettings) -> Result<PrometheusHandle, BuildError> {
    let idle = (settings.renew_check * 3).max(std::time::Duration::from_secs(3600));
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(certauto::metrics::ISSUANCE_DURATION_SECONDS.to_owned()),
            certauto::metrics::ISSUANCE_DURATION_BUCKETS,
        )?
        .idle_timeout(MetricKindMask::GAUGE, Some(idle))
        .install_recorder()
}

/// `GET /metrics` on the admin listener: Prometheus text.
async fn render_metrics(metrics: web::Data<PrometheusHandle>) -> HttpResponse {
    // Histograms are aggregated on upkeep, which the exporter's own HTTP
    // listener (not used here) would run.
    metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}

/// `GET /status` on the admin listener: `Config::status` as JSON.
async fn render_status(config: web::Data<Config>) -> HttpResponse {
    match serde_json::to_string(&config.status().await) {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(e) => HttpResponse::InternalServerError().body(format!("status: {e}\n")),
    }
}
