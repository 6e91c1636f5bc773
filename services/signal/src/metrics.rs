//! What signal counts, registered into the process's shared Prometheus
//! registry under the `signal_` prefix, and the encoding of that registry for
//! `GET /metrics`.

use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The media type of [`openmetrics_response`]'s body (prometheus-client
/// writes OpenMetrics text, which Prometheus scrapes as is).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `signal_http_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// The method, or `OTHER` for extension methods.
    method: String,
    /// The matched route pattern (`/v1/sessions/{session}/peers`), or
    /// `unmatched`, so client-chosen paths never become label values.
    route: String,
    /// The response status.
    status: u16,
}

/// Labels of `signal_offers_failed_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    /// The problem kind (`bad-sdp`, `no-capacity`, …).
    reason: String,
}

/// The `limit` of requests over their client address's rate.
pub(crate) const ADDRESS_LIMIT: &str = "client address";
/// The `limit` of requests over their token's rate.
pub(crate) const TOKEN_LIMIT: &str = "token";

/// Labels of `signal_rate_limited_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    /// What was limited: `client address` or `token`.
    limit: String,
}

/// Signal's counters. Clones share the same counters.
#[derive(Debug, Clone)]
pub struct SignalMetrics {
    http_requests: Family<RequestLabels, Counter>,
    offers_accepted: Counter,
    offers_failed: Family<ReasonLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
}

impl SignalMetrics {
    /// Creates signal's counters and registers them in `registry` with the
    /// `signal_` prefix.
    pub fn register(registry: &mut Registry) -> SignalMetrics {
        let metrics = SignalMetrics {
            http_requests: Family::default(),
            offers_accepted: Counter::default(),
            offers_failed: Family::default(),
            rate_limited: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("signal");
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "offers_accepted",
            "SDP offers answered with 201",
            metrics.offers_accepted.clone(),
        );
        registry.register(
            "offers_failed",
            "SDP offers refused or failed, by problem kind",
            metrics.offers_failed.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429, by the limit they hit",
            metrics.rate_limited.clone(),
        );
        // Every limit is listed from the start, at 0, so rates and alerts
        // see it before its first hit.
        for limit in [ADDRESS_LIMIT, TOKEN_LIMIT] {
            let _ = metrics.rate_limited.get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            });
        }
        metrics
    }

    /// Counts one request refused by the `limit` rate.
    pub(crate) fn rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// Counts one answered request.
    pub(crate) fn request(&self, method: &Method, route: Option<&str>, status: StatusCode) {
        let method = match *method {
            Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE => method.as_str(),
            _ => "OTHER",
        };
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.unwrap_or("unmatched").to_owned(),
            status: status.as_u16(),
        };
        self.http_requests.get_or_create(&labels).inc();
    }

    /// Counts one accepted offer.
    pub(crate) fn offer_accepted(&self) {
        self.offers_accepted.inc();
    }

    /// Counts one failed offer of problem kind `reason`.
    pub(crate) fn offer_failed(&self, reason: &'static str) {
        self.offers_failed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// The whole of `registry` (every service's metrics) as a `GET /metrics`
/// answer: OpenMetrics text with its media type. Signal and every ops
/// listener answer through this one encoder.
pub fn openmetrics_response(registry: &Registry) -> Result<Response, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(([(CONTENT_TYPE, OPENMETRICS)], text).into_response())
}
