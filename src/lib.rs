//! QuorumDB: a strongly consistent, replicated key-value database with an etcd v3 client API.
//!
//! Module map (dependencies point downwards only: `api` and `network` call into Raft and `store`;
//! `store` imports neither):
//!
//! - [`types`]: the openraft type configuration and the commands that travel through the log.
//! - [`limits`]: every bound, with its unit in the name.
//! - [`store`]: the only module that knows sled: Raft log, MVCC state machine, snapshots.
//! - [`network`]: the Raft peer transport over gRPC, with a fault seam for tests.
//! - [`api`]: the etcd v3 gRPC services clients talk to.
//! - [`client`]: the Rust client library: endpoints and failover, typed results and errors, safe
//!   retries, exactly-once writes, session consistency.
//! - [`cli`]: the `quorumdb` client verbs (put, get, del, txn, member, endpoint) over [`client`].
//! - [`bench`]: `quorumdb bench`, a load generator over the etcd v3 API (QuorumDB or etcd).
//! - [`compactor`]: automatic compaction on the leader (etcd's periodic and revision modes).
//! - [`codec`]: the binary format of our own data (log, snapshots, peer payloads).
//! - [`config`]: node configuration from flags, environment and TOML, validated once.
//! - [`node`]: wiring: open store, start Raft, serve, shut down cleanly.
//! - [`observe`]: the HTTP side of a node: Prometheus metrics, health and routing checks,
//!   `/status` and the live status page.
//! - [`pb`]: generated protobuf code (etcd v3 client API and our peer service).
//! - [`probe`]: `quorumdb probe`, the health check containers and pods run against a node.

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod compactor;
pub mod config;
pub mod limits;
pub mod network;
pub mod node;
pub mod observe;
pub mod pb;
pub mod probe;
pub mod rng;
pub mod store;
pub mod types;
