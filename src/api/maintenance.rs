//! `etcdserverpb.Maintenance`: Status (what `etcdctl endpoint status` shows), alarms (NOSPACE is
//! raised past `--quota-backend-bytes`; GET / ACTIVATE / DEACTIVATE as etcd), MoveLeader through openraft's leader transfer, HashKV (compare
//! replicas) and Snapshot (a consistent backup, streamed).
//!
//! Defragment flushes (sled has nothing to defragment: see the method). Hash and Downgrade
//! answer `Unimplemented` with a message saying so.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use openraft::async_runtime::watch::WatchReceiver;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::ApiContext;
use super::error::ApiError;
use crate::limits::REQUEST_TIMEOUT_MS;
use crate::limits::SNAPSHOT_CHUNK_BYTES;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::types::AlarmKind;
use crate::types::Command;
use crate::types::CommandOutput;

/// The etcd API version we speak; clients parse `major.minor` and require at least 3.2.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    context: ApiContext,
}

impl MaintenanceService {
    pub fn new(context: ApiContext) -> Self {
        MaintenanceService { context }
    }

    pub fn into_server(self) -> MaintenanceServer<Self> {
        MaintenanceServer::new(self)
    }

    pub fn status(context: &ApiContext) -> etcd::StatusResponse {
        let metrics = context.consensus.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader.unwrap_or(0);
        let is_learner = !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == context.member_id());
        let db_size = context.reader.db_size_bytes() as i64;
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        errors.extend(context.reader.alarms().list().into_iter().map(alarm_text));
        etcd::StatusResponse {
            header: Some(etcd::ResponseHeader {
                cluster_id: context.cluster_id,
                member_id: context.member_id(),
                revision: context.reader.revision(),
                raft_term: metrics.current_term,
            }),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader,
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics
                .last_applied
                .as_ref()
                .map_or(0, |log_id| log_id.index),
            errors,
            db_size_in_use: db_size,
            is_learner,
            ..Default::default()
        }
    }
}

fn not_yet(what: &str) -> Status {
    ApiError::Unimplemented(format!(
        "etcdserver: {what} is not supported by this QuorumDB version"
    ))
    .into()
}

fn alarm_member((member, kind): (u64, AlarmKind)) -> etcd::AlarmMember {
    etcd::AlarmMember {
        member_id: member,
        alarm: match kind {
            AlarmKind::NoSpace => etcd::AlarmType::Nospace,
            AlarmKind::Corrupt => etcd::AlarmType::Corrupt,
        } as i32,
    }
}

