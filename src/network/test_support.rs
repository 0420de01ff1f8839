//! Helpers for the network module's unit tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::network::Faults;
use crate::network::PeerNetworkFactory;
use crate::network::Peers;
use crate::store::StoreMetrics;
use crate::types::Member;
use crate::types::Raft;

/// A one-member cluster on `dir`, led by itself; its log appends are counted in the metrics.
pub(crate) async fn lone_leader(dir: &std::path::Path) -> (Raft, StoreMetrics) {
    let metrics = StoreMetrics::default();
    let store =
        crate::store::open_with_metrics(dir, crate::limits::CACHE_BYTES_DEFAULT, metrics.clone())
            .unwrap();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let raft = Raft::new(
        1,
        Arc::new(config),
        PeerNetworkFactory::new(Peers::new(1, Faults::default())),
        store.log_store,
        store.state_machine,
    )
    .await
    .unwrap();
    raft.initialize(BTreeMap::from([(1, Member::default())]))
        .await
        .unwrap();
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "the lone member leads")
        .await
        .unwrap();
    (raft, metrics)
}
