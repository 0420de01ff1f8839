//! A real cluster for integration tests: `quorumdb server` processes on loopback ports, each with
//! its own data directory, killed with SIGKILL (never a clean shutdown) when a test says so, and
//! always killed when the cluster is dropped.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use etcd_client::Client;
use etcd_client::ConnectOptions;
use quorumdb::config::derive_node_id;
use quorumdb::network::FaultPlan;
use quorumdb::pb::etcdserverpb::MoveLeaderRequest;
use quorumdb::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use quorumdb::pb::peer::RaftMessage;
use quorumdb::pb::peer::peer_client::PeerClient;
use tempfile::TempDir;

/// How long a test waits for a leader before it fails.
pub const LEADER_WAIT: Duration = Duration::from_secs(20);

/// How long members may take to publish their client URLs to every member.
pub const MEMBERS_PUBLISHED_WAIT: Duration = Duration::from_secs(20);

/// `--snapshot-count` of every test node (through its environment).
pub const SNAPSHOT_COUNT: u64 = 5000;

pub struct NodeProcess {
    pub name: String,
    pub id: u64,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    initial_cluster: String,
    /// Started with `--initial-cluster-state existing` (added to a running cluster).
    joins: bool,
    /// More `quorumdb server` flags.
    extra_args: Vec<String>,
    /// Behind a lock so a shared `&Cluster` can notice a node that died on its own.
    child: Option<Mutex<Child>>,
}

impl NodeProcess {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Where the node serves /metrics, /readyz, /status and the status page.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the running process (SIGSTOP), as a stalled machine would, until [`Node::resume`].
    pub fn pause(&self) {
        self.send_signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.send_signal(libc::SIGCONT);
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        let child = self.child.as_ref().expect("the node is running");
        child.lock().expect("child lock").id()
    }

    fn send_signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) with a pid this test spawned and has not reaped.
        let sent = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} to {}", self.name);
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let child = Command::new(env!("CARGO_BIN_EXE_quorumdb"))
            .arg("server")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--listen-metrics-urls", &self.metrics_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(if self.joins {
                &["--initial-cluster-state", "existing"][..]
            } else {
                &[][..]
            })
            .args(["--enable-fault-injection", "true"])
            .args(&self.extra_args)
            .env("QUORUMDB_LOG", "info,openraft=warn")
            // Snapshots after 5,000 entries rather than the default 100,000, so tests of
            // catch-up by snapshot need only a few thousand writes (a flag overrides it).
            .env("QUORUMDB_SNAPSHOT_COUNT", SNAPSHOT_COUNT.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn quorumdb");
        self.child = Some(Mutex::new(child));
    }

    /// SIGKILL: no shutdown code runs, whatever sled had not flushed is lost.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            let mut child = child
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as an operator's stop: returns how the process ended and how long it took, or
    /// `None` if it was still running after `wait` (it is then killed).
    pub fn terminate(&mut self, wait: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        self.send_signal(libc::SIGTERM);
        let started = Instant::now();
        let child = self.child.take().expect("the node is running");
        let mut child = child
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while started.elapsed() < wait {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// How the node ended, if it was started and has since exited without the test killing it.
    pub fn unexpected_exit(&self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_ref()?;
        let mut child = child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        child.try_wait().ok().flatten()
    }

    /// Everything the node has logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    _dir: TempDir,
}

/// Ports the nodes listen on are picked here, below the kernel's ephemeral range (32768-60999 on
/// Linux): a port handed out by `bind(0)` and released goes straight back to that pool, where
/// any outgoing connection of a concurrently running test may take it before our node binds it.
const NODE_PORT_RANGE: std::ops::Range<u16> = 10_000..32_000;

/// Where test processes claim ports: one file per port, locked by the process that uses it.
fn port_claims_dir() -> PathBuf {
    std::env::temp_dir().join("quorumdb-test-ports")
}

/// Claims `port` for this process until it exits, unless another test process holds it: an
/// exclusive lock on the port's file, which the kernel drops when the process ends however it
/// ends. Nextest runs each test in its own process, so two tests running at once would
/// otherwise pick the same port now and then (seen: "Address already in use" in CI).
fn claim_port(dir: &Path, port: u16, claims: &mut Vec<File>) -> bool {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .expect("open a port claim");
    match file.try_lock() {
        Ok(()) => {
            claims.push(file);
            true
        }
        Err(std::fs::TryLockError::WouldBlock) => false,
        Err(std::fs::TryLockError::Error(e)) => panic!("cannot lock a port claim: {e}"),
    }
}

/// `count` distinct ports that were free a moment ago, chosen at random in [`NODE_PORT_RANGE`]
/// and claimed for this process (see [`claim_port`]), so concurrent tests never share one.
fn free_ports(count: usize) -> Vec<u16> {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    static CLAIMS: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let seed = u64::from(std::process::id()) << 32
        ^ DRAWS.fetch_add(1, Ordering::SeqCst)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut rng = TestRng::new(seed);
    let span = usize::from(NODE_PORT_RANGE.end - NODE_PORT_RANGE.start);
    let claims_dir = port_claims_dir();
    std::fs::create_dir_all(&claims_dir).expect("create the port claims folder");
    let mut claims = CLAIMS.lock().expect("port claims lock");
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = NODE_PORT_RANGE.start + rng.index(span) as u16;
        // A port this process drew before, here or in an earlier call, fails its claim too: its
        // claim is held for good, and an flock conflicts across open files of one process. A
        // claimed port that is in use by something else thus stays out as well.
        if claim_port(&claims_dir, port, &mut claims)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            ports.push(port);
        }
    }
    ports
}

