//! The deployment files agree with the binary: every service in
//! `deploy/docker-compose.yml` runs a real subcommand with flags and
//! environment variables that subcommand accepts (as its `--help` says),
//! the relays scale, NATS keeps JetStream on a volume, Jaeger takes OTLP;
//! `deploy/Dockerfile` builds the binary and ships the web bundle; and
//! `deploy/local-stack` passes only flags that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// The subcommands the compose file and local-stack may run.
const SERVICES: [&str; 3] = ["registry", "relay", "signal"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What `deltamesh SUBCOMMAND --help` lists.
#[derive(Debug, Default)]
struct Accepted {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

/// Runs `deltamesh SUBCOMMAND --help` and collects its `--flags` and
/// `[env: NAME=]` markers; panics if there is no such subcommand.
fn accepted(subcommand: &str) -> Accepted {
    let output = Command::new(env!("CARGO_BIN_EXE_deltamesh"))
        .args([subcommand, "--help"])
        .output()
        .expect("deltamesh runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && help.contains(&format!("deltamesh {subcommand}")),
        "`deltamesh {subcommand}` is not a subcommand: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut accepted = Accepted::default();
    for token in help.split_whitespace() {
        if let Some(name) = token.strip_prefix("--") {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                accepted.flags.insert(format!("--{name}"));
            }
        }
    }
    for marker in help.split("[env: ").skip(1) {
        let name: String = marker
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        accepted.env.insert(name);
    }
    assert!(
        accepted.flags.contains("--help") && !accepted.env.is_empty(),
        "cannot read `deltamesh {subcommand} --help`:\n{help}"
    );
    accepted
}

fn compose() -> Value {
    let mut compose: Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    compose.apply_merge().expect("merge keys resolve");
    compose
}

fn services(compose: &Value) -> &serde_norway::Mapping {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

/// A string or list field as words (`command: a b` or `command: [a, b]`).
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        other => panic!("expected a string or a list, found {other:?}"),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment` (map or `KEY=VALUE` list).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = if v.is_null() {
                    String::new()
                } else {
                    scalar(v)
                };
                (scalar(k), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment is a map or a list, found {other:?}"),
    }
}

/// Variables the binary reads (the rest, OTEL_* and RUST_LOG, are read by
/// libraries).
fn is_deltamesh_var(name: &str) -> bool {
    name.starts_with("DELTAMESH_") || name == "NATS_URL" || name == "PORT"
}

/// The services that run the deltamesh image, with their subcommand.
fn deltamesh_services(compose: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (name, service) in services(compose) {
        let name = scalar(name);
        let image = service["image"].as_str().unwrap_or_default();
        if !image.starts_with("deltamesh") && service["build"].is_null() {
            continue;
        }
        // A helper running its own program from the image (relay-targets).
        if !service["entrypoint"].is_null() {
            continue;
        }
        let command = words(&service["command"]);
        let subcommand = command
            .first()
            .unwrap_or_else(|| panic!("service {name} names no subcommand"))
            .clone();
        found.push((name, subcommand));
    }
    found
}

#[test]
fn compose_services_use_real_subcommands_flags_and_env_vars() {
    let compose = compose();
    let services = deltamesh_services(&compose);
    let subcommands: BTreeSet<&str> = services.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        subcommands,
        SERVICES.into_iter().collect(),
        "the compose file runs registry, relay and signal"
    );
    for (name, subcommand) in &services {
        let accepted = accepted(subcommand);
        let service = service(&compose, name);
        for word in words(&service["command"]).iter().skip(1) {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = format!("--{}", flag.split('=').next().unwrap_or_default());
                assert!(
                    accepted.flags.contains(&flag),
                    "service {name}: `deltamesh {subcommand}` has no {flag} (it has {:?})",
                    accepted.flags
                );
            }
        }
        let env = environment(service);
        for var in env.keys().filter(|k| is_deltamesh_var(k)) {
            assert!(
                accepted.env.contains(var),
                "service {name}: `deltamesh {subcommand}` reads no {var} (it reads {:?})",
                accepted.env
            );
        }
        assert!(
            env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "service {name} sends its traces somewhere"
        );
        assert!(
            env.contains_key("NATS_URL")
                && (subcommand == "registry" || env.contains_key("DELTAMESH_REGISTRY_URL")),
            "service {name} is told where NATS and the registry are"
        );
    }
}

#[test]
fn relays_scale_with_their_own_ports_and_a_reachable_address() {
    let compose = compose();
    let relay = service(&compose, "media-relay");
    assert_eq!(words(&relay["command"])[0], "relay");
    assert!(
        relay["container_name"].is_null(),
        "a fixed container_name stops `--scale media-relay=N`"
    );
    // Each replica binds free UDP ports on the host network and advertises
    // them, so replicas cannot collide on a published port.
    assert_eq!(relay["network_mode"].as_str(), Some("host"));
    assert!(
        relay["ports"].is_null(),
        "host-network relays publish no ports"
    );
    let env = environment(relay);
    // Each replica takes the first free UDP port of one range.
    let udp = listen_ports(&format!("0.0.0.0:{}", env["DELTAMESH_UDP_PORT"]));
    assert!(
        udp.end() - udp.start() >= 9,
        "room for ten replicas in {udp:?}"
    );
    let advertise = env
        .get("DELTAMESH_ADVERTISE_IP")
        .expect("relays advertise an address");
    assert!(!advertise.is_empty(), "the advertised address is set");
    // On the host network, NATS and the registry are reached through their
    // published ports.
    let published = |name: &str, port: &str| {
        words(&service(&compose, name)["ports"])
            .iter()
            .any(|p| p.starts_with(&format!("{port}:")))
    };
    assert!(env["NATS_URL"].ends_with(":4222") && published("nats", "4222"));
    assert!(env["DELTAMESH_REGISTRY_URL"].ends_with(":50051") && published("registry", "50051"));
}

#[test]
fn nats_keeps_jetstream_on_a_volume_and_jaeger_takes_otlp() {
    let compose = compose();
    let nats = service(&compose, "nats");
    let image = nats["image"].as_str().expect("nats image");
    let version = image
        .strip_prefix("nats:")
        .expect("the official nats image");
    let minor: u32 = version
        .strip_prefix("2.")
        .and_then(|v| v.split(['.', '-']).next())
        .and_then(|m| m.parse().ok())
        .expect("nats:2.N");
    assert!(minor >= 11, "nats {version} is older than 2.11");
    let command = words(&nats["command"]);
    assert!(
        command.iter().any(|w| w == "-js" || w == "--jetstream"),
        "NATS runs JetStream: {command:?}"
    );
    let store = command
        .iter()
        .position(|w| w == "-sd" || w == "--store_dir")
        .map(|i| command[i + 1].clone())
        .expect("NATS names its store directory");
    let volumes = words(&nats["volumes"]);
    let named: Vec<&str> = compose["volumes"]
        .as_mapping()
        .expect("named volumes")
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        volumes.iter().any(|v| {
            let (source, target) = v.split_once(':').unwrap_or_default();
            named.contains(&source) && target.trim_end_matches(":rw") == store
        }),
        "the JetStream store {store} is a named volume: {volumes:?}"
    );
    let jaeger = service(&compose, "jaeger");
    let ports = words(&jaeger["ports"]);
    for port in ["4317", "4318", "16686"] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "jaeger publishes {port}: {ports:?}"
        );
    }
    let signal = service(&compose, "signal");
    assert!(
        words(&signal["ports"]).iter().any(|p| p == "8080:8080"),
        "signal is published on 8080"
    );
    assert!(
        environment(signal).contains_key("DELTAMESH_DEV"),
        "development mode is an explicit, visible setting"
    );
}

#[test]
fn the_dockerfile_builds_the_binary_and_ships_the_web_bundle() {
    let dockerfile = read("Dockerfile");
    for needle in [
        "ARG RUST_IMAGE=rust:1-bookworm",
        "FROM ${RUST_IMAGE} AS builder",
        "ARG DEBIAN_IMAGE=debian:bookworm-slim",
        "FROM ${DEBIAN_IMAGE}",
        "id=extra_ca_certs",
        "wasm32-unknown-unknown",
        "wasm-bindgen-cli",
        "cargo build --release --locked --bin deltamesh",
        "scripts/build-web",
        "COPY --from=builder /out/deltamesh",
        "COPY --from=builder /out/web",
        "DELTAMESH_WEB_DIR=",
        "ENTRYPOINT [\"deltamesh\"]",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // Builds with the engine's own frontend (a `# syntax=` line pulls one
    // from a registry), and installs wasm-bindgen-cli as scripts/build-web
    // does (its own lock file pins crates not every registry serves).
    assert!(
        !dockerfile.lines().any(|l| l.starts_with("# syntax=")),
        "Dockerfile names a frontend"
    );
    assert!(
        !dockerfile.contains("--locked wasm-bindgen-cli"),
        "wasm-bindgen-cli installs without --locked"
    );
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the image names a user");
    assert!(
        user.trim() != "root" && user.trim() != "0",
        "runs as non-root"
    );
    // The bundle lands where DELTAMESH_WEB_DIR points.
    let web_dir = dockerfile
        .split("DELTAMESH_WEB_DIR=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("DELTAMESH_WEB_DIR value");
    assert!(
        dockerfile.contains(&format!("COPY --from=builder /out/web {web_dir}")),
        "the bundle is copied to {web_dir}"
    );
}

#[test]
fn local_stack_passes_only_flags_the_binary_accepts() {
    let script = read("local-stack");
    let joined = script.replace("\\\n", " ");
    let mut checked = BTreeSet::new();
    // Services start as `start NAME "$bin" SUBCOMMAND --flag ...`.
    for line in joined
        .lines()
        .filter(|l| l.trim_start().starts_with("start "))
    {
        let Some(rest) = line.split("\"$bin\" ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let subcommand = words.next().expect("a subcommand").to_owned();
        assert!(
            SERVICES.contains(&subcommand.as_str()),
            "local-stack runs `deltamesh {subcommand}`"
        );
        let accepted = accepted(&subcommand);
        for word in words.filter(|w| w.starts_with("--")) {
            assert!(
                accepted.flags.contains(word),
                "local-stack: `deltamesh {subcommand}` has no {word}"
            );
        }
        checked.insert(subcommand);
    }
    assert_eq!(checked, SERVICES.into_iter().map(str::to_owned).collect());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(deploy_dir().join("local-stack"))
            .expect("local-stack exists")
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "local-stack is executable");
    }
}

/// The port of an `IP:PORT` or the range of an `IP:FIRST-LAST` listen value.
fn listen_ports(listen: &str) -> std::ops::RangeInclusive<u16> {
    let ports = listen.rsplit_once(':').expect("IP:PORT").1;
    let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
    first.parse().expect("port")..=last.parse().expect("port")
}

#[test]
fn prometheus_scrapes_each_service_where_it_serves_metrics() {
    let compose = compose();
    let config: Value =
        serde_norway::from_str(&read("prometheus.yml")).expect("prometheus.yml is YAML");
    let targets = |job: &str| -> Vec<String> {
        let job = config["scrape_configs"]
            .as_sequence()
            .expect("scrape_configs")
            .iter()
            .find(|c| c["job_name"].as_str() == Some(job))
            .unwrap_or_else(|| panic!("prometheus.yml has no job {job}"));
        job["static_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|c| words(&c["targets"]))
            .collect()
    };
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        assert_eq!(
            job["honor_labels"].as_bool(),
            Some(true),
            "job {:?} keeps the services' own instance labels",
            job["job_name"]
        );
    }
    let signal_port = &environment(service(&compose, "signal"))["PORT"];
    assert_eq!(targets("signal"), [format!("signal:{signal_port}")]);
    let registry_ops =
        listen_ports(&environment(service(&compose, "registry"))["DELTAMESH_OPS_LISTEN"]);
    assert_eq!(
        targets("registry"),
        [format!("registry:{}", registry_ops.start())]
    );
    // Relays on the host network: Prometheus scrapes the ones that exist,
    // from the file relay-targets keeps in a volume both mount, over the
    // ports the relays take.
    assert!(targets("media-relay").is_empty(), "no fixed relay ports");
    let relay_job = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .find(|c| c["job_name"].as_str() == Some("media-relay"))
        .expect("a media-relay job");
    let files: Vec<String> = relay_job["file_sd_configs"]
        .as_sequence()
        .expect("relays come from file service discovery")
        .iter()
        .flat_map(|c| words(&c["files"]))
        .collect();
    assert_eq!(files, ["/etc/prometheus/targets/relays.json"]);
    let finder = service(&compose, "relay-targets");
    assert_eq!(finder["network_mode"].as_str(), Some("host"));
    assert_eq!(words(&finder["command"]), ["/targets/relays.json"]);
    assert!(words(&finder["volumes"]).contains(&"prometheus-targets:/targets".to_owned()));
    let relay_ops =
        listen_ports(&environment(service(&compose, "media-relay"))["DELTAMESH_OPS_LISTEN"]);
    assert_eq!(
        environment(finder)["RELAY_OPS_PORTS"],
        format!("{}-{}", relay_ops.start(), relay_ops.end())
    );
    assert!(
        words(&service(&compose, "prometheus")["volumes"])
            .contains(&"prometheus-targets:/etc/prometheus/targets:ro".to_owned())
    );
    let prometheus = service(&compose, "prometheus");
    assert!(
        words(&prometheus["extra_hosts"]).contains(&"host.docker.internal:host-gateway".to_owned())
    );
    assert!(
        words(&prometheus["volumes"])
            .iter()
            .any(|v| v.starts_with("./prometheus.yml:/etc/prometheus/prometheus.yml"))
    );
}

#[test]
fn grafana_loads_the_dashboard_from_prometheus() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    let volumes = words(&grafana["volumes"]);
    for volume in &volumes {
        let source = volume.split(':').next().unwrap_or_default();
        let path = deploy_dir().join(source);
        assert!(
            path.exists(),
            "grafana mounts {} which does not exist",
            path.display()
        );
    }
    let mounted = |source: &str| {
        volumes
            .iter()
            .find(|v| v.starts_with(&format!("{source}:")))
            .and_then(|v| v.split(':').nth(1))
            .unwrap_or_else(|| panic!("grafana mounts no {source}: {volumes:?}"))
            .to_owned()
    };
    assert_eq!(
        mounted("./grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboard_path = mounted("./grafana/deltamesh.json");
    let provider: Value =
        serde_norway::from_str(&read("grafana/provisioning/dashboards/deltamesh.yml"))
            .expect("dashboard provider YAML");
    let folder = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    assert_eq!(dashboard_path, format!("{folder}/deltamesh.json"));
    let source: Value =
        serde_norway::from_str(&read("grafana/provisioning/datasources/prometheus.yml"))
            .expect("datasource YAML");
    assert_eq!(
        source["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    assert!(words(&service(&compose, "prometheus")["ports"]).contains(&"9090:9090".to_owned()));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/deltamesh.json")).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .count();
    assert!(queries >= 20, "{queries} queries");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} reads the chosen Prometheus",
            panel["title"]
        );
    }
}
