//! [`Client`]: the handle applications use, and every operation it offers. How a call is routed
//! and retried is in [`retry`](super::retry); which members exist in
//! [`endpoints`](super::endpoints).

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tonic::Code;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use super::config::ClientConfig;
use super::config::Consistency;
use super::config::normalize_endpoint;
use super::endpoints::Endpoints;
use super::endpoints::Route;
use super::error::Error;
use super::error::Verdict;
use super::error::classify;
use super::options::DeleteOptions;
use super::options::GetOptions;
use super::options::PutOptions;
use super::responses::DeleteResponse;
use super::responses::EndpointStatus;
use super::responses::GetResponse;
use super::responses::KeyValue;
use super::responses::Member;
use super::responses::PutResponse;
use super::retry::Metadata;
use super::txn::CasOutcome;
use super::txn::Compare;
use super::txn::CompareOp;
use super::txn::Op;
use super::txn::OpResponse;
use super::txn::Txn;
use super::txn::TxnResponse;
use super::write_session::WriteSession;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;

/// gRPC metadata of a session read: the member answers once it has applied this revision.
pub const MIN_REVISION_METADATA: &str = crate::api::metadata::MIN_REVISION_KEY;

/// A session read waits at most this long on one member before trying another (while at least
/// twice this remains): the member holds the read until it has applied the session's revision,
/// and one lagging member must not use up the whole deadline.
pub const SESSION_READ_ATTEMPT_MAX: Duration = Duration::from_secs(1);

/// The key etcdctl's `endpoint health` reads.
const HEALTH_KEY: &[u8] = b"health";

/// What every clone of a client shares.
pub(super) struct Shared {
    pub(super) config: ClientConfig,
    pub(super) endpoints: Arc<Endpoints>,
    /// The current client id and numbering (exactly-once on), replaced when the server forgets it.
    write_session: Option<Mutex<Arc<WriteSession>>>,
    pub(super) write_attempts: AtomicU64,
}

/// A connection to a QuorumDB (or etcd) cluster. Cheap to clone: clones share connections,
/// members, the leader and the exactly-once numbering, and the session tracker (except
/// [`Client::session`], which starts a tracker of its own).
///
/// ```no_run
/// use quorumdb::client::{Client, ClientConfig, GetOptions, PutOptions};
///
/// # async fn example() -> Result<(), quorumdb::client::Error> {
/// let client = Client::connect(ClientConfig::new(["127.0.0.1:2379", "127.0.0.1:22379"])).await?;
/// client.put("greeting", "hello", PutOptions::default()).await?;
/// let kv = client.get_one("greeting").await?;
/// assert_eq!(kv.value_str(), "hello");
/// let all = client.get("", GetOptions::new().prefix().keys_only()).await?;
/// println!("{} keys at revision {}", all.count, all.header.revision);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(super) shared: Arc<Shared>,
    /// The highest revision this session has seen in any response header.
    session_revision: Arc<AtomicI64>,
    consistency: Consistency,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("leader", &self.leader_endpoint())
            .field("client_id", &self.client_id())
            .field("consistency", &self.consistency)
            .field("session_revision", &self.session_revision())
            .finish()
    }
}

fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(usize::MAX)
}

