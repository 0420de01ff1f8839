//! openraft's storage conformance suite, run against our sled log store and state machine.

use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use quorumdb::store;
use quorumdb::store::LogStore;
use quorumdb::store::StateMachine;
use quorumdb::types::TypeConfig;
use tempfile::TempDir;

/// Each build opens a fresh store in its own temporary directory, kept alive by the guard.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let opened = store::open(dir.path()).expect("open a fresh store");
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_passes_the_openraft_storage_suite() {
    Suite::test_all(SledStoreBuilder)
        .await
        .expect("storage conformance suite");
}
