//! Wiring of one QuorumDB node: open the store, start Raft, serve the peer and client services,
//! bootstrap or rejoin, publish this member's client URL, and shut down cleanly.
//!
//! ```text
//! store::open(data_dir) -> Raft::new(id, config, PeerNetworkFactory, log, state machine)
//!   -> peer listener (PeerService)     -> client listeners (KV, Cluster, Maintenance)
//!   -> metrics listeners (observe: /metrics, /readyz, /status, ...)
//!   -> initialize once (new cluster, never initialized)  -> publish client URL
//!   -> wait for shutdown -> stop serving clients -> a leader hands leadership over
//!   -> raft.shutdown -> close peer connections -> flush
//! ```
//!
//! Must never: initialize a node that has any Raft state (a restart rejoins from its own disk).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::SnapshotPolicy;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::InitializeError;
use openraft::errors::RaftError;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api;
use crate::api::ApiContext;
use crate::api::Consensus;
use crate::codec::decode;
use crate::codec::encode;
use crate::config::ClusterState;
use crate::config::NodeConfig;
use crate::limits;
use crate::network;
use crate::network::Faults;
use crate::network::LeaderContact;
use crate::network::Peers;
use crate::network::membership::MembershipChanges;
use crate::observe;
use crate::observe::Observer;
use crate::observe::metrics::NodeMetrics;
use crate::pb::peer::RaftMessage;
use crate::store;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Raft;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the data directory {path}: {source}")]
    Store {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid Raft configuration: {0}")]
    RaftConfig(String),
    #[error("cannot start Raft: {0}")]
    RaftStart(String),
    #[error("cannot listen on {url}: {reason}")]
    Listen { url: String, reason: String },
    #[error("cannot initialize the cluster: {0}")]
    Initialize(String),
    #[error("cannot join the existing cluster: {0}")]
    Join(String),
    #[error(
        "member {name} has already been bootstrapped: peer {peer} knows it with client URL {client_url}, \
         but its data directory {data_dir} holds no Raft state. Initializing again could lose \
         acknowledged writes; restore the data directory (a member cannot be removed and re-added yet)"
    )]
    AlreadyBootstrapped {
        name: String,
        peer: String,
        client_url: String,
        data_dir: String,
    },
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub config: NodeConfig,
    pub raft: Raft,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// Stopped last, after Raft: a follower's reads and forwarded writes in flight during the
    /// client drain still need the leader's appends, and a leader's handover needs its
    /// successor's vote request and first append to reach it.
    peer_server: JoinHandle<()>,
    peer_stop: watch::Sender<bool>,
    publisher: JoinHandle<()>,
}

/// The socket address of an `http://IP:PORT` listen URL (listen URLs must be IP addresses).
fn listen_address(url: &str) -> Result<SocketAddr, NodeError> {
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    authority.parse().map_err(|_| NodeError::Listen {
        url: url.to_string(),
        reason: "a listen URL must be http://IP:PORT (use 0.0.0.0 to listen on every interface)"
            .into(),
    })
}

