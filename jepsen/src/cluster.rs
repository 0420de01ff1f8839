//! The cluster under test: three `quorumdb server` processes, node i in namespace n(i+1),
//! listening on its namespace address, data on disk under the run's temporary folder, logs in
//! the results folder. The runner keeps each child's pid: kill -9, SIGTERM, restart, SIGSTOP and
//! SIGCONT all go to that pid (`ip netns exec` execs the server, so its pid is the node's).
//!
//! Must never: signal a process it did not start, or leave a node running (Drop kills every node,
//! continuing a paused one first is unnecessary: SIGKILL ends stopped processes too).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use quorumdb::config::derive_node_id;
use quorumdb::pb::etcdserverpb::StatusRequest;
use quorumdb::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::net;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

pub struct Node {
    pub name: String,
    pub id: u64,
    pub namespace: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    pub paused: bool,
}

impl Node {
    pub fn client_url(index: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", net::node_address(index))
    }

    fn peer_url(index: usize) -> String {
        format!("http://{}:{PEER_PORT}", net::node_address(index))
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    binary: PathBuf,
    initial_cluster: String,
}

impl Cluster {
    pub fn new(
        binary: &Path,
        topology: &net::Topology,
        data_root: &Path,
        log_dir: &Path,
    ) -> Cluster {
        let initial_cluster = (0..topology.nodes)
            .map(|i| format!("n{}={}", i + 1, Node::peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..topology.nodes)
            .map(|i| {
                let name = format!("n{}", i + 1);
                Node {
                    id: derive_node_id(&name),
                    namespace: topology.node_namespace(i),
                    data_dir: data_root.join(&name),
                    log_path: log_dir.join(format!("{name}.log")),
                    name,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        Cluster {
            nodes,
            binary: binary.to_path_buf(),
            initial_cluster,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn start(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        if node.child.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| format!("open {}: {e}", node.log_path.display()))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.namespace])
            .arg(&self.binary)
            .arg("server")
            .args(["--name", &node.name])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen-client-urls", &Node::client_url(index)])
            .args(["--listen-peer-urls", &Node::peer_url(index)])
            .args(["--initial-cluster", &self.initial_cluster])
            .env("QUORUMDB_LOG", "info,openraft=warn")
            // Its own process group: a Ctrl-C at the terminal reaches the runner only, which
            // heals and then kills the nodes itself (and does not mistake them for crashes).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        for index in 0..self.nodes.len() {
            self.start(index)?;
        }
        Ok(())
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].child.is_some()
    }

    /// kill -9: no shutdown code runs; what sled had not flushed is lost.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[index].paused = false;
    }

    /// SIGTERM, an operator's stop: waits up to `wait` for the node to exit. `Err` says how the
    /// stop went wrong (a failed exit, or still running: then it is killed), a finding.
    pub async fn terminate(&mut self, index: usize, wait: Duration) -> Result<String, String> {
        self.signal(index, libc::SIGTERM)?;
        let started = std::time::Instant::now();
        loop {
            let node = &mut self.nodes[index];
            let child = node.child.as_mut().expect("signalled above");
            let exited = child
                .try_wait()
                .map_err(|e| format!("wait for {}: {e}", node.name))?;
            if let Some(status) = exited {
                node.child = None;
                let took = started.elapsed().as_secs_f64();
                return if status.success() {
                    Ok(format!("exited in {took:.2} s"))
                } else {
                    Err(format!(
                        "{} exited with {status} {took:.2} s after SIGTERM",
                        node.name
                    ))
                };
            }
            if started.elapsed() >= wait {
                let name = node.name.clone();
                self.kill(index);
                return Err(format!(
                    "{name} still ran {} s after SIGTERM (killed)",
                    wait.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&mut self, index: usize, signal: i32) -> Result<(), String> {
        let child = self.nodes[index]
            .child
            .as_ref()
            .ok_or_else(|| format!("{} is not running", self.nodes[index].name))?;
        let pid = child.id() as i32;
        // SAFETY: kill(2) to the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(format!(
                "kill({pid}, {signal}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    pub fn pause(&mut self, index: usize) -> Result<(), String> {
        self.signal(index, libc::SIGSTOP)?;
        self.nodes[index].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, index: usize) -> Result<(), String> {
        if self.nodes[index].paused {
            self.signal(index, libc::SIGCONT)?;
            self.nodes[index].paused = false;
        }
        Ok(())
    }

    /// Nodes that exited although the runner did not kill them (a crash), with their status.
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        let mut exits = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exits.push(format!("{} exited on its own: {status}", node.name));
                node.child = None;
            }
        }
        exits
    }

    pub fn stop_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A lazily connecting channel to node `index`: a request to a node that is down fails at
/// connect time, before anything was sent.
pub fn channel(index: usize, request_timeout: Duration) -> Channel {
    Endpoint::from_shared(Node::client_url(index))
        .expect("a valid URL")
        .connect_timeout(Duration::from_millis(500))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// The leader a majority of nodes name, as a node index (an isolated node may still name an old
/// leader, or none; it is outvoted). None when no id has a majority.
pub async fn agreed_leader(cluster_ids: &[u64]) -> Option<usize> {
    agreed_leader_over(&status_channels(cluster_ids.len()), cluster_ids).await
}

/// Channels for [`agreed_leader_over`], to keep across polls.
pub fn status_channels(nodes: usize) -> Vec<Channel> {
    (0..nodes)
        .map(|index| channel(index, Duration::from_millis(700)))
        .collect()
}

/// [`agreed_leader`] over existing channels (one per node, in order).
pub async fn agreed_leader_over(channels: &[Channel], cluster_ids: &[u64]) -> Option<usize> {
    let mut seen = Vec::new();
    for channel in channels {
        let mut client = MaintenanceClient::new(channel.clone());
        if let Ok(status) = client.status(StatusRequest {}).await {
            seen.push(status.into_inner().leader);
        }
    }
    let majority = cluster_ids.len() / 2 + 1;
    let winner = seen
        .iter()
        .copied()
        .find(|id| *id != 0 && seen.iter().filter(|l| *l == id).count() >= majority)?;
    cluster_ids.iter().position(|id| *id == winner)
}

/// Waits (bounded) for an agreed leader.
pub async fn wait_for_leader(cluster_ids: &[u64], timeout: Duration) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(leader) = agreed_leader(cluster_ids).await {
            return Some(leader);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
