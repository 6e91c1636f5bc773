//! The operators' HTTP side of a fleet service: `GET /metrics` (the
//! service's Prometheus registry as OpenMetrics text, as signal serves it),
//! `GET /healthz` and `GET /readyz`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The media type of `GET /metrics` (the same as signal's).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gauge read when scraped.
pub struct FnGauge<F>(pub F);

impl<F> std::fmt::Debug for FnGauge<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnGauge")
    }
}

impl<F: Fn() -> i64> EncodeMetric for FnGauge<F> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0)())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Serves `/metrics` from `registry`, `/healthz` (200 while the process
/// runs) and `/readyz` (200, or 503 with the reason `ready` gives) on
/// `listen` until `shutdown`. Returns the bound address and the server task.
pub async fn serve_ops(
    listen: SocketAddr,
    registry: Arc<Registry>,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let ready = Arc::new(ready);
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics(&registry) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                    }
                }
            }),
        );
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding --ops-listen to {listen}"))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, server))
}

/// `registry` as OpenMetrics text.
fn metrics(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

/// Whether `nats` is connected, as a readiness check.
pub fn nats_ready(nats: &async_nats::Client) -> Result<(), String> {
    match nats.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(format!("NATS is not connected ({state})")),
    }
}

/// A Prometheus registry whose every metric carries `service` and
/// `instance` labels.
pub fn service_metrics(service: &'static str, instance: String) -> Registry {
    Registry::with_labels(
        [
            (Cow::Borrowed("service"), Cow::Borrowed(service)),
            (Cow::Borrowed("instance"), Cow::Owned(instance)),
        ]
        .into_iter(),
    )
}
