//! The network under test: one namespace per node (`<prefix>n1..n3`) and a hub namespace
//! (`<prefix>hub`) holding a bridge. Each node has a veth pair: `eth0` inside its namespace,
//! `vN` attached to the bridge in the hub. The runner itself moves into the hub namespace (see
//! `main.rs`), where the bridge carries the control address, so the control node reaches every
//! node over the bridge and no address or route is added to the machine's own namespace.
//!
//! ```text
//!   [n1 eth0 10.77.0.1]--v1--+
//!   [n2 eth0 10.77.0.2]--v2--+ br0 10.77.0.254 (hub: the runner, nft table)
//!   [n3 eth0 10.77.0.3]--v3--+
//! ```
//!
//! Faults live in ONE nftables table of the bridge family in the hub: a forward chain drops
//! node-to-node packets whose (source, destination) pair is in the cut set, and drops a random
//! percentage when packet loss is on. Client traffic from the runner is local to the hub (output
//! and input, not forward), so the control node always reaches every node, isolated or not,
//! which is what lets the self-test read from an isolated follower. The whole table is replaced
//! in one `nft -f` transaction, so a fault change is atomic.
//!
//! Must never: touch a namespace or table it did not create (everything carries the run's prefix
//! `qjep<pid>-`), or leave one behind (the Drop guard and the stale sweep at start remove them).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::process::Stdio;

/// Namespaces of every run start with this; the runner's pid follows, then `-`.
pub const NAME_PREFIX: &str = "qjep";
/// The nftables table (bridge family) in the hub namespace.
pub const TABLE: &str = "quorumdb_jepsen";
pub const SUBNET: &str = "10.77.0";
pub const CONTROL_ADDRESS: &str = "10.77.0.254";

pub fn node_address(index: usize) -> String {
    format!("{SUBNET}.{}", index + 1)
}

/// Runs a command, returning its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to {program}: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}\ninput was:\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The faults the network currently has: cut directed links (source, destination node indexes)
/// and a random loss percentage on node-to-node traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetFaults {
    pub cut: BTreeSet<(usize, usize)>,
    pub loss_percent: u8,
}

impl NetFaults {
    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn cut_between(&mut self, a: &[usize], b: &[usize]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }
}

/// Removes the namespaces of runs whose runner is gone (an aborted run), with their processes.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return removed;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if runner_alive(pid) {
            continue;
        }
        kill_namespace_processes(name);
        let _ = run("ip", &["netns", "del", name]);
        removed.push(name.to_string());
    }
    // Data folders of dead runs.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !runner_alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
                removed.push(entry.path().display().to_string());
            }
        }
    }
    removed
}

fn runner_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim().starts_with("quorumdb-jepsen"))
        .unwrap_or(false)
}

