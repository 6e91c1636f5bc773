//! JSON logs: with `--log-format json` every line on stderr is one JSON
//! object, and the lines about a connection carry its trace id, the one its
//! peer's `traceparent` started (tracing export off: the id still passes on).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer};
use serde_json::Value;

use crate::common::{TOKEN, lines};

/// Kills the child on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_connections_trace_id() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deltamesh"))
        .args(["--port", "0", "--dev-token", TOKEN, "--log-format", "json"])
        .env("RUST_LOG", "info,str0m=warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("deltamesh starts");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let _child = Killed(child);
    let signal = loop {
        let line = stdout
            .recv_timeout(Duration::from_secs(30))
            .expect("deltamesh prints its signal URL");
        if let Some(url) = line.strip_prefix("signal: ") {
            break url.to_owned();
        }
    };

    let peer = NativePeer::connect(
        ConnectOptions::new(&signal, "logged", TOKEN).with_lane(LaneChoice::WebRtc),
    )
    .await
    .expect("peer connects");
    let trace_id = peer.traceparent().split('-').nth(1).unwrap().to_owned();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = ["offer accepted", "peer welcomed"];
    while !expected
        .iter()
        .all(|m| seen.iter().any(|l: &Value| l["fields"]["message"] == *m))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = stderr
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {expected:?} lines; got {seen:?}"));
        let object: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
        seen.push(object);
    }
    for message in expected {
        let line = seen
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .expect("seen");
        assert_eq!(
            line["fields"]["trace_id"], trace_id,
            "{message:?} names the connection's trace: {line}"
        );
        assert_eq!(line["fields"]["session"], "logged", "{line}");
    }
    peer.close().await;
}
