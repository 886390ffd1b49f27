//! Hosts and the paths between them: each host is a network namespace; a path is either a
//! veth pair (the kernel's own link) or a `Wire`, a pair of TUN devices whose packets this
//! test process forwards with the impairment the scenario sets (netem's model: a delay with
//! uniform jitter, independent loss, and a partition as 100% loss).
//!
//! Why TUN and not `tc netem`: the kernel of the machines this project runs on (the CI's
//! included) is built without `sch_netem` (`CONFIG_NET_SCH_NETEM` is not set, and there are no
//! modules to load), so `tc qdisc add .. netem` fails with "Specified qdisc kind is unknown".
//! The packets still leave and enter real kernel TCP stacks in separate namespaces; only the
//! wire between them is this process.
//!
//! Names are unique per run (`cl<pid hex>x<n>`), so two runs cannot collide; `Drop` kills
//! every process left in the lab's namespaces and deletes them (veth pairs go with them, the
//! TUN devices with their file descriptors). Namespaces of an earlier run whose process is
//! gone (killed before its `Drop` ran) are removed when the next lab starts.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio_tun::Tun;

/// What a wire does to each packet, in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    pub delay: Duration,
    /// The delay varies uniformly within `delay ± jitter` (packets may overtake each other,
    /// as with netem).
    pub jitter: Duration,
    /// Probability that a packet is dropped.
    pub loss: f64,
}

impl Impairment {
    pub const CLEAN: Impairment = Impairment {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
    };
    /// A silent partition: every packet is dropped, both ways (no RST, no ICMP: like a dead
    /// switch or a firewall's DROP, the hosts learn of it only through their own timeouts).
    pub const PARTITION: Impairment = Impairment {
        loss: 1.0,
        ..Self::CLEAN
    };

    pub fn delay(delay: Duration, jitter: Duration) -> Impairment {
        Impairment {
            delay,
            jitter,
            ..Self::CLEAN
        }
    }

    pub fn loss(loss: f64) -> Impairment {
        Impairment {
            loss,
            ..Self::CLEAN
        }
    }

    fn sample_delay(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        let spread = self.jitter.as_secs_f64() * (2.0 * rand::random::<f64>() - 1.0);
        Duration::from_secs_f64((self.delay.as_secs_f64() + spread).max(0.0))
    }
}

/// The control of one wire (cheap to clone).
#[derive(Clone)]
pub struct Wire {
    state: Arc<Mutex<Impairment>>,
}

impl Wire {
    pub fn set(&self, impairment: Impairment) {
        *self.state.lock() = impairment;
    }
}

/// One host of the lab.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
}

pub struct Lab {
    id: String,
    /// The lab's addresses: `10.<block>.0/24`, a /30 per link.
    block: [u8; 2],
    links: u8,
    namespaces: Vec<String>,
    /// This namespace's ends of the access links.
    access_links: Vec<String>,
    wires: Vec<Wire>,
    forwarders: Vec<AbortHandle>,
    /// Logs and data of the lab's processes.
    pub dir: tempfile::TempDir,
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Why the lab cannot run here, if it cannot (it needs root, `ip netns` and `/dev/net/tun`).
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Some(format!(
                "ip netns: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Err(e) => return Some(format!("no ip command: {e}")),
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

/// Runs a command; panics with its stderr when it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills every process in namespace `ns` (SIGKILL).
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).output();
    }
}

/// Removes the namespaces of earlier runs whose test process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("cl")
            .and_then(|rest| rest.split('x').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if name.contains('-') && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("lab: removing the stale namespace {name} of a dead run");
            kill_all_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A free `10.x.y.0/24`: not on any interface of the root namespace, not taken by another lab
/// of this process.
fn free_block() -> [u8; 2] {
    static TAKEN: Mutex<Vec<[u8; 2]>> = Mutex::new(Vec::new());
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    let used: HashSet<[u8; 2]> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| a.octets()[0] == 10)
        .map(|a| [a.octets()[1], a.octets()[2]])
        .collect();
    let mut taken = TAKEN.lock();
    loop {
        let block = [100 + rand::random::<u8>() % 100, rand::random::<u8>()];
        if !used.contains(&block) && !taken.contains(&block) {
            taken.push(block);
            return block;
        }
    }
}

