//! Run with: `cargo run -p example-axum`
//!
//! An axum HTTPS server whose certificates CertAuto obtains and swaps live.
//! With no `CERTAUTO_DIRECTORY` it uses the local CA (offline); with one, it
//! obtains from that ACME CA, answering HTTP-01 on its own HTTP port or
//! TLS-ALPN-01 on its own HTTPS port. Configuration: `CERTAUTO_*` variables,
//! see `certauto::env` (`CERTAUTO_ON_DEMAND` turns on on-demand TLS for
//! an allowlist: the first request for a new allowed name gets its
//! certificate during the handshake). `GET /` answers 200 over HTTPS; HTTP redirects.
//! With `CERTAUTO_ADMIN_ADDR`, a separate admin listener answers `GET /metrics`
//! (Prometheus text, `metrics-exporter-prometheus`) and `GET /status` (JSON,
//! `Config::status`).

use std::process::ExitCode;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use certauto::Config;
use certauto::env::EnvSettings;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-axum: {e}");
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
    if let (Some(addr), Some(metrics)) = (settings.admin_addr, metrics) {
        let admin = TcpListener::bind(addr).await?;
        tracing::info!(admin = %addr, "admin listener: GET /metrics, GET /status");
        let admin = certauto_axum::serve_plain(admin, admin_router(&config, metrics))?;
        tokio::spawn(async move {
            if let Err(e) = admin.await {
                tracing::error!(error = %e, "admin listener stopped: no /metrics, /status");
            }
        });
    }

    // Listen first: the challenges are answered on these ports.
    let http = TcpListener::bind(settings.http_addr).await?;
    let https = TcpListener::bind(settings.https_addr).await?;
    let https_port = https.local_addr()?.port();
    tokio::spawn(certauto_axum::serve_http(http, setup.tokens, https_port));

    config
        .manage_in_background(settings.domains.iter().map(|d| d.to_string()))
        .await?;
    // Renewal checks every CERTAUTO_RENEW_CHECK (default 10 minutes).
    let maintenance = certauto::start_maintenance(&config);

    let app = Router::new().route("/", get(|| async { "Hello from CertAuto over HTTPS\n" }));
    tracing::info!(
        https = %settings.https_addr,
        http = %settings.http_addr,
        domains = ?settings.domains,
        storage = ?settings.storage,
        "serving"
    );
    certauto_axum::serve(https, app, &config)?
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    config.cache().stop();
    maintenance.await;
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

/// The admin listener's routes: `GET /metrics` and `GET /status`.
fn admin_router(config: &Config, metrics: PrometheusHandle) -> Router {
    let config = config.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                // Histograms are aggregated on upkeep, which the exporter's
                // own HTTP listener (not used here) would run.
                metrics.run_upkeep();
                let text = metrics.render();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/status",
            get(move || {
                let config = config.clone();
                async move {
                    match serde_json::to_string(&config.status().await) {
                        Ok(json) => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], json),
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(CONTENT_TYPE, "text/plain")],
                            format!("status: {e}\n"),
                        ),
                    }
                }
            }),
        )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
