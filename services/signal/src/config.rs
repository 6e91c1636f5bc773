//! The service's configuration: one typed value, built by the binary from its
//! command line and environment and printed at start-up.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::ice_servers::IceServers;
use crate::limits::RateLimit;
use crate::token::TokenVerifier;

/// The largest request body signal reads (an SDP offer or a trickle
/// sdpfrag): 64 KiB. A larger one is a 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How signal behaves, apart from the [`Network`](crate::Network) it fronts.
#[derive(Clone)]
pub struct SignalConfig {
    /// The fixed development bearer token, accepted for any session with
    /// every grant. Empty turns development mode off.
    pub dev_token: String,
    /// The keys signed tokens are checked with.
    pub tokens: Arc<TokenVerifier>,
    /// Requests per client address (IPv6: per /64) on the `/v1` API.
    pub address_rate: RateLimit,
    /// Requests per token on the `/v1` API.
    pub token_rate: RateLimit,
    /// The HTML page served at `GET /` when there is no web bundle.
    pub home_page: String,
    /// The browser bundle (`scripts/build-web` output): `index.html` is
    /// served at `GET /` (its `__DELTAMESH_DEV_TOKEN__` placeholder replaced
    /// by the development token) and `pkg/` under `/pkg/`.
    pub web_dir: Option<PathBuf>,
    /// The `Retry-After` of a 503 when the network names no delay itself.
    pub retry_after: Duration,
    /// The STUN and TURN servers handed out as `Link` headers (§10).
    pub ice_servers: IceServers,
}

impl SignalConfig {
    /// A development configuration: `dev_token` opens every session, no
    /// signed token is accepted, the home page is a short built-in one, 503s
    /// ask clients to retry after 5 s, the rate limits are the defaults and
    /// there are no ICE servers.
    pub fn new(dev_token: impl Into<String>) -> Self {
        SignalConfig {
            dev_token: dev_token.into(),
            tokens: Arc::new(TokenVerifier::default()),
            address_rate: DEFAULT_ADDRESS_RATE,
            token_rate: DEFAULT_TOKEN_RATE,
            home_page: DEFAULT_HOME_PAGE.to_owned(),
            web_dir: None,
            retry_after: Duration::from_secs(5),
            ice_servers: IceServers::default(),
        }
    }
}

/// The default per-address limit: 50 requests/s, bursts of 100 (a NAT of
/// many browsers connecting at once).
pub const DEFAULT_ADDRESS_RATE: RateLimit = RateLimit {
    per_second: 50,
    burst: 100,
};

/// The default per-token limit: 10 requests/s, bursts of 20 (a reconnecting
/// peer makes one or two).
pub const DEFAULT_TOKEN_RATE: RateLimit = RateLimit {
    per_second: 10,
    burst: 20,
};

/// Printed at start-up: the token in full (development mode must show it), the
/// home page by size only.
impl fmt::Debug for SignalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalConfig")
            .field("dev_token", &self.dev_token)
            .field("tokens", &self.tokens)
            .field("address_rate", &self.address_rate)
            .field("token_rate", &self.token_rate)
            .field(
                "home_page",
                &format_args!("<{} bytes of HTML>", self.home_page.len()),
            )
            .field("web_dir", &self.web_dir)
            .field("retry_after", &self.retry_after)
            .field("ice_servers", &self.ice_servers)
            .field("body_limit", &BODY_LIMIT)
            .finish()
    }
}

const DEFAULT_HOME_PAGE: &str = "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>deltamesh</title></head>
<body>
<h1>deltamesh signal</h1>
<p>Post an SDP offer to <code>/v1/sessions/{session}/peers</code> to join a session.</p>
</body>
</html>
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_config_shows_the_token_but_not_the_whole_page() {
        let printed = format!("{:?}", SignalConfig::new("tok"));
        assert!(printed.contains("dev_token: \"tok\""), "{printed}");
        assert!(printed.contains("bytes of HTML"), "{printed}");
        assert!(!printed.contains("<html"), "{printed}");
    }
}