impl Lab {
    /// A new, empty lab; `None` (after printing why) when this machine cannot run it.
    pub fn new(test: &str) -> Option<Lab> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: lab::{test} (needs root and ip netns): {why}");
            return None;
        }
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(remove_stale_namespaces);
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "cl{:x}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("chat-lab-")
            .tempdir()
            .expect("lab dir");
        Some(Lab {
            id,
            block: free_block(),
            links: 0,
            namespaces: Vec::new(),
            access_links: Vec::new(),
            wires: Vec::new(),
            forwarders: Vec::new(),
            dir,
        })
    }

    pub fn host(&mut self, name: &str) -> Host {
        let ns = format!("{}-{name}", self.id);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        Host {
            name: name.into(),
            ns,
        }
    }

    /// The next /30: (its first address, its second address) and a short unique link name.
    fn next_link(&mut self) -> (Ipv4Addr, Ipv4Addr, String) {
        assert!(self.links < 60, "a lab has at most 60 links");
        let base = self.links * 4;
        self.links += 1;
        let [x, y] = self.block;
        (
            Ipv4Addr::new(10, x, y, base + 1),
            Ipv4Addr::new(10, x, y, base + 2),
            format!("{}l{}", self.id, self.links),
        )
    }

    fn address(ns: Option<&str>, dev: &str, addr: Ipv4Addr) {
        let cidr = format!("{addr}/30");
        match ns {
            Some(ns) => {
                run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev]);
                run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            }
            None => {
                run(&["ip", "addr", "add", &cidr, "dev", dev]);
                run(&["ip", "link", "set", dev, "up"]);
            }
        }
    }

    /// A veth pair between this (root) namespace and `host`, so the test reaches the host's
    /// services; returns the host's address on it.
    pub fn access(&mut self, host: &Host) -> Ipv4Addr {
        let (mine, theirs, name) = self.next_link();
        run(&[
            "ip", "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns", &host.ns,
        ]);
        Self::address(None, &name, mine);
        Self::address(Some(&host.ns), "eth0", theirs);
        self.access_links.push(name);
        theirs
    }

    /// A veth pair between two hosts; returns (a's address, b's address).
    pub fn veth(&mut self, a: &Host, b: &Host) -> (Ipv4Addr, Ipv4Addr) {
        let (addr_a, addr_b, _) = self.next_link();
        let (dev_a, dev_b) = (format!("to-{}", b.name), format!("to-{}", a.name));
        run(&[
            "ip", "link", "add", &dev_a, "netns", &a.ns, "type", "veth", "peer", "name", &dev_b,
            "netns", &b.ns,
        ]);
        Self::address(Some(&a.ns), &dev_a, addr_a);
        Self::address(Some(&b.ns), &dev_b, addr_b);
        (addr_a, addr_b)
    }

    /// A wire between two hosts (clean until told otherwise); returns its control and
    /// (a's address, b's address).
    pub fn wire(&mut self, a: &Host, b: &Host) -> (Wire, Ipv4Addr, Ipv4Addr) {
        let (addr_a, addr_b, name) = self.next_link();
        let tun = |suffix: &str| {
            Arc::new(
                Tun::builder()
                    .name(&format!("{name}{suffix}"))
                    .build()
                    .expect("create a TUN device")
                    .pop()
                    .expect("one queue"),
            )
        };
        let (tun_a, tun_b) = (tun("a"), tun("b"));
        for (t, host, addr) in [(&tun_a, a, addr_a), (&tun_b, b, addr_b)] {
            run(&["ip", "link", "set", t.name(), "netns", &host.ns]);
            Self::address(Some(&host.ns), t.name(), addr);
        }
        let state = Arc::new(Mutex::new(Impairment::CLEAN));
        for (from, to) in [(tun_a.clone(), tun_b.clone()), (tun_b, tun_a)] {
            let task = tokio::spawn(forward(from, to, state.clone()));
            self.forwarders.push(task.abort_handle());
        }
        let wire = Wire { state };
        self.wires.push(wire.clone());
        (wire, addr_a, addr_b)
    }

    /// `ip netns exec <host> <program>`, with a clean environment (only `PATH`) and the lab's
    /// folder as working directory (no `.env` file is read from the repo).
    pub fn command(&self, host: &Host, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns, program])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(self.dir.path());
        cmd
    }
}

/// One direction of a wire: each packet read from `from` is dropped, or written to `to` after
/// its delay.
async fn forward(from: Arc<Tun>, to: Arc<Tun>, state: Arc<Mutex<Impairment>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(n) = from.recv(&mut buf).await else {
            return;
        };
        let impairment = *state.lock();
        if impairment.loss > 0.0 && rand::random::<f64>() < impairment.loss {
            continue;
        }
        let delay = impairment.sample_delay();
        if delay.is_zero() {
            let _ = to.send(&buf[..n]).await;
        } else {
            let (packet, to) = (buf[..n].to_vec(), to.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = to.send(&packet).await;
            });
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            kill_all_in(ns);
        }
        // The wires stay up (and clean) until the killed processes are gone and a moment
        // more, so their connections end with a FIN or RST rather than as orphans that keep a
        // deleted namespace alive while they retransmit.
        for wire in &self.wires {
            wire.set(Impairment::CLEAN);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let busy = |ns: &String| {
            Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty())
        };
        while self.namespaces.iter().any(busy) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        for link in &self.access_links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for task in &self.forwarders {
            task.abort();
        }
    }
}
