//! The routes for people and operators: the home page, liveness, readiness,
//! metrics, and the problem answers for unknown paths and methods.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, Uri};
use axum::response::{Html, IntoResponse, Response};

use super::App;
use crate::metrics;
use crate::network::Network;
use crate::problem::ApiError;

/// `GET /`: the configured home page.
pub(super) async fn home<N: Network>(State(app): State<Arc<App<N>>>) -> Html<String> {
    Html(app.config.home_page.clone())
}

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the network can take new peers, else a 503
/// problem with its reason.
pub(super) async fn readyz<N: Network>(
    State(app): State<Arc<App<N>>>,
) -> Result<&'static str, ApiError> {
    app.network.readiness().map_err(ApiError::NotReady)?;
    Ok("ready\n")
}

/// `GET /metrics`: the shared registry as OpenMetrics text.
pub(super) async fn metrics<N: Network>(
    State(app): State<Arc<App<N>>>,
) -> Result<Response, ApiError> {
    let text = metrics::encode(&app.registry)
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".to_owned()))?;
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// Any path no route has: a 404 problem.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

/// A known path with a method it does not take: a 405 problem (the router
/// adds `Allow`).
pub(super) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method)
}
