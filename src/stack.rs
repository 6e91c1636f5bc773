//! Starting and stopping the one-process stack.

use std::net::SocketAddr;
use std::sync::Arc;

use deltamesh_proto::Id;
use deltamesh_relay::{ChunkStore, MemoryLog, RelayConfig, RelayHandle, RelayMetrics};
use deltamesh_signal::{SignalConfig, SignalMetrics};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::embedded::EmbeddedNetwork;

/// What the one-process stack is told at start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Where signal listens for HTTP.
    pub listen: SocketAddr,
    /// The relay's configuration.
    pub relay: RelayConfig,
    /// Signal's configuration: tokens, limits and the web bundle. Its home
    /// page is replaced by one describing this stack.
    pub signal: SignalConfig,
}

/// A running stack; dropping it does not stop it, [`RunningStack::shutdown`] does.
pub struct RunningStack {
    /// The address signal serves on.
    pub signal_addr: SocketAddr,
    /// The relays in this process.
    pub relays: Vec<RelayHandle>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningStack {
    /// Signal's base URL.
    pub fn signal_url(&self) -> String {
        format!("http://{}", self.signal_addr)
    }

    /// Stops signal gracefully and waits for it.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.server.await.map_err(std::io::Error::other)?
    }
}

/// Starts a relay and signal in this process, signal on `config.listen`.
pub async fn start(config: StackConfig) -> std::io::Result<RunningStack> {
    let listener = TcpListener::bind(config.listen).await?;
    start_on(listener, config).await
}

/// Starts a relay and signal in this process, signal on a listener the
/// caller bound (`config.listen` is not used): a caller that holds the port
/// from the start knows nobody else took it.
pub async fn start_on(
    listener: TcpListener,
    mut config: StackConfig,
) -> std::io::Result<RunningStack> {
    if config.relay.relay_id == Id::default() {
        config.relay.relay_id = Id::random();
    }
    let mut registry = Registry::default();
    let relay_metrics = RelayMetrics::register(&mut registry);
    let signal_metrics = SignalMetrics::register(&mut registry);
    let store = Arc::new(ChunkStore::new(
        config.relay.chunk_size,
        config.relay.max_chunks,
    ));
    let log = Arc::new(MemoryLog::new(store));
    let relay = deltamesh_relay::start(config.relay.clone(), log, relay_metrics).await?;
    let signal_addr = listener.local_addr()?;
    let mut signal_config = config.signal;
    signal_config.home_page = home_page(&relay);
    let network = Arc::new(EmbeddedNetwork::new(vec![relay.clone()]));
    let router =
        deltamesh_signal::router(network, signal_config, signal_metrics, Arc::new(registry));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(deltamesh_signal::serve(listener, router, async {
        let _ = stopped.await;
    }));
    Ok(RunningStack {
        signal_addr,
        relays: vec![relay],
        stop,
        server,
    })
}

/// A random (version 4) UUID for this process's relay: [`Id::random`],
/// under the name the binary calls it by.
pub fn random_uuid_v4() -> Id {
    Id::random()
}

fn home_page(relay: &RelayHandle) -> String {
    let addrs: Vec<String> = relay.udp_addrs().iter().map(ToString::to_string).collect();
    format!(
        "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>deltamesh</title></head>
<body>
<h1>deltamesh</h1>
<p>This process runs the whole stack:</p>
<ul>
<li><b>signal</b>: this HTTP API. Join a session with <code>POST /v1/sessions/{{session}}/peers</code> (an SDP offer);
list its peers with <code>GET /v1/sessions/{{session}}/peers</code>.</li>
<li><b>registry</b>: placement of new peers on relays (in process).</li>
<li><b>media-relay</b> <code>{id}</code>: WebRTC (ICE-lite, DTLS, SCTP) on UDP {addrs}.</li>
</ul>
<p>The demo page is not built: run <code>scripts/build-web</code> (or start with <code>scripts/run</code>).</p>
<p>Health: <a href=\"/healthz\">/healthz</a>, <a href=\"/readyz\">/readyz</a>, metrics: <a href=\"/metrics\">/metrics</a>.</p>
<p>Try it: <code>cargo run -p deltamesh-worker --bin deltamesh-peer -- --token TOKEN listen</code> in one terminal and
<code>... send hello</code> in another.</p>
</body>
</html>
",
        id = relay.id(),
        addrs = addrs.join(", "),
    )
}
