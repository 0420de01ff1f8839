//! What an operator sees of a node over plain HTTP (`--listen-metrics-urls`, etcd's flag):
//! Prometheus metrics, health checks, routing checks for load balancers, the cluster as this
//! node sees it, and a live status page.
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | Prometheus text format ([`metrics`]) |
//! | `/livez` | 200 while the process and its Raft core run |
//! | `/readyz` | 200 when the node has a leader and a linearizable read passes (read index) |
//! | `/health` | the same as `/readyz`, as etcd's JSON `{"health":"true","reason":""}` |
//! | `/leader` | 200 only on the leader (HAProxy/keepalived routing, as Patroni's) |
//! | `/replica` | 200 only on a follower that has a leader; `?lag=N` (entries behind the cluster commit index the leader last reported) or `?lag=Nms` (since the leader last reached it) bounds the lag |
//! | `/status` | JSON: this node, its view of every member, recent leader changes, alarms |
//! | `/` | the status page (HTML + a little JS polling `/status`) |
//!
//! ```text
//! HTTP GET -> axum router -> Observer (raft metrics, store reader, consensus) -> text / JSON
//! leader watcher task: raft metrics changes -> leader change history + counter
//! ```
//!
//! Must never: change anything (every route is a read); take longer than
//! [`READY_CHECK_TIMEOUT`] for a check, so a load balancer's probe never hangs.

pub mod metrics;
pub mod requests;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::Router;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::Consensus;
use crate::network::LeaderContact;
use crate::store::KvReader;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Raft;
use metrics::NodeMetrics;

/// Bound on the linearizable read behind `/readyz` and `/health`.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Leader changes kept for `/status` and the page.
pub const LEADER_CHANGES_KEPT: usize = 20;

/// One leader change as this node saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderChange {
    /// Wall-clock time this node noticed it, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub term: u64,
    /// The new leader's id (hex), or `null` when the node lost its leader.
    pub leader: Option<String>,
    pub leader_name: Option<String>,
}

/// Everything the routes read. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    pub id: NodeId,
    pub member: Member,
    pub raft: Raft,
    pub reader: KvReader,
    pub consensus: Consensus,
    pub metrics: Arc<NodeMetrics>,
    pub leader_contact: LeaderContact,
    pub leader_changes: Arc<Mutex<VecDeque<LeaderChange>>>,
}

/// The router serving every path in the table above.
pub fn router(observer: Observer) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/leader", get(leader))
        .route("/replica", get(replica))
        .route("/status", get(status))
        .with_state(observer)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Watches Raft's metrics and records every change of leader (or loss of one) until `stopped`.
/// Woken by the server metrics (vote, role, leader, membership) only: the full metrics change on
/// every heartbeat acknowledgement, several times per linearizable read on a leader.
///
/// It reads the server metrics it is woken by, never the full metrics: openraft publishes the
/// server metrics first, so the full ones may still hold the previous leader when this wakes,
/// and in a stable cluster no later change would wake it to see the new one.
pub async fn watch_leader_changes(observer: Observer, mut stopped: watch::Receiver<bool>) {
    let mut changes = observer.raft.server_metrics();
    let mut last: Option<(Option<NodeId>, u64)> = None;
    loop {
        let (leader, term, name) = {
            let m = changes.borrow_and_update();
            let name = m
                .current_leader
                .and_then(|id| m.membership_config.get_node(&id).map(|n| n.name.clone()));
            (m.current_leader, m.vote.leader_id().term, name)
        };
        if last.map(|(previous, _)| previous) != Some(leader) {
            // The first observation is the starting point, not a change.
            if last.is_some() && leader.is_some() {
                observer.metrics.leader_changes.inc();
            }
            match (leader, &name) {
                (Some(id), Some(name)) => {
                    tracing::info!(term, leader = %format!("{id:x}"), leader_name = %name, "leader changed")
                }
                (Some(id), None) => {
                    tracing::info!(term, leader = %format!("{id:x}"), "leader changed")
                }
                (None, _) => tracing::info!(term, "no leader"),
            }
            let mut history = observer.leader_changes.lock().expect("history lock");
            history.push_back(LeaderChange {
                at_unix_ms: unix_ms(),
                term,
                leader: leader.map(|id| format!("{id:x}")),
                leader_name: name,
            });
            while history.len() > LEADER_CHANGES_KEPT {
                history.pop_front();
            }
            last = Some((leader, term));
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status_page.html"),
    )
        .into_response()
}

async fn metrics_text(State(observer): State<Observer>) -> Response {
    let body = observer.metrics.scrape(&observer.raft, &observer.reader);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn livez(State(observer): State<Observer>) -> Response {
    let running = observer
        .raft
        .metrics()
        .borrow_watched()
        .running_state
        .is_ok();
    if running {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "raft stopped\n")
    }
}

/// `Ok` when a linearizable read would be served now, else why not.
async fn ready(observer: &Observer) -> Result<(), String> {
    match tokio::time::timeout(READY_CHECK_TIMEOUT, observer.consensus.read_barrier()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no linearizable read within {READY_CHECK_TIMEOUT:?}"
        )),
    }
}