fn revision_of(header: &Option<etcd::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

impl Client {
    /// Connects to the cluster: learns its members from the first endpoint that answers
    /// `Cluster.MemberList` and the leader from `Maintenance.Status`. Fails with
    /// [`Error::Unavailable`] naming every endpoint tried when none answers, and with
    /// [`Error::InvalidArgument`] for an unusable configuration.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let endpoints = Arc::new(Endpoints::new(
            config.validated_endpoints()?,
            config.connect_timeout,
            config.request_timeout,
        )?);
        endpoints.refresh().await?;
        let write_session = config.exactly_once.then(|| Mutex::new(WriteSession::new()));
        let consistency = config.consistency;
        Ok(Client {
            shared: Arc::new(Shared {
                config,
                endpoints,
                write_session,
                write_attempts: AtomicU64::new(0),
            }),
            session_revision: Arc::new(AtomicI64::new(0)),
            consistency,
        })
    }

    /// A client sharing this one's connections, with a session of its own: reads default to
    /// [`Consistency::Session`] and never see a revision older than this session has seen.
    pub fn session(&self) -> Client {
        Client {
            shared: self.shared.clone(),
            session_revision: Arc::new(AtomicI64::new(0)),
            consistency: Consistency::Session,
        }
    }

    /// The highest store revision seen in any response to this session (0 before the first).
    pub fn session_revision(&self) -> i64 {
        self.session_revision.load(Ordering::Acquire)
    }

    /// The consistency of reads that do not choose one.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The id numbered writes carry (`quorumdb-client-id`); `None` without exactly-once writes.
    /// It changes when the server reports it has forgotten the id.
    pub fn client_id(&self) -> Option<u64> {
        Some(self.write_session()?.id())
    }

    /// Every attempt to send a Put, DeleteRange or Txn so far, by this client and its clones
    /// (a write retried on another member counts twice).
    pub fn write_attempts(&self) -> u64 {
        self.shared.write_attempts.load(Ordering::Relaxed)
    }

    /// The endpoints in use: members' client URLs and the configured ones.
    pub fn endpoints(&self) -> Vec<String> {
        self.shared.endpoints.urls()
    }

    /// The leader's client URL, if known.
    pub fn leader_endpoint(&self) -> Option<String> {
        self.shared.endpoints.leader()
    }

    /// The members as last learned (see [`Client::member_list`] for a fresh list).
    pub fn known_members(&self) -> Vec<Member> {
        self.shared.endpoints.members()
    }

    pub(crate) fn write_session(&self) -> Option<Arc<WriteSession>> {
        let session = self.shared.write_session.as_ref()?;
        Some(
            session
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// The server forgot client id `forgotten`: later writes use a fresh id (once, however many
    /// writes report it).
    pub(crate) fn renew_write_session(&self, forgotten: u64) {
        if let Some(session) = &self.shared.write_session {
            let mut current = session.lock().unwrap_or_else(PoisonError::into_inner);
            if current.id() == forgotten {
                *current = WriteSession::new();
            }
        }
    }

    fn observe(&self, revision: i64) {
        self.session_revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// Reads a key or a range. Linearizable reads go to the leader first; serializable and
    /// session reads are spread over every member. See [`Consistency`].
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> Result<GetResponse, Error> {
        let consistency = options.chosen_consistency().unwrap_or(self.consistency);
        let request = options.to_request(key.into(), consistency != Consistency::Linearizable);
        let (route, attempt_max, min_revision) = match consistency {
            Consistency::Linearizable => (Route::Leader, None, 0),
            Consistency::Serializable => (Route::Spread, None, 0),
            Consistency::Session => (
                Route::Spread,
                Some(SESSION_READ_ATTEMPT_MAX),
                self.session_revision(),
            ),
        };
        let metadata: Metadata = if consistency == Consistency::Session {
            vec![(MIN_REVISION_METADATA, min_revision.into())]
        } else {
            Vec::new()
        };
        let response = self
            .read_call("get", route, attempt_max, request, metadata, |channel, request| async move {
                let response = kv(channel).range(request).await?.into_inner();
                // Also guards against a member that ignores the metadata (etcd, an old QuorumDB).
                let revision = revision_of(&response.header);
                if revision < min_revision {
                    return Err(Status::unavailable(format!(
                        "quorumdb client: member answered at revision {revision}, behind the session's {min_revision}"
                    )));
                }
                Ok(response)
            })
            .await?;
        let response = GetResponse::from(response);
        self.observe(response.header.revision);
        Ok(response)
    }

    /// Reads one key with the client's default consistency; [`Error::NotFound`] if it does not
    /// exist.
    pub async fn get_one(&self, key: impl Into<Vec<u8>>) -> Result<KeyValue, Error> {
        let key = key.into();
        let response = self.get(key.clone(), GetOptions::new()).await?;
        response
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                message: format!("key {:?} not found", String::from_utf8_lossy(&key)),
            })
    }

    /// Writes a key.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse, Error> {
        let request = options.to_request(key.into(), value.into());
        let response = self
            .write_call("put", request, |channel, request| async move {
                kv(channel).put(request).await.map(Response::into_inner)
            })
            .await?;
        let response = PutResponse::from(response);
        self.observe(response.header.revision);
        Ok(response)
    }

    /// Deletes a key or a range; [`DeleteResponse::deleted`] says how many keys went.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: DeleteOptions,
    ) -> Result<DeleteResponse, Error> {
        let request = options.to_request(key.into());
        let response = self
            .write_call("delete", request, |channel, request| async move {
                kv(channel)
                    .delete_range(request)
                    .await
                    .map(Response::into_inner)
            })
            .await?;
        let response = DeleteResponse::from(response);
        self.observe(response.header.revision);
        Ok(response)
    }

    /// Runs a transaction. A compare that does not hold is `succeeded == false`, not an error.
    /// A transaction that only reads is retried like a read.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let request = txn.to_request();
        let call = |channel, request| async move {
            kv(channel).txn(request).await.map(Response::into_inner)
        };
        let response = if txn.is_read_only() {
            self.read_call("txn", Route::Leader, None, request, Vec::new(), call)
                .await?
        } else {
            self.write_call("txn", request, call).await?
        };
        let response = TxnResponse::from_wire(response)?;
        self.observe(response.header.revision);
        Ok(response)
    }

    /// Sets `key` to `new_value` if it holds `expected` (`None`: if it does not exist), in one
    /// transaction; otherwise reports what it holds.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<&[u8]>,
        new_value: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome, Error> {
        let key = key.into();
        let compare = match expected {
            Some(value) => Compare::value(key.clone(), CompareOp::Equal, value),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([Op::put(key.clone(), new_value, PutOptions::default())])
            .or_else([Op::get(key, GetOptions::new())]);
        let response = self.txn(txn).await?;
        if response.succeeded {
            return Ok(CasOutcome::Swapped {
                revision: response.header.revision,
            });
        }
        let current = response.responses.into_iter().find_map(|op| match op {
            OpResponse::Get(get) => Some(get.kvs.into_iter().next()),
            _ => None,
        });
        Ok(CasOutcome::CompareFailed {
            current: current.flatten(),
        })
    }

    /// The cluster's members, from any member, read with the client's consistency; the endpoint
    /// list is updated with them.
    pub async fn member_list(&self) -> Result<Vec<Member>, Error> {
        self.member_list_as(self.consistency).await
    }

    /// The cluster's members, from any member. `Linearizable` (and `Session`, which membership
    /// does not track) lists every change committed before the call and needs a quorum;
    /// `Serializable` lists what the answering member has applied, and works without a quorum.
    pub async fn member_list_as(&self, consistency: Consistency) -> Result<Vec<Member>, Error> {
        let linearizable = consistency != Consistency::Serializable;
        let response = self
            .read_call(
                "member list",
                Route::Spread,
                None,
                etcd::MemberListRequest { linearizable },
                Vec::new(),
                |channel, request| async move {
                    ClusterClient::new(channel)
                        .member_list(request)
                        .await
                        .map(Response::into_inner)
                },
            )
            .await?;
        let members: Vec<Member> = response.members.into_iter().map(Member::from).collect();
        self.shared.endpoints.set_members(members.clone());
        Ok(members)
    }

    /// Every known endpoint, the leader's first when it is known.
    fn leader_first(&self) -> Vec<String> {
        let mut order = self.endpoints();
        if let Some(leader) = self.leader_endpoint() {
            order.retain(|url| *url != leader);
            order.insert(0, leader);
        }
        order
    }

    /// A membership change or other administrative call: tried on the leader first, then the
    /// other members, moving on only while the call provably did not reach the leader. An
    /// ambiguous failure is [`Error::Unknown`] (a change like MemberAdd is not idempotent).
    async fn admin_call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, Error>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.shared.config.request_timeout;
        let order = self.leader_first();
        let mut tried = Vec::new();
        for url in order {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let Ok(conn) = self.shared.endpoints.conn(&url) else {
                continue;
            };
            match tokio::time::timeout(remaining, call(conn.channel, remaining)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => match classify(&status) {
                    Verdict::Final(error) => return Err(error),
                    Verdict::NotApplied(text) => tried.push(format!("{url}: {text}")),
                    Verdict::Ambiguous(text) | Verdict::SessionForgotten(text) => {
                        return Err(Error::Unknown {
                            message: format!("{what} at {url}: {text}"),
                        });
                    }
                },
                Err(_) => {
                    return Err(Error::Unknown {
                        message: format!("{what} at {url}: no answer within {remaining:?}"),
                    });
                }
            }
        }
        Err(Error::Unavailable {
            message: format!("{what}: no member took it ({})", tried.join("; ")),
        })
    }

    /// etcd's MemberAdd: adds a member with `peer_url` (as a learner if asked); returns the new
    /// member (its id) and the members after the change.
    pub async fn member_add(
        &self,
        peer_url: &str,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), Error> {
        let response = self
            .admin_call("member add", |channel, timeout| {
                let mut request = tonic::Request::new(etcd::MemberAddRequest {
                    peer_ur_ls: vec![peer_url.to_string()],
                    is_learner: learner,
                });
                request.set_timeout(timeout);
                async move {
                    ClusterClient::new(channel)
                        .member_add(request)
                        .await
                        .map(Response::into_inner)
                }
            })
            .await?;
        let member = response
            .member
            .map(Member::from)
            .ok_or_else(|| Error::Unknown {
                message: "the server answered member add without the member".into(),
            })?;
        Ok((
            member,
            response.members.into_iter().map(Member::from).collect(),
        ))
    }

    /// etcd's MemberRemove; returns the members after the change.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, Error> {
        let response = self
            .admin_call("member remove", |channel, timeout| {
                let mut request = tonic::Request::new(etcd::MemberRemoveRequest { id });
                request.set_timeout(timeout);
                async move {
                    ClusterClient::new(channel)
                        .member_remove(request)
                        .await
                        .map(Response::into_inner)
                }
            })
            .await?;
        Ok(response.members.into_iter().map(Member::from).collect())
    }

    /// etcd's MemberPromote (refused until the learner has caught up); returns the members.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, Error> {
        let response = self
            .admin_call("member promote", |channel, timeout| {
                let mut request = tonic::Request::new(etcd::MemberPromoteRequest { id });
                request.set_timeout(timeout);
                async move {
                    ClusterClient::new(channel)
                        .member_promote(request)
                        .await
                        .map(Response::into_inner)
                }
            })
            .await?;
        Ok(response.members.into_iter().map(Member::from).collect())
    }

    /// etcd's MemberUpdate (a new peer URL); returns the members.
    pub async fn member_update(&self, id: u64, peer_url: &str) -> Result<Vec<Member>, Error> {
        let response = self
            .admin_call("member update", |channel, timeout| {
                let mut request = tonic::Request::new(etcd::MemberUpdateRequest {
                    id,
                    peer_ur_ls: vec![peer_url.to_string()],
                });
                request.set_timeout(timeout);
                async move {
                    ClusterClient::new(channel)
                        .member_update(request)
                        .await
                        .map(Response::into_inner)
                }
            })
            .await?;
        Ok(response.members.into_iter().map(Member::from).collect())
    }

    /// A consistent backup of the cluster's data (Maintenance.Snapshot), from the first member
    /// that serves it; `progress` sees (bytes received, bytes still to come) after each chunk.
    /// The whole download is bounded by `timeout`, not the request timeout: backups are large.
    pub async fn snapshot(
        &self,
        timeout: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Vec<u8>, Error> {
        let order = self.leader_first();
        let mut tried = Vec::new();
        for url in order {
            let Ok(conn) = self.shared.endpoints.conn(&url) else {
                continue;
            };
            let download = async {
                let mut stream = MaintenanceClient::new(conn.channel)
                    .max_decoding_message_size(usize::MAX)
                    .snapshot(etcd::SnapshotRequest::default())
                    .await?
                    .into_inner();
                let mut file = Vec::new();
                while let Some(message) = stream.message().await? {
                    file.extend_from_slice(&message.blob);
                    progress(file.len() as u64, message.remaining_bytes);
                }
                Ok::<Vec<u8>, Status>(file)
            };
            match tokio::time::timeout(timeout, download).await {
                Ok(Ok(file)) => return Ok(file),
                Ok(Err(status)) => match classify(&status) {
                    Verdict::Final(error) => return Err(error),
                    Verdict::NotApplied(text)
                    | Verdict::Ambiguous(text)
                    | Verdict::SessionForgotten(text) => tried.push(format!("{url}: {text}")),
                },
                Err(_) => tried.push(format!("{url}: not done within {timeout:?}")),
            }
        }
        Err(Error::Unavailable {
            message: format!("snapshot: no member served it ({})", tried.join("; ")),
        })
    }

    /// One call to exactly `endpoint`, no failover, bounded by the request timeout.
    async fn at_endpoint<T, F, Fut>(&self, endpoint: &str, call: F) -> Result<(String, T), Error>
    where
        F: FnOnce(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let url = normalize_endpoint(endpoint)?;
        let conn = self.shared.endpoints.conn(&url)?;
        let timeout = self.shared.config.request_timeout;
        match tokio::time::timeout(timeout, call(conn.channel, timeout)).await {
            Ok(Ok(value)) => Ok((url, value)),
            Ok(Err(status)) => Err(match classify(&status) {
                Verdict::Final(error) => error,
                Verdict::NotApplied(text)
                | Verdict::Ambiguous(text)
                | Verdict::SessionForgotten(text) => Error::Unavailable {
                    message: format!("{url}: {text}"),
                },
            }),
            Err(_) => Err(Error::Unavailable {
                message: format!("{url}: no answer within {timeout:?}"),
            }),
        }
    }

    /// `Maintenance.Status` of the member at `endpoint` (that endpoint only).
    pub async fn status(&self, endpoint: &str) -> Result<EndpointStatus, Error> {
        let (url, status) = self
            .at_endpoint(endpoint, |channel, timeout| async move {
                let mut request = tonic::Request::new(etcd::StatusRequest::default());
                request.set_timeout(timeout);
                MaintenanceClient::new(channel)
                    .status(request)
                    .await
                    .map(Response::into_inner)
            })
            .await?;
        Ok(EndpointStatus::new(url, status))
    }

    /// The status of every member client URL (from a fresh serializable member list, so it works
    /// without a quorum; the known endpoints if no member answers it), in member order.
    pub async fn status_all(&self) -> Vec<(String, Result<EndpointStatus, Error>)> {
        let urls: Vec<String> = match self.member_list_as(Consistency::Serializable).await {
            Ok(members) => members
                .iter()
                .flat_map(|m| &m.client_urls)
                .filter_map(|url| normalize_endpoint(url).ok())
                .collect(),
            Err(_) => self.endpoints(),
        };
        let statuses = join_all(urls.iter().map(|url| self.status(url))).await;
        urls.into_iter().zip(statuses).collect()
    }

    /// Like `etcdctl endpoint health`: a linearizable read of key `health` on exactly
    /// `endpoint`; healthy (the time it took) if it succeeds, or fails with permission denied as
    /// etcd counts it.
    pub async fn health(&self, endpoint: &str) -> Result<Duration, Error> {
        let started = Instant::now();
        let outcome = self
            .at_endpoint(endpoint, |channel, timeout| async move {
                let mut request = tonic::Request::new(etcd::RangeRequest {
                    key: HEALTH_KEY.to_vec(),
                    ..Default::default()
                });
                request.set_timeout(timeout);
                kv(channel).range(request).await.map(|_| ())
            })
            .await;
        match outcome {
            Ok(_) => Ok(started.elapsed()),
            Err(Error::Failed {
                code: Code::PermissionDenied,
                ..
            }) => Ok(started.elapsed()),
            Err(error) => Err(error),
        }
    }
}
