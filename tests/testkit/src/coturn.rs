//! A real coturn (`turnserver`, `apt-get install coturn`) on loopback with
//! TURN REST credentials (`use-auth-secret`), for the TURN tests and the
//! browser lanes benchmark.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long coturn gets to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `turnserver` on 127.0.0.1 (UDP and TCP on one port) with
/// `use-auth-secret`, relaying from 127.0.0.1; killed on drop, and with
/// the process that started it.
pub struct Coturn {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Coturn {
    /// Starts coturn on a free loopback port (trying again on another one
    /// if the port was taken in between) with `secret` as its
    /// `static-auth-secret` and `realm`; panics with its log if it does
    /// not start.
    pub fn start(secret: &str, realm: &str) -> Coturn {
        let mut last_log = Vec::new();
        for _ in 0..5 {
            match Coturn::try_start(free_port(), secret, realm) {
                Ok(coturn) => return coturn,
                Err(log) => last_log = log,
            }
        }
        panic!("coturn did not start; its log:\n{}", last_log.join("\n"));
    }

    fn try_start(port: u16, secret: &str, realm: &str) -> Result<Coturn, Vec<String>> {
        let dir =
            std::env::temp_dir().join(format!("deltamesh-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("coturn's directory");
        // A relay port range of its own, away from the ephemeral ports most
        // other sockets here get.
        let min_port = 20_000 + (port % 100) * 100;
        let mut command = Command::new("turnserver");
        command
            .args([
                "-n",
                "-v",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--fingerprint",
            ])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", &min_port.to_string()])
            .args(["--max-port", &(min_port + 99).to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", secret])
            .args(["--realm", realm, "--allow-loopback-peers"])
            .args([
                "--log-file",
                "stdout",
                "--simple-log",
                "--no-software-attribute",
            ])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--db")
            .arg(dir.join("turndb"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours:
        // coturn dies with the test process even if it is killed.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command
            .spawn()
            .expect("turnserver runs (apt-get install coturn)");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let coturn = Coturn {
            child,
            port,
            log,
            dir,
        };
        let listening = format!("UDP listener opened on: 127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if coturn.log_has(&listening) {
                return Ok(coturn);
            }
            if coturn.log_has("Cannot bind") || coturn.log_has("Trying to bind fd") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(coturn.log())
    }

    /// Every line coturn has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether some line coturn logged contains `text`.
    pub fn log_has(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    /// The port it listens on, for UDP and TCP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its TURN URL over `transport` (`"udp"` or `"tcp"`), e.g.
    /// `turn:127.0.0.1:PORT?transport=tcp`.
    pub fn turn_url(&self, transport: &str) -> String {
        assert!(
            matches!(transport, "udp" | "tcp"),
            "TURN over udp or tcp, not {transport:?}"
        );
        format!("turn:127.0.0.1:{}?transport={transport}", self.port)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free for UDP and TCP on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
