//! The members a client can talk to: one lazily connected gRPC channel per client URL, the
//! member list, and which endpoint is the leader's.
//!
//! ```text
//! connect:  MemberList on every configured endpoint at once -> first answer wins
//!           -> endpoints = members' client URLs + configured ones
//!           -> Status on every endpoint until a majority answered
//!           -> leader = the highest-term leader id reported -> its client URL
//! later:    the same refresh, in the background, after a failure (at most one at a time, not
//!           more often than REFRESH_GAP_MIN) and when older than MEMBERS_REFRESH_INTERVAL
//! ```
//!
//! Must never: hold its lock across an await; let a refresh run unbounded.

use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::config::normalize_endpoint;
use super::error::Error;
use super::error::describe;
use super::responses::Member;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;

/// A refresh runs at least this often while the client is used, so members and the leader stay
/// current even when nothing fails.
pub const MEMBERS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Refreshes triggered by failures start at most this often: a burst of failing requests makes
/// one refresh, not one each.
pub const REFRESH_GAP_MIN: Duration = Duration::from_millis(200);

/// One endpoint and its channel (cheap to clone: the channel is shared).
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) url: String,
    pub(crate) channel: Channel,
}

/// Where a call goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The leader's endpoint when known (writes, linearizable reads: no forwarding hop), then
    /// the others.
    Leader,
    /// Round robin over every endpoint (serializable and session reads).
    Spread,
}

