//! The routes for people and operators: the home page, liveness, readiness,
//! metrics, and the problem answers for unknown paths and methods.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::response::{Html, Response};

use super::App;
use crate::metrics;
use crate::network::Network;
use crate::problem::ApiError;

/// Where the development token goes in the bundle's `index.html`.
const DEV_TOKEN_PLACEHOLDER: &str = "__DELTAMESH_DEV_TOKEN__";

/// `GET /`: the web bundle's page (the demo) when there is one, with the
/// development token filled in; the configured home page otherwise.
pub(super) async fn home<N: Network>(State(app): State<Arc<App<N>>>) -> Html<String> {
    if let Some(dir) = &app.config.web_dir {
        match tokio::fs::read_to_string(dir.join("index.html")).await {
            Ok(page) => {
                return Html(
                    page.replace(DEV_TOKEN_PLACEHOLDER, &html_escape(&app.config.dev_token)),
                );
            }
            Err(error) => tracing::warn!(dir = %dir.display(), "no web bundle to serve: {error}"),
        }
    }
    Html(app.config.home_page.clone())
}

/// `text` safe inside HTML text and quoted attributes.
fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
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
    metrics::openmetrics_response(&app.registry)
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".to_owned()))
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

#[cfg(test)]
mod tests {
    use super::html_escape;

    #[test]
    fn a_token_cannot_break_out_of_the_page() {
        assert_eq!(
            html_escape(r#"a"><script>'&"#),
            "a&quot;&gt;&lt;script&gt;&#39;&amp;"
        );
    }
}
