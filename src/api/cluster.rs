//! `etcdserverpb.Cluster`: the member list, from the Raft membership.
//!
//! Membership changes (add, remove, update, promote) are the cluster-operations issue's work;
//! until then they answer `Unimplemented` with a message saying so, and change nothing.

use openraft::async_runtime::watch::WatchReceiver;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::ApiContext;
use super::error::ApiError;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;

pub struct ClusterService {
    context: ApiContext,
}

impl ClusterService {
    pub fn new(context: ApiContext) -> Self {
        ClusterService { context }
    }

    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    /// Every member (voters and learners) as etcd's `Member`.
    pub fn members(context: &ApiContext) -> Vec<etcd::Member> {
        let metrics = context.consensus.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| etcd::Member {
                id: *id,
                name: member.name.clone(),
                peer_ur_ls: vec![member.peer_url.clone()],
                // Empty until the member has started and published its client URL, as in etcd.
                client_ur_ls: if member.client_url.is_empty() {
                    Vec::new()
                } else {
                    vec![member.client_url.clone()]
                },
                is_learner: !voters.contains(id),
            })
            .collect()
    }
}

fn not_yet(what: &str) -> Status {
    ApiError::Unimplemented(format!(
        "etcdserver: {what} is not supported by this QuorumDB version; membership is fixed by --initial-cluster"
    ))
    .into()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<etcd::MemberAddRequest>,
    ) -> Result<Response<etcd::MemberAddResponse>, Status> {
        Err(not_yet("member add"))
    }

    async fn member_remove(
        &self,
        _: Request<etcd::MemberRemoveRequest>,
    ) -> Result<Response<etcd::MemberRemoveResponse>, Status> {
        Err(not_yet("member remove"))
    }

    async fn member_update(
        &self,
        _: Request<etcd::MemberUpdateRequest>,
    ) -> Result<Response<etcd::MemberUpdateResponse>, Status> {
        Err(not_yet("member update"))
    }

    async fn member_list(
        &self,
        _: Request<etcd::MemberListRequest>,
    ) -> Result<Response<etcd::MemberListResponse>, Status> {
        Ok(Response::new(etcd::MemberListResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            members: Self::members(&self.context),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<etcd::MemberPromoteRequest>,
    ) -> Result<Response<etcd::MemberPromoteResponse>, Status> {
        Err(not_yet("member promote"))
    }
}
