//! `etcdserverpb.Maintenance`: Status (what `etcdctl endpoint status` shows), alarms (none exist
//! yet: there is no space quota), MoveLeader through openraft's leader transfer, HashKV (compare
//! replicas) and Snapshot (a consistent backup, streamed).
//!
//! Defragment, Hash and Downgrade answer `Unimplemented` with a message saying so.

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

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<etcd::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<etcd::AlarmRequest>,
    ) -> Result<Response<etcd::AlarmResponse>, Status> {
        // No alarm can be raised yet (no space quota), so GET is truthfully empty and
        // DEACTIVATE removes nothing, which etcd answers with an empty list too.
        match etcd::alarm_request::AlarmAction::try_from(request.get_ref().action) {
            Ok(
                etcd::alarm_request::AlarmAction::Get
                | etcd::alarm_request::AlarmAction::Deactivate,
            ) => Ok(Response::new(etcd::AlarmResponse {
                header: Some(self.context.header(self.context.reader.revision())),
                alarms: Vec::new(),
            })),
            _ => Err(not_yet("raising an alarm")),
        }
    }

    async fn status(
        &self,
        _: Request<etcd::StatusRequest>,
    ) -> Result<Response<etcd::StatusResponse>, Status> {
        Ok(Response::new(Self::status(&self.context)))
    }

    async fn defragment(
        &self,
        _: Request<etcd::DefragmentRequest>,
    ) -> Result<Response<etcd::DefragmentResponse>, Status> {
        Err(not_yet("defragment"))
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