/// An alarm as etcd's Status `errors` shows it (Go proto-text form).
pub fn alarm_text((member, kind): (u64, AlarmKind)) -> String {
    let name = match kind {
        AlarmKind::NoSpace => "NOSPACE",
        AlarmKind::Corrupt => "CORRUPT",
    };
    format!("memberID:{member} alarm:{name}")
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<etcd::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// etcd's alarms: GET lists every raised alarm; ACTIVATE and DEACTIVATE go through the log
    /// (cluster-wide) and answer the alarms they changed (none if nothing changed).
    async fn alarm(
        &self,
        request: Request<etcd::AlarmRequest>,
    ) -> Result<Response<etcd::AlarmResponse>, Status> {
        let request = request.into_inner();
        let action = etcd::alarm_request::AlarmAction::try_from(request.action).map_err(|_| {
            ApiError::InvalidMetadata {
                key: "action",
                reason: format!("unknown alarm action {}", request.action),
            }
        })?;
        let kind = match etcd::AlarmType::try_from(request.alarm) {
            Ok(etcd::AlarmType::None) => None,
            Ok(etcd::AlarmType::Nospace) => Some(AlarmKind::NoSpace),
            Ok(etcd::AlarmType::Corrupt) => Some(AlarmKind::Corrupt),
            Err(_) => {
                return Err(ApiError::InvalidMetadata {
                    key: "alarm",
                    reason: format!("unknown alarm type {}", request.alarm),
                }
                .into());
            }
        };
        let alarms = match (action, kind) {
            // Linearizable, as etcd's (which goes through its log): after a disarm is
            // acknowledged, no member lists the alarm.
            (etcd::alarm_request::AlarmAction::Get, _) => {
                self.context.consensus.read_barrier().await?;
                self.context.reader.alarms().list()
            }
            // etcd: activating or deactivating NONE changes nothing.
            (_, None) => Vec::new(),
            (action, Some(alarm)) => {
                let command = Command::Alarm {
                    activate: action == etcd::alarm_request::AlarmAction::Activate,
                    member: request.member_id,
                    alarm,
                };
                let response = self.context.consensus.write(command).await?;
                match response.result.map_err(ApiError::from)? {
                    CommandOutput::Alarms(changed) => changed,
                    other => {
                        return Err(ApiError::Internal(format!(
                            "an alarm answered with {other:?}"
                        ))
                        .into());
                    }
                }
            }
        };
        Ok(Response::new(etcd::AlarmResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            alarms: alarms.into_iter().map(alarm_member).collect(),
        }))
    }

    async fn status(
        &self,
        _: Request<etcd::StatusRequest>,
    ) -> Result<Response<etcd::StatusResponse>, Status> {
        Ok(Response::new(Self::status(&self.context)))
    }

    /// etcd rewrites its bbolt file to give freed pages back. sled has no such operation: it
    /// reuses freed space itself as it rewrites segments. What an operator wants from a defrag,
    /// everything durable and the size reported accurately afterwards, is a flush, so that is
    /// what this does (and says so in the log).
    async fn defragment(
        &self,
        _: Request<etcd::DefragmentRequest>,
    ) -> Result<Response<etcd::DefragmentResponse>, Status> {
        let reader = self.context.reader.clone();
        let before = reader.db_size_bytes();
        tokio::task::spawn_blocking(move || reader.flush())
            .await
            .map_err(|e| ApiError::Internal(format!("flush task failed: {e}")))?
            .map_err(|e| ApiError::Internal(format!("cannot flush the database: {e}")))?;
        tracing::info!(
            before,
            after = self.context.reader.db_size_bytes(),
            "defragment: flushed (sled reclaims freed space by itself)"
        );
        Ok(Response::new(etcd::DefragmentResponse {
            header: Some(self.context.header(self.context.reader.revision())),
        }))
    }

    async fn hash(
        &self,
        _: Request<etcd::HashRequest>,
    ) -> Result<Response<etcd::HashResponse>, Status> {
        Err(not_yet("hash"))
    }

    /// A hash of the key space up to a revision, equal on every member that applied it: lets
    /// operators compare replicas (`etcdctl endpoint hashkv --cluster`).
    async fn hash_kv(
        &self,
        request: Request<etcd::HashKvRequest>,
    ) -> Result<Response<etcd::HashKvResponse>, Status> {
        let (hash, compact_revision, hash_revision) = self
            .context
            .reader
            .hash_kv(request.get_ref().revision)
            .map_err(ApiError::from)?;
        Ok(Response::new(etcd::HashKvResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A consistent backup of the key space (taken after a read-index barrier, so it holds
    /// every write acknowledged before the call), streamed in chunks. The bytes are QuorumDB's
    /// backup format (`store::backup`), which `quorumdb snapshot restore` reads; etcdctl
    /// `snapshot save` stores them as they come.
    async fn snapshot(
        &self,
        _: Request<etcd::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.context.consensus.read_barrier().await?;
        let reader = self.context.reader.clone();
        let (file, summary) = tokio::task::spawn_blocking(move || reader.backup())
            .await
            .map_err(|e| ApiError::Internal(format!("backup task failed: {e}")))?
            .map_err(|e| ApiError::Internal(format!("cannot take a backup: {e}")))?;
        tracing::info!(
            revision = summary.revision,
            bytes = file.len(),
            "streaming a backup"
        );
        let header = self.context.header(summary.revision);
        let total = file.len();
        let messages: Vec<Result<etcd::SnapshotResponse, Status>> = file
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(etcd::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: ETCD_API_VERSION.to_string(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    /// Hands leadership to `targetID` and returns once this node sees the new leader.
    async fn move_leader(
        &self,
        request: Request<etcd::MoveLeaderRequest>,
    ) -> Result<Response<etcd::MoveLeaderResponse>, Status> {
        let target = request.get_ref().target_id;
        let raft = &self.context.consensus.raft;
        if !raft.is_leader() {
            return Err(ApiError::NotLeader.into());
        }
        let is_voter = raft.voter_ids().any(|id| id == target);
        if !is_voter || target == self.context.member_id() {
            return Err(ApiError::BadLeaderTransferee.into());
        }
        raft.trigger()
            .transfer_leader(target)
            .await
            .map_err(|_| ApiError::Stopped)?;
        let waited = raft
            .wait(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .current_leader(target, "move leader")
            .await;
        match waited {
            Ok(_) => Ok(Response::new(etcd::MoveLeaderResponse {
                header: Some(self.context.header(self.context.reader.revision())),
            })),
            Err(_) => Err(ApiError::Timeout.into()),
        }
    }

    async fn downgrade(
        &self,
        _: Request<etcd::DowngradeRequest>,
    ) -> Result<Response<etcd::DowngradeResponse>, Status> {
        Err(not_yet("downgrade"))
    }
}
