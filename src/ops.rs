//! The operators' HTTP side of a fleet service: `GET /metrics` (the
//! service's Prometheus registry as OpenMetrics text, as signal serves it),
//! `GET /healthz` and `GET /readyz`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deltamesh_proto::ports::first_free;
use deltamesh_signal::openmetrics_response;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::ports::PortRange;

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

/// Where the operators' endpoints listen: `IP:PORT`, or `IP:FIRST-LAST`
/// for the first free port of a range (so replicas sharing a host, such
/// as relays on a host network, each find one at a predictable place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsListen {
    /// The address to bind.
    pub ip: IpAddr,
    /// The ports to try, in order.
    pub ports: RangeInclusive<u16>,
}

impl FromStr for OpsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let form = || format!("{text:?} is not IP:PORT, IP:FIRST-LAST or [IPv6]:PORT");
        let (host, ports) = text.rsplit_once(':').ok_or_else(form)?;
        // An IPv6 address is bracketed, so its own colons are never
        // mistaken for the port's.
        let ip = match host.strip_prefix('[') {
            Some(bracketed) => bracketed
                .strip_suffix(']')
                .ok_or_else(form)?
                .parse::<std::net::Ipv6Addr>()
                .map(IpAddr::V6),
            None if host.contains(':') || host.contains(']') => return Err(form()),
            None => host.parse::<std::net::Ipv4Addr>().map(IpAddr::V4),
        }
        .map_err(|e| format!("{host:?}: {e}"))?;
        let PortRange(ports) = ports.parse()?;
        Ok(OpsListen { ip, ports })
    }
}

impl OpsListen {
    /// Binds the first port of the range that is free.
    async fn bind(&self) -> anyhow::Result<TcpListener> {
        let listener = first_free("TCP", self.ports.clone(), |port| {
            let listener = std::net::TcpListener::bind((self.ip, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .with_context(|| format!("binding --ops-listen to {self:?}"))?;
        Ok(TcpListener::from_std(listener)?)
    }
}

/// Serves `/metrics` from `registry`, `/healthz` (200 while the process
/// runs) and `/readyz` (200, or 503 with the reason `ready` gives) on
/// `listen` until `shutdown`. Returns the bound address and the server task.
pub async fn serve_ops(
    listen: OpsListen,
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
    let listener = listen.bind().await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, server))
}

/// `registry` as OpenMetrics text, encoded as signal encodes its own.
fn metrics(registry: &Registry) -> Response {
    openmetrics_response(registry).unwrap_or_else(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response()
    })
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

#[cfg(test)]
mod tests {
    use super::OpsListen;

    #[test]
    fn ops_listen_is_a_port_or_a_range_of_ports() {
        let one: OpsListen = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(one.ports, 9090..=9090);
        let range: OpsListen = "[::]:9100-9199".parse().unwrap();
        assert_eq!(range.ip.to_string(), "::");
        assert_eq!(range.ports, 9100..=9199);
        let any: OpsListen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(any.ports, 0..=0);
        for bad in [
            "9090",
            "localhost:9090",
            "0.0.0.0:x",
            "0.0.0.0:9199-9100",
            "0.0.0.0:1-70000",
            "0.0.0.0:0-10",
            "::1:9090",
            "[::1:9090",
            "127.0.0.1]:9090",
            "[127.0.0.1]:9090",
        ] {
            assert!(bad.parse::<OpsListen>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_range_binds_its_first_free_port() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        // Ephemeral ports stay well below 65515 on Linux (60999 by default).
        let last = port.saturating_add(20);
        let listen: OpsListen = format!("127.0.0.1:{port}-{last}").parse().unwrap();
        let bound = listen.bind().await.unwrap();
        let bound = bound.local_addr().unwrap().port();
        assert!(bound > port && bound <= last, "{bound}");
        let single: OpsListen = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(single.bind().await.is_err());
    }
}
