//! The signal the `signal_request` fuzz target drives, shared with the seed
//! test (`services/signal/tests/seed_corpus.rs`) so both build it the same
//! way: the one place to adapt when signal's config or the `Network` trait
//! change.
//!
//! It takes the development token [`TOKEN`] and HS256 tokens of key
//! [`KEY_ID`], has no request rate limits (the fuzzer would only hit them),
//! and serves the small web bundle in `fuzz/web/`.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use deltamesh_proto::Id;
use deltamesh_signal::token::TokenVerifier;
use deltamesh_signal::{
    ConnectRequest, Connected, IceRestartAnswer, IceRestartRequest, Network, NetworkError,
    PeerInfo, RateLimit, SignalConfig, SignalMetrics, router,
};
use prometheus_client::registry::Registry;

/// The development token; the seeds carry it.
pub(crate) const TOKEN: &str = "dev-token";
/// The id of the HS256 key signed-token seeds use.
pub(crate) const KEY_ID: &str = "fuzz";
/// The HS256 secret of [`KEY_ID`].
pub(crate) const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

/// A network that takes every request: a fixed peer for every offer, a fixed
/// answer to every ICE restart, no peers in any session, always ready.
pub(crate) struct AcceptingNetwork;

impl Network for AcceptingNetwork {
    async fn connect(&self, _: ConnectRequest) -> Result<Connected, NetworkError> {
        Ok(Connected {
            peer_id: Id([1; 16]),
            relay_id: Id([2; 16]),
            answer_sdp: "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n".to_owned(),
            ice_ufrag: "fuzz".to_owned(),
        })
    }

    async fn trickle(
        &self,
        _: &str,
        _: Id,
        _: &str,
        _: Option<&str>,
        _: Vec<String>,
    ) -> Result<(), NetworkError> {
        Ok(())
    }

    async fn restart_ice(
        &self,
        _: &str,
        _: Id,
        _: &str,
        _: IceRestartRequest,
    ) -> Result<IceRestartAnswer, NetworkError> {
        Ok(IceRestartAnswer {
            ufrag: "fuzz2".to_owned(),
            pwd: "fuzzpasswordfuzzpassword".to_owned(),
            candidates: vec!["1 1 udp 2130706431 127.0.0.1 9 typ host".to_owned()],
        })
    }

    async fn disconnect(&self, _: &str, _: Id, _: &str) -> Result<(), NetworkError> {
        Ok(())
    }

    async fn peers(&self, _: &str) -> Result<Vec<PeerInfo>, NetworkError> {
        Ok(Vec::new())
    }

    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Signal's router over [`AcceptingNetwork`], serving the web bundle in
/// `fuzz_dir/web`.
pub(crate) fn signal(fuzz_dir: &Path) -> Router {
    let mut verifier = TokenVerifier::default();
    verifier
        .add_hs256(KEY_ID, SECRET)
        .expect("the fuzz key is long enough");
    let config = SignalConfig {
        tokens: Arc::new(verifier),
        address_rate: RateLimit::OFF,
        token_rate: RateLimit::OFF,
        web_dir: Some(fuzz_dir.join("web")),
        ..SignalConfig::new(TOKEN)
    };
    let mut registry = Registry::default();
    let metrics = SignalMetrics::register(&mut registry);
    router(
        Arc::new(AcceptingNetwork),
        config,
        metrics,
        Arc::new(registry),
    )
}