#[derive(Debug, Default)]
struct State {
    conns: Vec<Conn>,
    members: Vec<Member>,
    leader: Option<String>,
    refresh_started: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Endpoints {
    configured: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    state: RwLock<State>,
    cursor: AtomicUsize,
    refreshing: AtomicBool,
}

/// Clears the "refresh running" flag however the refresh ends (even cancelled or never run).
struct RefreshRunning(Arc<Endpoints>);

impl Drop for RefreshRunning {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

fn channel(url: &str, connect_timeout: Duration) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| Error::InvalidArgument {
        message: format!("endpoint {url:?}: {e}"),
    })?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Endpoints {
    /// `configured` must be normalized already. Connects nothing yet (channels are lazy).
    pub(crate) fn new(
        configured: Vec<String>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, Error> {
        let conns = configured
            .iter()
            .map(|url| {
                Ok(Conn {
                    url: url.clone(),
                    channel: channel(url, connect_timeout)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Endpoints {
            configured,
            connect_timeout,
            request_timeout,
            state: RwLock::new(State {
                conns,
                ..State::default()
            }),
            cursor: AtomicUsize::new(0),
            refreshing: AtomicBool::new(false),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.read().conns.iter().map(|c| c.url.clone()).collect()
    }

    pub(crate) fn members(&self) -> Vec<Member> {
        self.read().members.clone()
    }

    pub(crate) fn leader(&self) -> Option<String> {
        self.read().leader.clone()
    }

    /// Every endpoint once, in the order a call should try them.
    pub(crate) fn candidates(&self, route: Route) -> Vec<Conn> {
        let state = self.read();
        let count = state.conns.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % count;
        let mut order: Vec<Conn> = (0..count)
            .map(|i| state.conns[(start + i) % count].clone())
            .collect();
        if route == Route::Leader
            && let Some(leader) = &state.leader
            && let Some(position) = order.iter().position(|c| &c.url == leader)
        {
            let leader = order.remove(position);
            order.insert(0, leader);
        }
        order
    }

    /// The pooled connection to `url`, or a new one (not pooled) for an endpoint outside it.
    pub(crate) fn conn(&self, url: &str) -> Result<Conn, Error> {
        if let Some(conn) = self.read().conns.iter().find(|c| c.url == url) {
            return Ok(conn.clone());
        }
        Ok(Conn {
            url: url.to_string(),
            channel: channel(url, self.connect_timeout)?,
        })
    }

    /// The endpoint at `url` failed: if it was the leader's, stop preferring it until a refresh
    /// says otherwise.
    pub(crate) fn forget_leader(&self, url: &str) {
        let mut state = self.write();
        if state.leader.as_deref() == Some(url) {
            state.leader = None;
        }
    }

    /// Members' client URLs join the configured endpoints; channels of URLs kept are reused.
    pub(crate) fn set_members(&self, members: Vec<Member>) {
        let mut urls: Vec<String> = Vec::new();
        let member_urls = members
            .iter()
            .flat_map(|m| &m.client_urls)
            .filter_map(|url| normalize_endpoint(url).ok());
        for url in member_urls.chain(self.configured.iter().cloned()) {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        let mut state = self.write();
        let mut conns = Vec::with_capacity(urls.len());
        for url in urls {
            let conn = match state.conns.iter().find(|c| c.url == url) {
                Some(conn) => conn.clone(),
                None => match channel(&url, self.connect_timeout) {
                    Ok(channel) => Conn { url, channel },
                    Err(error) => {
                        tracing::warn!(%error, "member client URL skipped");
                        continue;
                    }
                },
            };
            conns.push(conn);
        }
        state.conns = conns;
        state.members = members;
    }

    /// Learns the members (first endpoint to answer MemberList) and then the leader. Fails with
    /// `Unavailable` naming every endpoint tried, with its error, when none answers.
    pub(crate) async fn refresh(&self) -> Result<(), Error> {
        let conns = {
            let mut state = self.write();
            state.refresh_started = Some(Instant::now());
            state.conns.clone()
        };
        let timeout = self.request_timeout;
        let mut asks: FuturesUnordered<_> = conns
            .iter()
            .map(|conn| async move {
                let mut request = tonic::Request::new(etcd::MemberListRequest::default());
                request.set_timeout(timeout);
                let mut client = ClusterClient::new(conn.channel.clone());
                let call = client.member_list(request);
                let answer = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => Ok(response.into_inner().members),
                    Ok(Err(status)) => Err(describe(&status)),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                (conn.url.clone(), answer)
            })
            .collect();
        let mut failures = Vec::new();
        let members = loop {
            match asks.next().await {
                Some((_, Ok(members))) => break members,
                Some((url, Err(error))) => failures.push(format!("{url}: {error}")),
                None => {
                    return Err(Error::Unavailable {
                        message: format!("no endpoint answered: {}", failures.join("; ")),
                    });
                }
            }
        };
        drop(asks);
        self.set_members(members.into_iter().map(Member::from).collect());
        self.refresh_leader().await;
        Ok(())
    }

    /// Asks every endpoint for its status until a majority of members answered, and prefers
    /// the leader reported at the highest term (a member cut off may still name an old one).
    async fn refresh_leader(&self) {
        let (conns, members) = {
            let state = self.read();
            (state.conns.clone(), state.members.clone())
        };
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let majority = voters.max(conns.len()) / 2 + 1;
        let timeout = self.request_timeout;
        let mut asks: FuturesUnordered<_> = conns
            .iter()
            .map(|conn| async move {
                let mut request = tonic::Request::new(etcd::StatusRequest::default());
                request.set_timeout(timeout);
                let mut client = MaintenanceClient::new(conn.channel.clone());
                let call = client.status(request);
                let answer = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => Some(response.into_inner()),
                    _ => None,
                };
                (conn.url.clone(), answer)
            })
            .collect();
        let mut answers = Vec::new();
        let mut silent = Vec::new();
        while let Some((url, answer)) = asks.next().await {
            match answer {
                Some(status) => answers.push((url, status)),
                None => silent.push(url),
            }
            if answers.len() >= majority {
                break;
            }
        }
        drop(asks);
        let Some((_, best)) = answers
            .iter()
            .filter(|(_, status)| status.leader != 0)
            .max_by_key(|(_, status)| status.raft_term)
        else {
            return;
        };
        let leader_id = best.leader;
        // The leader's own answer names its endpoint best; else its published client URL.
        let answered_itself = answers.iter().find(|(_, status)| {
            status.leader == leader_id
                && status.header.as_ref().map(|h| h.member_id) == Some(leader_id)
        });
        let url = match answered_itself {
            Some((url, _)) => Some(url.clone()),
            None => members
                .iter()
                .find(|m| m.id == leader_id)
                .and_then(|m| m.client_urls.first())
                .and_then(|url| normalize_endpoint(url).ok()),
        };
        // Others may still name a leader that just died; one that did not answer is not
        // preferred (writes then go round robin, and the member asked forwards them).
        self.write().leader = url.filter(|url| !silent.contains(url));
    }

    /// Starts a refresh in the background unless one is running or one started recently:
    /// `failed` after a failure (gap [`REFRESH_GAP_MIN`]), else a periodic one (gap
    /// [`MEMBERS_REFRESH_INTERVAL`]). Outside a tokio runtime it does nothing.
    pub(crate) fn refresh_in_background(self: &Arc<Self>, failed: bool) {
        let gap = if failed {
            REFRESH_GAP_MIN
        } else {
            MEMBERS_REFRESH_INTERVAL
        };
        let due = self
            .read()
            .refresh_started
            .is_none_or(|started| started.elapsed() >= gap);
        if !due {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = RefreshRunning(self.clone());
        runtime.spawn(async move {
            if let Err(error) = running.0.refresh().await {
                tracing::debug!(%error, "member refresh failed");
            }
        });
    }
}
