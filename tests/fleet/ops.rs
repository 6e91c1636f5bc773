//! The operators' endpoints: `/metrics` in Prometheus text on every service
//! with its labels, counters moving as deltas flow and every metric the
//! Grafana dashboard reads; `/healthz`, and `/readyz` turning 503 while a
//! relay drains; and the one-process fleet serving all three services'
//! metrics on signal's port.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_testkit::NatsServer;

use crate::common::{Fleet, Service, TOKEN, TestPeer, strings};

/// The status and body of `GET {base}{path}`, or `None` if nothing answers.
async fn get(base: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("{base}{path}")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// `/metrics` of the service at `base`, checked to be Prometheus text:
/// every line a comment or `name{labels} value`. Returns the samples as
/// (name, labels, value).
async fn scrape(base: &str) -> Vec<(String, String, f64)> {
    let (status, text) = get(base, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200, "{text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels of {line:?}")),
            ),
            None => (series, ""),
        };
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
        });
        assert!(!name.is_empty() && valid_name, "metric name of {line:?}");
        for label in labels.split(',').filter(|l| !l.is_empty()) {
            let (key, value) = label.split_once('=').expect("label=value");
            assert!(!key.is_empty(), "label of {line:?}");
            assert!(
                value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                "label value of {line:?}"
            );
        }
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    assert!(!samples.is_empty(), "no samples in {text}");
    samples
}

/// The metric families `/metrics` of the service at `base` declares (its
/// `# TYPE` lines), whether or not they have samples yet.
async fn families(base: &str) -> BTreeSet<String> {
    let (_, text) = get(base, "/metrics").await.expect("/metrics answers");
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The deltamesh metric families the Grafana dashboard's queries read.
fn dashboard_families() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/deltamesh.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut found = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for word in words.filter(|w| {
                ["relay_", "registry_", "signal_"]
                    .iter()
                    .any(|p| w.starts_with(p))
            }) {
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                found.insert(family.strip_suffix("_total").unwrap_or(family).to_owned());
            }
        }
    }
    found
}