/// The node indexes of a cluster of `size` (nodes n1..nN) in the order of their member ids: a new
/// cluster is started by the first.
pub fn indexes_by_member_id(size: usize) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..size).collect();
    indexes.sort_by_key(|index| derive_node_id(&format!("n{}", index + 1)));
    indexes
}

impl Cluster {
    /// Starts `size` nodes named n1..nN that bootstrap one cluster.
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, |_| {})
    }

    /// [`Cluster::start`], running `prepare` on each node (e.g. to seed its data directory from
    /// a backup) before any is spawned.
    pub fn start_with(size: usize, prepare: impl Fn(&NodeProcess)) -> Cluster {
        Cluster::build(size, &[], prepare)
    }

    /// [`Cluster::start`] with more `quorumdb server` flags for every node.
    pub fn start_with_args(size: usize, extra_args: &[&str]) -> Cluster {
        Cluster::build(size, extra_args, |_| {})
    }

    /// [`Cluster::start`] with node `absent` prepared but not started (`restart` starts it).
    pub fn start_without(size: usize, absent: usize) -> Cluster {
        Cluster::build_spawning(size, &[], |_| {}, |index| index != absent)
    }

    fn build(size: usize, extra_args: &[&str], prepare: impl Fn(&NodeProcess)) -> Cluster {
        Cluster::build_spawning(size, extra_args, prepare, |_| true)
    }

    fn build_spawning(
        size: usize,
        extra_args: &[&str],
        prepare: impl Fn(&NodeProcess),
        spawn: impl Fn(usize) -> bool,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports = free_ports(size * 3);
        let initial_cluster = (0..size)
            .map(|i| format!("n{}=http://127.0.0.1:{}", i + 1, ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<NodeProcess> = (0..size)
            .map(|i| {
                let name = format!("n{}", i + 1);
                NodeProcess {
                    id: derive_node_id(&name),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    metrics_port: ports[2 * size + i],
                    data_dir: dir.path().join(&name),
                    log_path: dir.path().join(format!("{name}.log")),
                    initial_cluster: initial_cluster.clone(),
                    joins: false,
                    extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
                    name,
                    child: None,
                }
            })
            .collect();
        for node in &nodes {
            prepare(node);
        }
        for (index, node) in nodes.iter_mut().enumerate() {
            if spawn(index) {
                node.spawn();
            }
        }
        Cluster { nodes, _dir: dir }
    }

    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Prepares one more node (named n<N+1>, not started) that joins the running cluster with
    /// `--initial-cluster-state existing`: add it with MemberAdd (its peer URL is
    /// `peer_url()`), set its `id` from the answer, then `restart` it to start it.
    pub fn add_node(&mut self) -> usize {
        let ports = free_ports(3);
        let name = format!("n{}", self.nodes.len() + 1);
        let mut initial_cluster: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.peer_url()))
            .collect();
        initial_cluster.push(format!("{name}=http://127.0.0.1:{}", ports[1]));
        self.nodes.push(NodeProcess {
            id: 0,
            client_port: ports[0],
            peer_port: ports[1],
            metrics_port: ports[2],
            data_dir: self._dir.path().join(&name),
            log_path: self._dir.path().join(format!("{name}.log")),
            initial_cluster: initial_cluster.join(","),
            joins: true,
            extra_args: Vec::new(),
            name,
            child: None,
        });
        self.nodes.len() - 1
    }

    /// A plain gRPC channel to node `index`'s client URL, for requests the etcd client cannot
    /// make (our metadata, request fields it does not send).
    pub async fn channel(&self, index: usize) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.nodes[index].client_url())
            .expect("valid url")
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .expect("connect")
    }

    pub fn restart(&mut self, index: usize) {
        self.nodes[index].spawn();
    }

    /// The running nodes other than `leader`, in index order.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| *i != leader && self.nodes[*i].is_running())
            .collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_url()).collect()
    }

    /// A client bound to one node only, so a test knows exactly who serves its requests.
    pub async fn client(&self, index: usize) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(15));
        Client::connect([self.nodes[index].client_url()], Some(options))
            .await
            .expect("connect to a node")
    }

    /// Like [`Cluster::client`], with a per-request timeout of the test's choosing.
    pub async fn client_with_timeout(&self, index: usize, timeout: Duration) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(timeout);
        Client::connect([self.nodes[index].client_url()], Some(options))
            .await
            .expect("connect to a node")
    }

    /// Polls MemberList on node `index` until every member announces the client URL it listens
    /// on (members publish their URLs shortly after start, and a follower may see a publish
    /// later than the leader), and returns that member list.
    pub async fn wait_for_published_members(&self, index: usize) -> Vec<etcd_client::Member> {
        let mut client = self.client(index).await;
        let deadline = Instant::now() + MEMBERS_PUBLISHED_WAIT;
        loop {
            let members = client
                .member_list()
                .await
                .expect("member list")
                .members()
                .to_vec();
            let published = members.len() == self.nodes.len()
                && self.nodes.iter().all(|node| {
                    members
                        .iter()
                        .any(|m| m.id() == node.id && m.client_urls() == [node.client_url()])
                });
            if published {
                return members;
            }
            assert!(
                Instant::now() < deadline,
                "node {index}: members did not publish their client URLs within \
                 {MEMBERS_PUBLISHED_WAIT:?}: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails the test at once if a node the test did not kill has exited (a crash, a failed
    /// start-up): waiting any longer could only end in a less helpful timeout.
    pub fn assert_no_node_exited(&self) {
        for node in &self.nodes {
            if let Some(status) = node.unexpected_exit() {
                panic!(
                    "{} exited on its own ({status})\n{}",
                    node.name,
                    self.logs()
                );
            }
        }
    }

    /// Runs `attempt` until it succeeds, pausing briefly between tries; past `timeout` the test
    /// fails with `what`, the last error and the node logs. Each attempt must itself be bounded
    /// (a client with a request timeout), so the whole wait is.
    pub async fn eventually<T, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        mut attempt: impl FnMut() -> Fut,
    ) -> T
    where
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match attempt().await {
                Ok(value) => return value,
                Err(error) => error,
            };
            self.assert_no_node_exited();
            assert!(
                Instant::now() < deadline,
                "{what}: not done within {timeout:?}; last error: {last_error}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the node every running node agrees is the leader, waiting for one.
    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let mut seen = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let Ok(mut client) = Client::connect(
                    [node.client_url()],
                    Some(ConnectOptions::new().with_connect_timeout(Duration::from_millis(500))),
                )
                .await
                else {
                    continue;
                };
                if let Ok(status) = client.status().await {
                    seen.push(status.leader());
                }
            }
            self.assert_no_node_exited();
            let running = self.nodes.iter().filter(|n| n.is_running()).count();
            if seen.len() == running
                && seen.iter().all(|l| *l != 0 && *l == seen[0])
                && let Some(index) = self
                    .nodes
                    .iter()
                    .position(|n| n.id == seen[0] && n.is_running())
            {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {LEADER_WAIT:?}; saw {seen:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts (or, with an empty list, heals) node `index`'s peer links to `others`, in both
    /// directions, through the fault seam of the peer transport.
    pub async fn cut_links(&self, index: usize, others: &[usize]) {
        let cut: std::collections::BTreeSet<u64> =
            others.iter().map(|i| self.nodes[*i].id).collect();
        self.set_faults(
            index,
            FaultPlan {
                cut: Some(cut),
                ..FaultPlan::default()
            },
        )
        .await;
    }

    /// Makes node `index` drop the responses of its next `count` client writes after applying
    /// them (the client sees an ambiguous failure), through the fault seam.
    pub async fn drop_write_responses(&self, index: usize, count: u32) {
        self.set_faults(
            index,
            FaultPlan {
                drop_write_responses: Some(count),
                ..FaultPlan::default()
            },
        )
        .await;
    }

    async fn set_faults(&self, index: usize, plan: FaultPlan) {
        let mut client = PeerClient::connect(self.nodes[index].peer_url())
            .await
            .expect("connect to the peer service");
        let payload = quorumdb::codec::encode(&plan).expect("encode fault plan");
        client
            .set_faults(RaftMessage { payload })
            .await
            .expect("set faults");
    }

    /// Writes `writes` keys `<prefix><i>` through `leader` with 32 concurrent writers, then
    /// waits until the leader has built a snapshot and purged its log: with more than
    /// [`SNAPSHOT_COUNT`] (5,000) entries, the start of its log is purged and a member
    /// that needs it can only catch up by snapshot.
    pub async fn fill_until_snapshot(&self, leader: usize, prefix: &str, writes: usize) {
        const WRITERS: usize = 32;
        let client = self.client(leader).await;
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let mut client = client.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                for i in (writer..writes).step_by(WRITERS) {
                    client
                        .put(format!("{prefix}{i:05}"), "v", None)
                        .await
                        .expect("put on a healthy majority");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
        self.wait_for_log_line(leader, "built snapshot", Duration::from_secs(60))
            .await;
        // openraft purges the log behind the snapshot after the build is reported: until the
        // purge point is on disk, a member coming back could still catch up by log.
        let purged = self.nodes[leader].data_dir.join("raft-log").join("purged");
        self.eventually(Duration::from_secs(30), "the leader purged its log", || {
            let purged = purged.clone();
            async move {
                match purged.exists() {
                    true => Ok(()),
                    false => Err(format!("{} does not exist yet", purged.display())),
                }
            }
        })
        .await;
    }

    /// Makes node `index` the leader: MoveLeader to whoever leads now, until `index` leads (an
    /// attempt that timed out may still have moved leadership, and the old leader then refuses
    /// the next one).
    pub async fn lead_with(&self, index: usize) {
        let target = self.nodes[index].id;
        let what = format!("n{} leads", index + 1);
        self.eventually(Duration::from_secs(30), &what, || async move {
            let leader = self.wait_for_leader().await;
            if leader == index {
                return Ok(());
            }
            let mut maintenance = MaintenanceClient::connect(self.nodes[leader].client_url())
                .await
                .map_err(|e| e.to_string())?;
            maintenance
                .move_leader(MoveLeaderRequest { target_id: target })
                .await
                .map_err(|e| e.to_string())?;
            Err("moved; checking again".to_string())
        })
        .await;
    }

    /// Waits until node `index`'s log contains `text`; fails the test after `wait`.
    pub async fn wait_for_log_line(&self, index: usize, text: &str, wait: Duration) {
        let what = format!("n{} logs \"{text}\"", index + 1);
        self.eventually(wait, &what, || {
            let log = self.nodes[index].log();
            async move {
                if log.contains(text) {
                    Ok(())
                } else {
                    Err(format!("no \"{text}\" in its log yet"))
                }
            }
        })
        .await;
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} log (tail) ---\n{}", n.name, n.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// A plain HTTP/1.1 GET: (status code, body). Bounded by socket timeouts.
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    use std::io::Write;
    let authority = base.trim_start_matches("http://");
    let mut stream =
        std::net::TcpStream::connect(authority).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with labels, exactly as printed) in a scrape.
pub fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (metric, value) = line.rsplit_once(' ')?;
            (metric == name).then(|| value.parse().ok()).flatten()
        })
}

/// The seed of a randomized test: `QUORUMDB_TEST_SEED` when set (to replay a run), otherwise
/// derived from the clock. Printed either way, so every failure can be replayed.
pub fn test_seed(test_name: &str) -> u64 {
    let seed = match std::env::var("QUORUMDB_TEST_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .expect("QUORUMDB_TEST_SEED must be an unsigned integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    eprintln!("{test_name}: seed {seed} (replay with QUORUMDB_TEST_SEED={seed})");
    seed
}

/// The tests' seeded generator: the crate's own, so a printed seed replays the same choices.
pub use quorumdb::rng::SplitMix64 as TestRng;