async fn bind(url: &str) -> Result<TcpListener, NodeError> {
    let address = listen_address(url)?;
    TcpListener::bind(address)
        .await
        .map_err(|e| NodeError::Listen {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

fn raft_config(config: &NodeConfig) -> Result<openraft::Config, NodeError> {
    openraft::Config {
        cluster_name: format!("quorumdb-{:x}", config.cluster_id),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_ms,
        election_timeout_max: config.election_timeout_ms * 2,
        max_payload_entries: limits::APPEND_ENTRIES_PER_RPC_MAX,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: limits::LOG_ENTRIES_KEPT_AFTER_SNAPSHOT,
        snapshot_max_chunk_size: limits::SNAPSHOT_CHUNK_BYTES as u64,
        // A node cut off and rejoining must not depose a healthy leader.
        enable_pre_vote: Some(true),
        // Replication to a peer that refused the connection retries after 20 ms, doubling up to
        // 500 ms (openraft's default starts at 200 ms and reaches 1 s): a member that starts or
        // restarts a moment after the leader gets its log within tens of milliseconds, not 0.5 s.
        backoff: "20ms 40ms ...500ms".to_string(),
        // A restarted leader wins a new election instead of taking its leadership back: neither
        // its commit index (a hint, not synced) nor its state machine (persisted in batches) is
        // durable at every step, so after a machine crash it could lead with a commit index
        // behind what it had acknowledged and give read indexes that miss acknowledged writes
        // (openraft's `enable_leader_restore` documents exactly this case).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::RaftConfig(e.to_string()))
}

impl Node {
    /// Starts the node; returns once it is serving (not necessarily once a leader is elected).
    pub async fn start(mut config: NodeConfig) -> Result<Node, NodeError> {
        if config.cluster_state == ClusterState::Existing {
            join_existing_cluster(&mut config).await?;
        }
        let metrics = NodeMetrics::new();
        let store =
            store::open_with_metrics(&config.data_dir, config.cache_bytes, metrics.store.clone())
                .map_err(|source| NodeError::Store {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        let faults = Faults::default();
        let peers = Peers::new(config.id, faults.clone())
            .with_snapshot_counter(metrics.snapshots_sent.clone());
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            network::PeerNetworkFactory::new(peers.clone()),
            store.log_store,
            store.state_machine,
        )
        .await
        .map_err(|e| NodeError::RaftStart(e.to_string()))?;

        // Before the peer listener opens: no other member's vote can reach this node first.
        let mut bootstrap_later = None;
        if config.cluster_state == ClusterState::New {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Initialize(e.to_string()))?;
            if initialized {
                tracing::info!("Raft state found on disk: rejoining, not initializing");
            } else {
                let started_elsewhere = refuse_if_bootstrapped_before(&config, &peers).await?;
                // One member starts the cluster, the others wait for its election to reach
                // them (see `bootstrap_unless_contacted`); so does the first member when a peer
                // already holds the cluster (it starts late).
                let members: BTreeMap<NodeId, Member> = config.initial_cluster.clone();
                if members.keys().next() == Some(&config.id) && !started_elsewhere {
                    tracing::info!(members = members.len(), "initializing a new cluster");
                    initialize(&raft, members).await?;
                } else {
                    bootstrap_later = Some(members);
                }
            }
        }

        let (stop, stopped) = watch::channel(false);
        let mut servers = Vec::new();

        let peer_listener = bind(&config.listen_peer_url).await?;
        let leader_contact = LeaderContact::default();
        let membership = MembershipChanges::new(raft.clone());
        let proposals = network::Proposals::new(raft.clone());
        let peer_service = network::PeerService::new(
            membership.clone(),
            proposals.clone(),
            faults.clone(),
            config.enable_fault_injection,
        )
        .with_read_index_counters(metrics.read_index.clone())
        .with_held_commits(peers.held_commits.clone())
        .with_leader_contact(leader_contact.clone())
        .with_cluster_id(config.cluster_id)
        .into_server();
        let (peer_stop, peer_stopped) = watch::channel(false);
        let shutdown = wait_for_stop(peer_stopped);
        let peer_server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(peer_service)
                .serve_with_incoming_shutdown(peer_connections(peer_listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "peer service stopped");
            }
        });
        if let Some(members) = bootstrap_later {
            servers.push(tokio::spawn(bootstrap_unless_contacted(
                raft.clone(),
                config.id,
                peers.clone(),
                members,
                Duration::from_millis(
                    BOOTSTRAP_WAIT_ELECTION_TIMEOUTS * config.election_timeout_ms,
                ),
                stopped.clone(),
            )));
        }

        let context = ApiContext {
            consensus: Consensus::new(
                config.id,
                membership.clone(),
                proposals.clone(),
                peers.clone(),
            ),
            reader: store.reader,
            cluster_id: config.cluster_id,
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            faults: faults.clone(),
            metrics: metrics.clone(),
            quota_backend_bytes: config.quota_backend_bytes,
        };
        for url in &config.listen_client_urls {
            let listener = bind(url).await?;
            let kv = api::kv::KvService::new(context.clone())
                .into_server(config.grpc_decode_bytes_max());
            let cluster = api::cluster::ClusterService::new(context.clone()).into_server();
            let maintenance =
                api::maintenance::MaintenanceService::new(context.clone()).into_server();
            // grpc.health.v1 with "" SERVING, as etcd registers it: some tooling probes it.
            let (_, health) = tonic_health::server::health_reporter();
            let routes =
                api::serve::ClientRoutes::new(kv, cluster, maintenance, health, metrics.clone());
            servers.push(tokio::spawn(api::serve::serve(
                listener,
                client_connection,
                routes,
                stopped.clone(),
            )));
        }

        let observer = Observer {
            id: config.id,
            member: config.member(),
            raft: raft.clone(),
            reader: context.reader.clone(),
            consensus: context.consensus.clone(),
            metrics: metrics.clone(),
            leader_contact,
            leader_changes: Default::default(),
        };
        servers.push(tokio::spawn(crate::compactor::run(
            config.auto_compaction,
            context.consensus.clone(),
            context.reader.clone(),
            stopped.clone(),
        )));
        servers.push(tokio::spawn(observe::watch_leader_changes(
            observer.clone(),
            stopped.clone(),
        )));
        for url in &config.listen_metrics_urls {
            let listener = bind(url).await?;
            let router = observe::router(observer.clone());
            let mut stopped = stopped.clone();
            servers.push(tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            }));
        }

        let publisher = tokio::spawn(publish_member(
            config.id,
            config.member(),
            Consensus::new(config.id, membership, proposals, peers),
            stopped,
        ));
        tracing::info!(
            name = %config.name,
            id = %format!("{:x}", config.id),
            client = %config.advertise_client_url,
            peer = %config.advertise_peer_url,
            "node serving"
        );
        Ok(Node {
            config,
            raft,
            stop,
            servers,
            peer_server,
            peer_stop,
            publisher,
        })
    }

    /// Stops serving, stops Raft and lets the store flush. In-flight requests finish or fail.
    ///
    /// The peer listener serves until Raft has stopped; then it stops accepting, and the
    /// connections still open get at most [`limits::PEER_DRAIN_MS_MAX`]. It used to wait for
    /// them to close, and a follower never stopped while its leader lived: the leader's append
    /// stream stays open.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.publisher.abort();
        for server in std::mem::take(&mut self.servers) {
            let _ = server.await;
        }
        self.hand_over_leadership().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        let _ = self.peer_stop.send(true);
        let mut peer_server = self.peer_server;
        let drain = Duration::from_millis(limits::PEER_DRAIN_MS_MAX);
        if tokio::time::timeout(drain, &mut peer_server).await.is_err() {
            tracing::info!(
                drain_ms = limits::PEER_DRAIN_MS_MAX,
                "closing the peer connections still open"
            );
            peer_server.abort();
        }
    }

    /// A leader that stops hands its leadership to the follower furthest along first, as etcd
    /// does: the cluster takes writes again once that follower has won its election, rather
    /// than after an election timeout with no leader. Called after the client drain, so no
    /// client write is in flight here. Bounded by [`limits::LEADER_HANDOVER_MS_MAX`]; the stop
    /// goes on without it.
    async fn hand_over_leadership(&self) {
        if !self.raft.is_leader() {
            return;
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        let voters: Vec<NodeId> = self.raft.voter_ids().collect();
        // Ties go to the larger id, so the choice does not depend on map order.
        let target = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.config.id && voters.contains(id))
            .max_by_key(|(id, matched)| (matched.map(|log_id| log_id.index), **id))
            .map(|(id, _)| *id);
        let Some(target) = target else {
            return;
        };
        let to = format!("{target:x}");
        if self.raft.trigger().transfer_leader(target).await.is_err() {
            return;
        }
        let waited = self
            .raft
            .wait(Some(Duration::from_millis(limits::LEADER_HANDOVER_MS_MAX)))
            .current_leader(target, "leadership handover on stop")
            .await;
        match waited {
            Ok(_) => tracing::info!(%to, "handed leadership over"),
            Err(error) => {
                tracing::warn!(%to, %error, "leadership handover did not finish; stopping anyway")
            }
        }
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Writes the first membership entry of a new cluster and campaigns; `NotAllowed` means another
/// member's election reached this node first, which is as good.
async fn initialize(raft: &Raft, members: BTreeMap<NodeId, Member>) -> Result<(), NodeError> {
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::info!(reason = %e, "already initialized; rejoining");
            Ok(())
        }
        Err(e) => Err(NodeError::Initialize(e.to_string())),
    }
}