/// Scrapes `base` until `done` holds for its samples (within 5 s), and
/// returns them; `what` says what was awaited.
async fn scrape_until(
    base: &str,
    what: &str,
    done: impl Fn(&[(String, String, f64)]) -> bool,
) -> Vec<(String, String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let samples = scrape(base).await;
        if done(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{what}: {samples:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `name` whose labels contain `label`.
fn sample(samples: &[(String, String, f64)], name: &str, label: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, labels, _)| n == name && labels.contains(label))
        .map(|(_, _, value)| *value)
}

/// An SDP offer as a browser makes it, from a peer that never answers ICE.
fn offer_that_never_connects() -> String {
    let mut rtc = str0m::Rtc::new(Instant::now());
    let mut changes = rtc.sdp_api();
    changes.add_channel("command".to_owned());
    let (offer, _pending) = changes.apply().expect("an offer");
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_registry_serve_metrics_health_and_readiness() {
    let mut fleet = Fleet::start(1, 1, 10, 1).await;
    let relay_ops = fleet.relays[0].service.wait_line("ops: ");
    let registry_ops = fleet.registries[0].0.wait_line("ops: ");
    let relay_id: Id = fleet.relays[0].id;

    for base in [&relay_ops, &registry_ops] {
        assert_eq!(get(base, "/healthz").await.expect("healthz").0, 200);
        let (status, reason) = get(base, "/readyz").await.expect("readyz");
        assert_eq!(status, 200, "{base}: {reason}");
    }

    let samples = scrape(&relay_ops).await;
    let instance = format!("instance=\"{relay_id}\"");
    assert!(
        samples.iter().all(
            |(_, labels, _)| labels.contains("service=\"relay\"") && labels.contains(&instance)
        ),
        "every relay metric carries service and instance: {samples:?}"
    );
    assert_eq!(sample(&samples, "relay_jetstream_pending", ""), Some(0.0));
    assert_eq!(sample(&samples, "relay_draining", ""), Some(0.0));
    let before = sample(&samples, "relay_deltas_in_total", "").expect("relay_deltas_in");

    let mut peer = TestPeer::join(&fleet.signals[0].1, "ops").await;
    peer.send_acked(b"counted").await;
    // Its echo written back: every counter below has moved by now.
    assert!(
        peer.pump_until(Duration::from_secs(10), |p| p.received.len() == 1)
            .await,
        "the peer receives its own delta"
    );
    let samples = scrape_until(&relay_ops, "relay_deltas_in does not move", |s| {
        sample(s, "relay_deltas_in_total", "") > Some(before)
    })
    .await;
    let value = |name: &str, label: &str| {
        sample(&samples, name, label).unwrap_or_else(|| panic!("{name}{{{label}}}: {samples:?}"))
    };
    assert_eq!(value("relay_connections", "state=\"connected\""), 1.0);
    assert_eq!(value("relay_connections", "state=\"connecting\""), 0.0);
    for phase in ["ice", "dtls", "channels"] {
        let label = format!("phase=\"{phase}\"");
        assert_eq!(value("relay_connect_seconds_count", &label), 1.0, "{phase}");
        assert!(value("relay_connect_seconds_sum", &label) > 0.0, "{phase}");
    }
    // Another peer comes and goes: the gauge counts it, then forgets it.
    let extra = TestPeer::join(&fleet.signals[0].1, "ops").await;
    let connected = |samples: &[(String, String, f64)], state: &str| {
        sample(samples, "relay_connections", &format!("state=\"{state}\""))
    };
    assert_eq!(connected(&scrape(&relay_ops).await, "connected"), Some(2.0));
    extra.peer.close().await;
    scrape_until(
        &relay_ops,
        "relay_connections does not drop back after a close",
        |s| connected(s, "connected") == Some(1.0) && connected(s, "connecting") == Some(0.0),
    )
    .await;
    // The peer echoes its own delta: bytes in and out both moved.
    assert!(value("relay_delta_in_bytes_total", "") >= 7.0);
    assert!(value("relay_delta_out_bytes_total", "") >= 7.0);
    assert!(value("relay_jetstream_publish_seconds_count", "") >= 1.0);
    assert!(value("relay_peer_queue_depth_count", "") >= 1.0);

    let signal = &fleet.signals[0].1;
    let refused = reqwest::Client::new()
        .post(format!("{signal}/v1/sessions/ops/peers"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/sdp")
        .body("not an offer")
        .send()
        .await
        .expect("signal answers");
    assert_eq!(refused.status(), 400);
    let samples = scrape(signal).await;
    assert!(
        samples
            .iter()
            .any(|(name, _, value)| name == "signal_offers_failed_total" && *value >= 1.0),
        "the refused offer is counted: {samples:?}"
    );
    assert!(
        samples
            .iter()
            .all(|(_, labels, _)| labels.contains("service=\"signal\"")
                && labels.contains("instance=")),
        "every signal metric carries service and instance: {samples:?}"
    );
    let mut served = families(&relay_ops).await;
    served.extend(families(&registry_ops).await);
    served.extend(families(signal).await);
    let dashboard = dashboard_families();
    assert!(dashboard.len() >= 15, "{dashboard:?}");
    let missing: Vec<&String> = dashboard.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics no service serves: {missing:?}"
    );

    for target in ["registry", "relay"] {
        let label = format!("target=\"{target}\",outcome=\"ok\"");
        let label = label.as_str();
        let count = samples
            .iter()
            .find(|(n, l, _)| n == "signal_fleet_request_seconds_count" && l.contains(label))
            .map(|(_, _, v)| *v);
        assert!(count >= Some(1.0), "{target} requests: {samples:?}");
    }

    let samples = scrape(&registry_ops).await;
    assert!(
        samples
            .iter()
            .all(|(_, labels, _)| labels.contains("service=\"registry\"")),
        "every registry metric carries service: {samples:?}"
    );
    let placed = sample(&samples, "registry_placements_total", "outcome=\"placed\"");
    assert!(placed >= Some(1.0), "placements: {samples:?}");

    // SIGTERM: the relay drains, /readyz says so, then the process exits.
    // The connected peer moves at once; a peer that offered and never
    // connects keeps the relay draining for the whole drain grace (5 s), so
    // the 503 is there to see however slowly this test runs.
    let connecting = reqwest::Client::new()
        .post(format!("{signal}/v1/sessions/ops/peers"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/sdp")
        .body(offer_that_never_connects())
        .send()
        .await
        .expect("signal answers");
    assert_eq!(connecting.status(), 201);
    fleet.relays[0].service.sigterm();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match get(&relay_ops, "/readyz").await {
            Some((503, reason)) => {
                assert!(reason.contains("draining"), "{reason}");
                break;
            }
            Some((200, _)) if Instant::now() < deadline => {}
            other => panic!("no 503 while draining: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        fleet.relays[0].service.terminate(Duration::from_secs(15)),
        "the relay exits after draining"
    );
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_on_nats_serves_every_services_metrics() {
    let nats = NatsServer::start();
    let args = [
        "--nats",
        &nats.url(),
        "--port",
        "0",
        "--dev-token",
        TOKEN,
        "--address-rate",
        "0",
        "--token-rate",
        "0",
    ];
    let (_stack, signal) = Service::start(&strings(&args), "signal: ");
    let mut peer = TestPeer::join(&signal, "one-process").await;
    peer.send_acked(b"counted").await;
    scrape_until(
        &signal,
        "signal's /metrics lacks the relay's or the registry's counters",
        |s| {
            sample(s, "relay_deltas_in_total", "") >= Some(1.0)
                && sample(s, "registry_placements_total", "outcome=\"placed\"") >= Some(1.0)
                && sample(s, "signal_offers_accepted_total", "") >= Some(1.0)
        },
    )
    .await;
}
