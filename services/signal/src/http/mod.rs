//! The HTTP face of signal: the route table, the layers every response goes
//! through (CORS headers, request counting, the body read, within its
//! limit, before anything is judged) and the server
//! loop with graceful shutdown. Handlers live in `peers` (the `/v1` API) and
//! `ops` (home page, health, readiness, metrics, 404 and 405); the browser
//! bundle's files are served from the configured `web_dir` under `/pkg/`.

mod body;
mod cors;
mod ops;
mod peers;
mod socket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tower_http::services::ServeDir;

use crate::auth::{Authenticator, Caller};
use crate::config::SignalConfig;
use crate::limits::RateLimits;
use crate::metrics::{ADDRESS_LIMIT, SignalMetrics, TOKEN_LIMIT};
use crate::network::{Network, NetworkError};
use crate::problem::ApiError;

/// What every handler shares.
struct App<N> {
    network: Arc<N>,
    auth: Authenticator,
    limits: RateLimits,
    config: SignalConfig,
    metrics: SignalMetrics,
    registry: Arc<Registry>,
}

impl<N> App<N> {
    /// `error` as an HTTP problem, with the configured `Retry-After` fallback.
    fn network_error(&self, error: NetworkError) -> ApiError {
        ApiError::network(error, self.config.retry_after)
    }

    /// The caller of a `/v1` request: counted against its address's rate,
    /// its token checked, then counted against the token's rate.
    fn admit(&self, request: &Request) -> Result<Caller, ApiError> {
        // Absent only when the router is driven without a socket (tests).
        if let Some(ConnectInfo(client)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            self.limits
                .check_address(client.ip())
                .map_err(|retry_after| self.rate_limited(ADDRESS_LIMIT, retry_after))?;
        }
        let caller = self.auth.check(request.headers())?;
        self.limits
            .check_token(&caller.token)
            .map_err(|retry_after| self.rate_limited(TOKEN_LIMIT, retry_after))?;
        Ok(caller)
    }

    fn rate_limited(&self, scope: &'static str, retry_after: std::time::Duration) -> ApiError {
        self.metrics.rate_limited(scope);
        ApiError::RateLimited { scope, retry_after }
    }
}

/// The routes of PROTOCOL.md §1 over `network`. `GET /metrics` serves the
/// whole of `registry`, where `metrics` (and other services) are registered.
pub fn router<N: Network>(
    network: Arc<N>,
    config: SignalConfig,
    metrics: SignalMetrics,
    registry: Arc<Registry>,
) -> Router {
    let app = Arc::new(App {
        network,
        auth: Authenticator::new(config.dev_token.clone(), Arc::clone(&config.tokens)),
        limits: RateLimits::new(config.address_rate, config.token_rate),
        config,
        metrics: metrics.clone(),
        registry,
    });
    let web_bundle = app.config.web_dir.as_ref().map(|dir| dir.join("pkg"));
    let mut router = Router::new();
    if let Some(pkg) = web_bundle {
        let files = Router::new()
            .fallback_service(ServeDir::new(pkg))
            .layer(middleware::from_fn(unservable_is_not_found));
        router = router.nest_service("/pkg", files);
    }
    router
        .route("/", get(ops::home::<N>))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz::<N>))
        .route("/metrics", get(ops::metrics::<N>))
        .route(
            "/v1/sessions/{session}/peers",
            post(peers::create::<N>)
                .get(peers::list::<N>)
                .options(peers::options::<N>),
        )
        .route(
            "/v1/sessions/{session}/peers/{peer}",
            axum::routing::patch(peers::trickle::<N>)
                .delete(peers::delete::<N>)
                .options(|| async { cors::preflight(cors::PEER_METHODS) }),
        )
        .route("/v1/sessions/{session}/socket", get(socket::open::<N>))
        .method_not_allowed_fallback(ops::method_not_allowed)
        .fallback(ops::not_found)
        .layer(middleware::from_fn(body::read_first))
        .layer(middleware::map_response(cors::expose))
        .layer(middleware::from_fn_with_state(metrics, count_request))
        .with_state(app)
}

/// A bundle file that cannot be opened at all (a name too long for the file
/// system, say) is a 404 problem, not the 500 `ServeDir` makes of it.
async fn unservable_is_not_found(request: Request, next: Next) -> Response {
    let path = format!("/pkg{}", request.uri().path());
    let response = next.run(request).await;
    if response.status().is_server_error() {
        tracing::warn!(path, status = %response.status(), "web bundle file not served");
        return ApiError::NotFound(path).into_response();
    }
    response
}

/// Counts every answered request by method, matched route and status.
async fn count_request(
    State(metrics): State<SignalMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.request(&method, route.as_deref(), response.status());
    response
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the requests in flight to finish. Each request
/// carries its client's address, for the per-address rate limit.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "signal listening");
    }
    // Without TCP_NODELAY, a small write while an earlier one is unacked
    // waits for the client's delayed ACK (40 ms on Linux): the WebSocket
    // lane's relay → client deltas would queue behind it.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