async fn readyz(State(observer): State<Observer>) -> Response {
    match ready(&observer).await {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn health(State(observer): State<Observer>) -> Response {
    let (status, healthy, reason) = match ready(&observer).await {
        Ok(()) => (StatusCode::OK, "true", String::new()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "false", reason),
    };
    (
        status,
        Json(serde_json::json!({ "health": healthy, "reason": reason })),
    )
        .into_response()
}

async fn leader(State(observer): State<Observer>) -> Response {
    let m = observer.raft.metrics().borrow_watched().clone();
    if m.state == ServerState::Leader && m.running_state.is_ok() {
        text(StatusCode::OK, "leader\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("{:?}\n", m.state))
    }
}

#[derive(serde::Deserialize)]
struct ReplicaQuery {
    lag: Option<String>,
}

/// A `?lag=` bound: entries (`100`) or milliseconds (`250ms`).
#[derive(Debug, PartialEq, Eq)]
enum LagBound {
    Entries(u64),
    Millis(u64),
}

fn parse_lag(text: &str) -> Result<LagBound, String> {
    let text = text.trim();
    let (number, millis) = match text.strip_suffix("ms") {
        Some(number) => (number, true),
        None => (text, false),
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("lag={text:?}: expected entries (100) or milliseconds (250ms)"))?;
    Ok(if millis {
        LagBound::Millis(value)
    } else {
        LagBound::Entries(value)
    })
}

async fn replica(State(observer): State<Observer>, Query(query): Query<ReplicaQuery>) -> Response {
    let bound = match query.lag.as_deref().map(parse_lag).transpose() {
        Ok(bound) => bound,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    let m = observer.raft.metrics().borrow_watched().clone();
    if m.state != ServerState::Follower || m.current_leader.is_none() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not a follower with a leader ({:?})\n", m.state),
        );
    }
    // Behind what the leader last reported committed by a quorum.
    let behind = m
        .cluster_committed
        .map(|id| id.index)
        .unwrap_or(0)
        .saturating_sub(m.last_applied.map(|id| id.index).unwrap_or(0));
    let since_leader = observer.leader_contact.elapsed();
    match bound {
        Some(LagBound::Entries(max)) if behind > max => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("lagging {behind} entries (max {max})\n"),
        ),
        Some(LagBound::Millis(max))
            if since_leader.is_none_or(|since| since > Duration::from_millis(max)) =>
        {
            let since = match since_leader {
                Some(since) => format!("{} ms ago", since.as_millis()),
                None => "never since start".to_string(),
            };
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("last reached by the leader {since} (max {max} ms)\n"),
            )
        }
        _ => text(
            StatusCode::OK,
            format!("replica, {behind} entries behind\n"),
        ),
    }
}

/// One member as this node sees it.
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
    pub voter: bool,
    pub is_leader: bool,
    /// Leader view only: the last log index known replicated to the member.
    pub matched_index: Option<u64>,
    /// Leader view only: entries behind the leader's last log index.
    pub lag_entries: Option<u64>,
    /// Leader view only: milliseconds since the member last acknowledged the leader.
    pub lag_ms: Option<u64>,
}

/// `/status`: the cluster as this node sees it.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub leader_name: Option<String>,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: usize,
    pub db_size_bytes: u64,
    pub members: Vec<MemberView>,
    pub leader_changes: Vec<LeaderChange>,
    /// Raised alarms, as etcd's Status shows them (`memberID:<id> alarm:NOSPACE`).
    pub alarms: Vec<String>,
}

pub fn status_view(observer: &Observer) -> StatusView {
    let m = observer.raft.metrics().borrow_watched().clone();
    let last = m.last_log_index.unwrap_or(0);
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let matched: BTreeMap<NodeId, u64> = m
        .replication
        .iter()
        .flatten()
        .map(|(id, log_id)| (*id, log_id.map(|l| l.index).unwrap_or(0)))
        .collect();
    let acked_ms: BTreeMap<NodeId, u64> = m
        .heartbeat
        .iter()
        .flatten()
        .filter_map(|(id, at)| at.map(|at| (*id, at.elapsed().as_millis() as u64)))
        .collect();
    let is_leader = m.state == ServerState::Leader;
    let members = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| {
            let (matched_index, lag_entries, lag_ms) = if !is_leader {
                (None, None, None)
            } else if *id == m.id {
                (Some(last), Some(0), Some(0))
            } else {
                let matched = matched.get(id).copied();
                (
                    matched,
                    matched.map(|index| last.saturating_sub(index)),
                    acked_ms.get(id).copied(),
                )
            };
            MemberView {
                id: format!("{id:x}"),
                name: node.name.clone(),
                peer_url: node.peer_url.clone(),
                client_url: node.client_url.clone(),
                voter: voters.contains(id),
                is_leader: m.current_leader == Some(*id),
                matched_index,
                lag_entries,
                lag_ms,
            }
        })
        .collect();
    let leader_name = m
        .current_leader
        .and_then(|id| m.membership_config.get_node(&id).map(|n| n.name.clone()));
    StatusView {
        id: format!("{:x}", observer.id),
        name: observer.member.name.clone(),
        role: format!("{:?}", m.state).to_lowercase(),
        term: m.current_term,
        leader: m.current_leader.map(|id| format!("{id:x}")),
        leader_name,
        last_log_index: last,
        commit_index: m.local_committed.map(|id| id.index).unwrap_or(0),
        applied_index: m.last_applied.map(|id| id.index).unwrap_or(0),
        revision: observer.reader.revision(),
        compact_revision: observer.reader.compact_revision(),
        keys: observer.reader.live_key_count(),
        db_size_bytes: observer.reader.db_size_bytes(),
        members,
        leader_changes: observer
            .leader_changes
            .lock()
            .expect("history lock")
            .iter()
            .cloned()
            .collect(),
        alarms: observer
            .reader
            .alarms()
            .list()
            .into_iter()
            .map(crate::api::maintenance::alarm_text)
            .collect(),
    }
}

async fn status(State(observer): State<Observer>) -> Response {
    Json(status_view(&observer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_bound_is_entries_or_milliseconds() {
        assert_eq!(parse_lag("100"), Ok(LagBound::Entries(100)));
        assert_eq!(parse_lag("250ms"), Ok(LagBound::Millis(250)));
        assert!(parse_lag("soon").is_err());
        assert!(parse_lag("-1").is_err());
    }
}
