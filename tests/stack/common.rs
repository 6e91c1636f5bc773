//! Shared set-up for the stack tests: a one-process stack on free ports.

use std::net::SocketAddr;
use std::time::Duration;

use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_relay::RelayConfig;
use deltamesh_signal::SignalConfig;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

/// The development token the test stacks accept.
pub(crate) const TOKEN: &str = "test-token";

/// A stack on 127.0.0.1 with free ports and `relay` tweaks applied.
pub(crate) async fn stack_with(relay: impl FnOnce(&mut RelayConfig)) -> RunningStack {
    let mut relay_config = RelayConfig::default();
    relay(&mut relay_config);
    start(StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay: relay_config,
        signal: SignalConfig::new(TOKEN),
    })
    .await
    .expect("stack starts")
}

/// A default stack.
pub(crate) async fn stack() -> RunningStack {
    stack_with(|_| {}).await
}

/// A native peer joined to `session`.
pub(crate) async fn join(stack: &RunningStack, session: &str) -> NativePeer {
    NativePeer::connect(
        ConnectOptions::new(&stack.signal_url(), session, TOKEN).with_lane(LaneChoice::WebRtc),
    )
    .await
    .expect("peer connects")
}

/// The next event matching `pick`, skipping others; panics after `wait`.
pub(crate) async fn next_matching<T>(
    peer: &mut NativePeer,
    wait: Duration,
    mut pick: impl FnMut(PeerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(wait, async {
        loop {
            let event = peer.next_event().await.expect("connection alive");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("event arrives in time")
}
