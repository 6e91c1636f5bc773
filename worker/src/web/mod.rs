//! The browser peer (wasm32 only): one wasm bundle loaded by both the page
//! and a dedicated worker.
//!
//! Chromium has no `RTCPeerConnection` inside a dedicated worker, but an
//! `RTCDataChannel` created on the page and transferred to the worker in the
//! same task opens, sends and receives there. So the work is split:
//! - [`page`]: the application's API ([`page::connect`] → [`page::Connection`])
//!   and the page-side half, which owns only the `RTCPeerConnection`: it
//!   creates the three negotiated channels, transfers them to the worker at
//!   once and relays SDP text;
//! - [`worker`]: everything else, in the worker: HTTP signaling with
//!   `fetch`, the channels, the [`crate::core::PeerCore`] protocol, acks,
//!   reconnect with backoff and resume, pings and stats. Where a browser
//!   offers `RTCPeerConnection` in workers, the worker uses it directly;
//! - [`messages`]: what page and worker say to each other;
//! - [`signaling`]: the HTTP offer/answer exchange with `signal`;
//! - [`demo`]: the demo whiteboard served at `/`, with `call` its direct
//!   tab-to-tab call.

mod call;
pub mod demo;
mod js;
pub mod messages;
pub mod page;
pub mod peer_connection;
pub mod signaling;
mod socket;
pub mod worker;

use wasm_bindgen::prelude::*;

/// Runs when the module is instantiated, in the page and in the worker:
/// panics go to the console with their message and location, and `tracing`
/// events go to the console at their level (`debug` and up).
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let console = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .without_time()
        .with_writer(tracing_web::MakeWebConsoleWriter::new());
    // A second instantiation in the same global (tests) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(console)
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .try_init();
}