/// SIGKILLs every process living in namespace `name` (found by pid through `ip netns pids`).
fn kill_namespace_processes(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        let own = std::process::id() as i32;
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|pid| *pid != own)
        {
            // SAFETY: kill(2) with a pid we just read; SIGKILL also ends stopped processes.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The namespaces, veths, bridge and nft table of one run. Dropping it removes them all.
pub struct Topology {
    pub prefix: String,
    pub nodes: usize,
    created: Vec<String>,
}

impl Topology {
    pub fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    pub fn node_namespace(&self, index: usize) -> String {
        format!("{}n{}", self.prefix, index + 1)
    }

    /// Builds everything; on any error what was built so far is removed (by Drop).
    pub fn create(nodes: usize) -> Result<Topology, String> {
        let prefix = format!("{NAME_PREFIX}{}-", std::process::id());
        let mut topology = Topology {
            prefix,
            nodes,
            created: Vec::new(),
        };
        let hub = topology.hub();
        run("ip", &["netns", "add", &hub])?;
        topology.created.push(hub.clone());
        let in_hub = |args: &[&str]| -> Result<String, String> {
            let mut full = vec!["-n", hub.as_str()];
            full.extend_from_slice(args);
            run("ip", &full)
        };
        in_hub(&["link", "set", "lo", "up"])?;
        in_hub(&["link", "add", "br0", "type", "bridge"])?;
        in_hub(&[
            "addr",
            "add",
            &format!("{CONTROL_ADDRESS}/24"),
            "dev",
            "br0",
        ])?;
        in_hub(&["link", "set", "br0", "up"])?;
        for index in 0..nodes {
            let namespace = topology.node_namespace(index);
            run("ip", &["netns", "add", &namespace])?;
            topology.created.push(namespace.clone());
            let port = format!("v{}", index + 1);
            in_hub(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ])?;
            in_hub(&["link", "set", &port, "master", "br0"])?;
            in_hub(&["link", "set", &port, "up"])?;
            let address = format!("{}/24", node_address(index));
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &["-n", &namespace, "addr", "add", &address, "dev", "eth0"],
            )?;
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
        }
        topology.apply(&NetFaults::default())?;
        Ok(topology)
    }

    /// Replaces the whole fault table in one transaction.
    pub fn apply(&self, faults: &NetFaults) -> Result<(), String> {
        let mut rules = String::new();
        // "add" then "delete" makes the delete safe when the table does not exist yet; the new
        // definition follows in the same transaction.
        rules.push_str(&format!(
            "add table bridge {TABLE}\ndelete table bridge {TABLE}\n"
        ));
        rules.push_str(&format!("table bridge {TABLE} {{\n"));
        rules.push_str("  set cut {\n    type ipv4_addr . ipv4_addr\n");
        if !faults.cut.is_empty() {
            let elements: Vec<String> = faults
                .cut
                .iter()
                .map(|(s, d)| format!("{} . {}", node_address(*s), node_address(*d)))
                .collect();
            rules.push_str(&format!("    elements = {{ {} }}\n", elements.join(", ")));
        }
        rules.push_str("  }\n");
        rules.push_str(
            "  chain forward {\n    type filter hook forward priority 0; policy accept;\n",
        );
        rules.push_str("    ip saddr . ip daddr @cut drop\n");
        if faults.loss_percent > 0 {
            rules.push_str(&format!(
                "    ip saddr {SUBNET}.0/24 numgen random mod 100 < {} drop\n",
                faults.loss_percent
            ));
        }
        rules.push_str("  }\n}\n");
        run_with_input(
            "ip",
            &["netns", "exec", &self.hub(), "nft", "-f", "-"],
            &rules,
        )
    }

    /// Removes the table, every process left in our namespaces, then the namespaces.
    fn teardown(&mut self) {
        if self.created.is_empty() {
            return;
        }
        let hub = self.hub();
        let _ = run(
            "ip",
            &[
                "netns", "exec", &hub, "nft", "delete", "table", "bridge", TABLE,
            ],
        );
        for name in self.created.iter().rev() {
            kill_namespace_processes(name);
            if let Err(e) = run("ip", &["netns", "del", name]) {
                eprintln!("jepsen: teardown: {e}");
            }
        }
        self.created.clear();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The calling thread's network namespace, to come back to before teardown.
pub struct Home(std::fs::File);

impl Home {
    pub fn current() -> Result<Home, String> {
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(Home)
            .map_err(|e| format!("open /proc/thread-self/ns/net: {e}"))
    }

    pub fn restore(&self) -> Result<(), String> {
        setns(&self.0, "the original namespace")
    }
}

fn setns(file: &std::fs::File, what: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file descriptor we hold open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Moves the calling thread into namespace `name`. Threads created afterwards inherit it, so
/// call it before the async runtime starts its workers.
pub fn enter(name: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{name}");
    let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    setns(&file, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_between_groups_cuts_both_directions() {
        let mut faults = NetFaults::default();
        faults.cut_between(&[0], &[1, 2]);
        assert_eq!(faults.cut.len(), 4);
        assert!(faults.cut.contains(&(2, 0)));
        assert!(!faults.cut.contains(&(1, 2)));
    }
}
