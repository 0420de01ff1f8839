//! `etcdserverpb.Cluster`: the member list and membership changes (add as learner or voter,
//! promote, remove, update peer URLs), run on the leader through joint consensus
//! ([`crate::network::membership`]).

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::ApiContext;
use super::error::ApiError;
use crate::config::stable_hash;
use crate::network::membership::MembershipChange;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::types::Member;
use crate::types::NodeId;

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

/// How long a changed membership may take to show on this member before the answer lists it
/// anyway (a follower learns the committed change one round trip after the leader).
const MEMBERSHIP_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// The one peer URL of a MemberAdd/MemberUpdate: `http://host:port`.
fn peer_url(urls: &[String]) -> Result<String, ApiError> {
    let [url] = urls else {
        return Err(ApiError::InvalidPeerUrls);
    };
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .ok_or(ApiError::InvalidPeerUrls)?;
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(format!("http://{authority}"))
        }
        _ => Err(ApiError::InvalidPeerUrls),
    }
}

/// The id a member added with `peer_url` gets: derived from the URL, so the new node finds its
/// own id by asking the cluster for the member with its peer URL.
pub fn member_id_for(peer_url: &str) -> NodeId {
    stable_hash(format!("member:{peer_url}").as_bytes()).max(1)
}

impl ClusterService {
    /// Runs `change`, then waits (bounded) until this member's view shows `visible`.
    async fn change(
        &self,
        change: MembershipChange,
        visible: impl Fn(&BTreeMap<NodeId, bool>) -> bool,
    ) -> Result<Vec<etcd::Member>, ApiError> {
        self.context.consensus.change_membership(change).await?;
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_VISIBLE_WAIT;
        let mut metrics = self.context.consensus.raft.metrics();
        loop {
            let view: BTreeMap<NodeId, bool> = {
                let m = metrics.borrow_watched();
                let membership = m.membership_config.membership();
                let voters: Vec<NodeId> = membership.voter_ids().collect();
                membership
                    .nodes()
                    .map(|(id, _)| (*id, voters.contains(id)))
                    .collect()
            };
            if visible(&view) {
                break;
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(Self::members(&self.context))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<etcd::MemberAddRequest>,
    ) -> Result<Response<etcd::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let peer_url = peer_url(&request.peer_ur_ls)?;
        let id = member_id_for(&peer_url);
        let member = Member {
            name: String::new(),
            peer_url: peer_url.clone(),
            client_url: String::new(),
        };
        let learner = request.is_learner;
        let members = self
            .change(
                MembershipChange::Add {
                    id,
                    member,
                    learner,
                },
                |view| view.contains_key(&id),
            )
            .await?;
        Ok(Response::new(etcd::MemberAddResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            member: Some(etcd::Member {
                id,
                name: String::new(),
                peer_ur_ls: vec![peer_url],
                client_ur_ls: Vec::new(),
                is_learner: learner,
            }),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<etcd::MemberRemoveRequest>,
    ) -> Result<Response<etcd::MemberRemoveResponse>, Status> {
        let id = request.get_ref().id;
        let members = self
            .change(MembershipChange::Remove { id }, |view| {
                !view.contains_key(&id)
            })
            .await?;
        Ok(Response::new(etcd::MemberRemoveResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<etcd::MemberUpdateRequest>,
    ) -> Result<Response<etcd::MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let peer_url = peer_url(&request.peer_ur_ls)?;
        let id = request.id;
        let members = self
            .change(MembershipChange::Update { id, peer_url }, |_| true)
            .await?;
        Ok(Response::new(etcd::MemberUpdateResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            members,
        }))
    }

    /// Serializable by default, as in etcd: the list this member has applied. With
    /// `linearizable` (etcd 3.5+ clients send it), it first passes the read barrier, so every
    /// membership change committed before the call is listed.
    async fn member_list(
        &self,
        request: Request<etcd::MemberListRequest>,
    ) -> Result<Response<etcd::MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.context.consensus.read_barrier().await?;
        }
        Ok(Response::new(etcd::MemberListResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            members: Self::members(&self.context),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<etcd::MemberPromoteRequest>,
    ) -> Result<Response<etcd::MemberPromoteResponse>, Status> {
        let id = request.get_ref().id;
        let members = self
            .change(MembershipChange::Promote { id }, |view| {
                view.get(&id) == Some(&true)
            })
            .await?;
        Ok(Response::new(etcd::MemberPromoteResponse {
            header: Some(self.context.header(self.context.reader.revision())),
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_has_one_http_peer_url() {
        assert_eq!(
            peer_url(&["http://127.0.0.1:2380".to_string()]),
            Ok("http://127.0.0.1:2380".to_string())
        );
        assert_eq!(
            peer_url(&["http://node4:2380/".to_string()]),
            Ok("http://node4:2380".to_string())
        );
        for bad in [
            vec![],
            vec!["127.0.0.1:2380".to_string()],
            vec!["http://127.0.0.1".to_string()],
            vec!["http://:2380".to_string()],
            vec!["http://a:1".to_string(), "http://b:1".to_string()],
        ] {
            assert_eq!(peer_url(&bad), Err(ApiError::InvalidPeerUrls), "{bad:?}");
        }
        assert_ne!(
            member_id_for("http://127.0.0.1:2380"),
            member_id_for("http://127.0.0.1:2381")
        );
    }
}
