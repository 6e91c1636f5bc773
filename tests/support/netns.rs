//! A client network a test makes and removes: a network namespace joined
//! to the host by a veth pair with a private /30 of its own (10.213.0.0/16,
//! picked from the process id and a counter; names unique per process, so
//! parallel runs do not collide), and firewall rules inside it (`iptables`)
//! that drop UDP or TCP to chosen ports. Servers listen on
//! [`NetNs::host_ip`], the host's end; clients run inside with
//! [`NetNs::exec`] (a process) or [`NetNs::enter`] (a thread of this
//! process, whose new sockets then live in the namespace). Dropping it
//! deletes the namespace and with it both ends of the pair, also when the
//! test panics. Needs root (`ip`, `iptables`).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace with a veth pair to the host.
pub(crate) struct NetNs {
    name: String,
    /// The host's end of the pair.
    pub(crate) host_ip: Ipv4Addr,
    /// The namespace's end of the pair.
    pub(crate) ns_ip: Ipv4Addr,
    /// The host's and the namespace's interface names.
    interfaces: (String, String),
}

/// Runs `ip`/`iptables` with `args`, panicking with its stderr on failure.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (root and iproute2 needed): {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetNs {
    /// Makes a namespace whose only link is a veth pair to the host, both
    /// ends up and addressed, `lo` up inside.
    pub(crate) fn create() -> NetNs {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes.
        let tag = format!("{:x}{n:x}", pid % 0x10_0000);
        let name = format!("dm-test-{tag}");
        let host_if = format!("dmh{tag}");
        let ns_if = format!("dmn{tag}");
        let block = (pid.wrapping_mul(31).wrapping_add(n * 7919)) % 16_384;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block * 4;
        let host_ip = Ipv4Addr::from(base + 1);
        let ns_ip = Ipv4Addr::from(base + 2);
        run("ip", &["netns", "add", &name]);
        // From here on, Drop cleans up whatever the next steps made.
        let netns = NetNs {
            name,
            host_ip,
            ns_ip,
            interfaces: (host_if.clone(), ns_if.clone()),
        };
        let name = netns.name.as_str();
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", name,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
        );
        run("ip", &["link", "set", &host_if, "up"]);
        netns.ip(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        netns.ip(&["link", "set", &ns_if, "up"]);
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Drops every UDP datagram into and out of the namespace, as a
    /// network that blocks UDP does (loopback inside stays open).
    pub(crate) fn block_udp(&self) {
        for chain in ["OUTPUT", "INPUT"] {
            let interface = if chain == "OUTPUT" { "-o" } else { "-i" };
            self.iptables(&["-A", chain, interface, "lo", "-j", "ACCEPT"]);
            self.iptables(&["-A", chain, "-p", "udp", "-j", "DROP"]);
        }
    }

    /// Lets UDP through again: removes what [`NetNs::block_udp`] added.
    pub(crate) fn unblock_udp(&self) {
        for chain in ["OUTPUT", "INPUT"] {
            let interface = if chain == "OUTPUT" { "-o" } else { "-i" };
            self.iptables(&["-D", chain, interface, "lo", "-j", "ACCEPT"]);
            self.iptables(&["-D", chain, "-p", "udp", "-j", "DROP"]);
        }
    }

    /// Refuses TCP from the namespace to `port` (any host), as a network
    /// that allows only some ports does.
    pub(crate) fn block_tcp_port(&self, port: u16) {
        let port = port.to_string();
        self.iptables(&[
            "-A", "OUTPUT", "-p", "tcp", "--dport", &port, "-j", "REJECT",
        ]);
    }

    /// Renumbers the namespace's end of the pair, as a client whose
    /// network changes (Wi-Fi to mobile): its old address is removed (with
    /// it every socket bound there loses its path) and `10.214.x.y` (from
    /// the old `10.213.x.y`) takes its place, still reaching
    /// [`NetNs::host_ip`]. Returns the new address, now [`NetNs::ns_ip`].
    pub(crate) fn renumber(&mut self) -> Ipv4Addr {
        let [_, _, x, y] = self.ns_ip.octets();
        let new = Ipv4Addr::new(10, 214, x, y);
        let (host_if, ns_if) = self.interfaces.clone();
        self.ip(&["addr", "add", &format!("{new}/32"), "dev", &ns_if]);
        run(
            "ip",
            &["route", "add", &format!("{new}/32"), "dev", &host_if],
        );
        self.ip(&["addr", "del", &format!("{}/30", self.ns_ip), "dev", &ns_if]);
        self.ip(&[
            "route",
            "add",
            &format!("{}/32", self.host_ip),
            "dev",
            &ns_if,
            "src",
            &new.to_string(),
        ]);
        self.ns_ip = new;
        new
    }

    /// A command that runs `program` inside the namespace.
    pub(crate) fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Moves the calling thread into the namespace: sockets it creates from
    /// now on are the namespace's (run this on a thread of its own).
    pub(crate) fn enter(&self) {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: a plain syscall on a file we hold open; it changes only
        // the calling thread's network namespace.
        let entered = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        assert_eq!(
            entered,
            0,
            "setns {path}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    fn iptables(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.name.as_str(), "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it
        // the host's end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