/// How many election timeouts a member of a new cluster waits for the first member (the
/// smallest id) to start the cluster before starting it itself.
const BOOTSTRAP_WAIT_ELECTION_TIMEOUTS: u64 = 3;

/// A new cluster is started by one member, the one with the smallest id; the others wait, serving,
/// until its election or its leader's log reaches them. Before, every member initialized and
/// campaigned at once, each with its own first entry (its id is in the log id), so only the
/// largest id could win; a member starting a moment late campaigned in the leader's term with a
/// greater vote and refused that leader's log for a whole election timeout (a member lagging
/// for seconds after start, and starts taking 1-3 s).
///
/// Once `wait` passes without contact, it asks the peers: if one holds a cluster with this
/// member in it, it keeps waiting for it; if none does (the first member is down), it starts the
/// cluster itself, as every member used to.
async fn bootstrap_unless_contacted(
    raft: Raft,
    id: NodeId,
    peers: Peers,
    members: BTreeMap<NodeId, Member>,
    wait: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut changes = raft.metrics();
    let mut deadline = tokio::time::Instant::now() + wait;
    loop {
        match raft.is_initialized().await {
            Ok(false) => {}
            Ok(true) | Err(_) => return,
        }
        if tokio::time::Instant::now() >= deadline {
            let asked = members
                .iter()
                .filter(|(member_id, _)| **member_id != id)
                .map(|(member_id, member)| ask_members(&peers, *member_id, member));
            let started_elsewhere = futures::future::join_all(asked)
                .await
                .iter()
                .flatten()
                .any(|reply| holds_cluster_with(reply, id));
            if !started_elsewhere {
                tracing::info!(
                    waited_ms = wait.as_millis() as u64,
                    "no member has started the cluster: initializing it here"
                );
                if let Err(e) = initialize(&raft, members).await {
                    tracing::error!(error = %e, "cannot initialize the cluster");
                }
                return;
            }
            deadline = tokio::time::Instant::now() + wait;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// How long the start-up check waits for each peer's answer; an unreachable peer is skipped.
const BOOTSTRAP_PROBE_TIMEOUT_MS: u64 = 1000;

/// What peer `id` knows of the membership, or `None` if it does not answer in time (at first
/// start peers may be down: callers skip them).
async fn ask_members(peers: &Peers, id: NodeId, member: &Member) -> Option<network::MembersReply> {
    let mut client = peers.client(id, &member.peer_url).ok()?;
    let request = peers.request(
        RaftMessage {
            payload: Vec::new(),
        },
        Duration::from_millis(BOOTSTRAP_PROBE_TIMEOUT_MS),
    );
    let response = client.members(request).await.ok()?;
    decode(&response.into_inner().payload).ok()
}

/// etcd's "member has already been bootstrapped" check: a node with no Raft state whose peers
/// know it with a published client URL lost its data directory. Initializing it again would give
/// it a blank vote and log, and with one other member it could form a quorum that forgets
/// acknowledged writes. Peers that do not answer are skipped (at first start they may be down).
/// Returns whether a peer already holds the cluster with this member in it.
async fn refuse_if_bootstrapped_before(
    config: &NodeConfig,
    peers: &Peers,
) -> Result<bool, NodeError> {
    let mut started_elsewhere = false;
    for (id, member) in config
        .initial_cluster
        .iter()
        .filter(|(id, _)| **id != config.id)
    {
        let Some(reply) = ask_members(peers, *id, member).await else {
            continue;
        };
        started_elsewhere |= holds_cluster_with(&reply, config.id);
        if let Some(known) = reply
            .members
            .get(&config.id)
            .filter(|m| !m.client_url.is_empty())
        {
            return Err(NodeError::AlreadyBootstrapped {
                name: config.name.clone(),
                peer: member.name.clone(),
                client_url: known.client_url.clone(),
                data_dir: config.data_dir.display().to_string(),
            });
        }
    }
    Ok(started_elsewhere)
}

/// Whether the peer that sent `reply` holds a cluster with member `id` in it.
fn holds_cluster_with(reply: &network::MembersReply, id: NodeId) -> bool {
    reply.initialized && reply.members.contains_key(&id)
}

/// How long a joining node keeps asking its peers for the member with its peer URL (it may be
/// started a moment before `member add` commits).
const JOIN_WAIT_MS_MAX: u64 = 30_000;

/// Where a joined node keeps the identity the cluster gave it, so a restart needs no peer.
const IDENTITY_FILE: &str = "identity.json";

/// The id and cluster id of a member that joined an existing cluster.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct JoinedIdentity {
    id: NodeId,
    cluster_id: u64,
}

/// etcd's `--initial-cluster-state existing`: the member was added with MemberAdd (which chose
/// its id); find it by this node's peer URL in a peer's membership, and adopt that id and the
/// cluster's id. Kept in the data directory for restarts.
async fn join_existing_cluster(config: &mut NodeConfig) -> Result<(), NodeError> {
    let path = config.data_dir.join(IDENTITY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let identity: JoinedIdentity = serde_json::from_str(&text)
            .map_err(|e| NodeError::Join(format!("{}: {e}", path.display())))?;
        config.id = identity.id;
        config.cluster_id = identity.cluster_id;
        return Ok(());
    }
    let peers = Peers::new(config.id, Faults::default());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(JOIN_WAIT_MS_MAX);
    let mut last_problem = "no peer answered".to_string();
    loop {
        for (id, member) in config
            .initial_cluster
            .iter()
            .filter(|(_, m)| m.peer_url != config.advertise_peer_url)
        {
            let Some(reply) = ask_members(&peers, *id, member).await else {
                continue;
            };
            match reply
                .members
                .iter()
                .find(|(_, m)| m.peer_url == config.advertise_peer_url)
            {
                Some((own_id, _)) => {
                    let identity = JoinedIdentity {
                        id: *own_id,
                        cluster_id: reply.cluster_id,
                    };
                    std::fs::create_dir_all(&config.data_dir)
                        .and_then(|()| {
                            std::fs::write(
                                &path,
                                serde_json::to_vec(&identity).expect("plain data serializes"),
                            )
                        })
                        .map_err(|e| NodeError::Join(format!("{}: {e}", path.display())))?;
                    tracing::info!(id = %format!("{own_id:x}"), "joining an existing cluster");
                    config.id = identity.id;
                    config.cluster_id = identity.cluster_id;
                    return Ok(());
                }
                None => {
                    last_problem = format!(
                        "{} does not list a member with peer URL {} (add it first: etcdctl member add NAME --peer-urls={})",
                        member.name, config.advertise_peer_url, config.advertise_peer_url
                    )
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Join(last_problem));
        }
        tokio::time::sleep(Duration::from_millis(PUBLISH_RETRY_MS)).await;
    }
}

/// An accepted client connection: no Nagle delay (small requests, latency matters), and etcd Go
/// clients' scheme-prefixed `:authority` normalised for h2 (see [`api::authority`]), and one
/// write per HTTP/2 flush (see [`network::CoalescedWrites`]).
fn client_connection(
    stream: TcpStream,
) -> api::authority::AuthorityFix<network::CoalescedWrites<TcpStream>> {
    let _ = stream.set_nodelay(true);
    api::authority::AuthorityFix::new(network::CoalescedWrites::new(stream))
}

/// Accepted peer connections, without Nagle delay: Raft messages are small and latency-bound.
/// Writes go out once per HTTP/2 flush (see [`network::CoalescedWrites`]).
fn peer_connections(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<network::CoalescedWrites<TcpStream>>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.map(|stream| {
            let _ = stream.set_nodelay(true);
            network::CoalescedWrites::new(stream)
        })
    })
}

async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Longest pause between attempts to publish this member's URLs; a leader appearing, or the
/// membership taking the URLs, ends the pause at once.
const PUBLISH_RETRY_MS: u64 = 500;

/// Makes the membership carry this member's current name and URLs (etcd's "publish"): the
/// initial membership only knows peer URLs, and MemberList must show client URLs.
async fn publish_member(
    id: NodeId,
    member: Member,
    consensus: Consensus,
    mut stopped: watch::Receiver<bool>,
) {
    let mut changes = consensus.raft.metrics();
    loop {
        let published = changes.borrow_watched().membership_config.get_node(&id) == Some(&member);
        if published {
            tracing::info!(client_url = %member.client_url, "member attributes published");
            return;
        }
        let leader = consensus.leader();
        let no_leader = leader.is_none();
        match leader {
            Some((leader, _)) if leader == id => {
                if let Err(e) =
                    network::publish_on_leader(consensus.membership(), id, member.clone()).await
                {
                    tracing::debug!(error = %e, "publishing member attributes, will retry");
                }
            }
            Some((leader, leader_member)) => {
                if let (Ok(mut client), Ok(payload)) = (
                    consensus.peers().client(leader, &leader_member.peer_url),
                    encode(&(id, member.clone())),
                ) {
                    let request = consensus.peers().request(
                        RaftMessage { payload },
                        Duration::from_millis(limits::REQUEST_TIMEOUT_MS),
                    );
                    if let Err(e) = client.publish_member(request).await {
                        tracing::debug!(error = %e, "publishing member attributes, will retry");
                    }
                }
            }
            None => {}
        }
        // Without a leader, wait for one; after an attempt, for the membership to carry it.
        let woken = async {
            loop {
                {
                    let metrics = changes.borrow_watched();
                    let awaited = if no_leader {
                        metrics.current_leader.is_some()
                    } else {
                        metrics.membership_config.get_node(&id) == Some(&member)
                    };
                    if awaited {
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    // Raft has stopped: only the pause or the stop signal ends the wait.
                    std::future::pending::<()>().await;
                }
            }
        };
        let pause = tokio::time::timeout(Duration::from_millis(PUBLISH_RETRY_MS), woken);
        tokio::select! {
            _ = pause => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
