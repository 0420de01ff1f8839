//! Criterion micro-benchmarks of the two storage paths every write crosses, so a regression shows
//! here, in a minute, before it reaches a cluster benchmark:
//!
//! ```text
//! client put -> leader: LogStore::append + flush (group commit)   <- log_append_flush/{1,16,128}
//!            -> committed: StateMachine::apply -> KeySpace::apply (+ persist) <- keyspace_apply_put/{1,16,128}
//! ```
//!
//! - `keyspace_apply_put/N`: one `KeySpace::apply` of N Put commands, then `KeySpace::persist`
//!   (their one sled batch, no flush), over 10,000 keys drawn at random so most puts overwrite a
//!   key and keep a version. The state machine hands several applies to sled in one batch; one batch per apply,
//!   as here, is the cost when writes are rare.
//! - `log_append_flush/N`: one `append` of N entries, timed until its callback reports them
//!   durable: ONE flush covers the whole batch, which is the group-commit path.
//!
//! Both report throughput in elements (commands or entries per second); the time per iteration
//! is the cost of one batch. 8-byte keys and 256-byte values, as `bench/compare-etcd.sh` uses.
//! Each benchmark works in its own temporary directory on the real disk. Inputs are built outside
//! the timed part; every benchmark first checks once that a batch really did what it claims.
//!
//! Run by hand, never by the test suite: `cargo bench --bench hot_paths`. Results are recorded in
//! `bench/results/` (the first: `2026-11-22-micro.md`).
//!
//! Must never: touch sled types (storage stays behind `quorumdb::store`).

use std::hint::black_box;
use std::io;
use std::time::Duration;

use criterion::BatchSize;
use criterion::BenchmarkId;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use openraft::alias::EntryOf;
use openraft::alias::LeaderIdOf;
use openraft::alias::LogIdOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use quorumdb::rng::SplitMix64;
use quorumdb::store;
use quorumdb::store::LogStore;
use quorumdb::store::Store;
use quorumdb::store::mvcc::KeySpace;
use quorumdb::types::Command;
use quorumdb::types::CommandResponse;
use quorumdb::types::PutOp;
use quorumdb::types::TypeConfig;

/// Commands (or entries) per batch: a lone write, a moderate and a heavy batch of concurrent ones.
const BATCH_SIZES: [usize; 3] = [1, 16, 128];
/// Distinct keys written in turn, as the cluster benchmark's key space.
const KEY_SPACE_KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 256;

/// Short on purpose: the whole run must stay around a minute on a shared 2-core machine.
const WARM_UP_MS: u64 = 1_000;
const MEASUREMENT_MS: u64 = 3_000;
/// Criterion's minimum is 10.
const SAMPLE_SIZE: usize = 20;

/// The `sequence`-th Put of a run: an 8-byte key drawn from the key space, 256-byte value. The
/// key is drawn at random (seeded by `sequence`, so every run writes the same keys), as the
/// cluster benchmark's clients draw theirs: the key space's sled tree sees the same scattered
/// writes as in a cluster, not a sweep through the keys in order.
fn put(sequence: u64) -> Command {
    let key = SplitMix64::new(sequence).below(KEY_SPACE_KEYS);
    Command::Put(PutOp {
        key: key.to_be_bytes().to_vec(),
        value: vec![sequence as u8; VALUE_BYTES],
        ..PutOp::default()
    })
}

/// The next `count` Puts, advancing `next_sequence`.
fn puts(next_sequence: &mut u64, count: usize) -> Vec<Command> {
    (0..count)
        .map(|_| {
            *next_sequence += 1;
            put(*next_sequence)
        })
        .collect()
}

/// The next `count` log entries (term 1, leader 1), contiguous from `next_index`, which advances.
fn entries(next_index: &mut u64, count: usize) -> Vec<EntryOf<TypeConfig>> {
    (0..count)
        .map(|_| {
            let index = *next_index;
            *next_index += 1;
            let log_id =
                LogIdOf::<TypeConfig>::new(LeaderIdOf::<TypeConfig>::new_committed(1, 1), index);
            EntryOf::<TypeConfig>::new_normal(log_id, std::sync::Arc::new(put(index)))
        })
        .collect()
}

/// Applies `commands` in one `KeySpace::apply`, as the state machine does with a committed batch,
/// and hands the writes to sled.
fn apply(keyspace: &KeySpace, commands: &[Command]) -> Vec<CommandResponse> {
    let commands: Vec<Option<&Command>> = commands.iter().map(Some).collect();
    let responses = keyspace
        .apply(&commands, Vec::new())
        .expect("apply a batch to the key space");
    keyspace.persist().expect("hand the writes to sled");
    responses
}

fn keyspace_apply_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyspace_apply_put");
    for batch in BATCH_SIZES {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let keyspace = store::open_keyspace(dir.path()).expect("open the key space");
        let mut next_sequence = 0;

        // Once, untimed: a batch of N puts is N successful writes, N revisions.
        let revision_before = keyspace.revision();
        let responses = apply(&keyspace, &puts(&mut next_sequence, batch));
        assert!(responses.iter().all(|response| response.result.is_ok()));
        assert_eq!(keyspace.revision(), revision_before + batch as i64);

        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_batched(
                || puts(&mut next_sequence, batch),
                // The commands are handed back so their deallocation is not timed.
                |commands| (black_box(apply(&keyspace, &commands)), commands),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Appends `entries` and waits until the log store reports them durable (after its flush).
async fn append_flushed(
    log_store: &mut LogStore,
    entries: Vec<EntryOf<TypeConfig>>,
) -> io::Result<()> {
    let (flushed_tx, flushed_rx) = TypeConfig::oneshot();
    log_store
        .append(entries, IOFlushed::signal(flushed_tx))
        .await?;
    flushed_rx.await.map_err(io::Error::other)?
}

fn log_append_flush(c: &mut Criterion) {
    // One thread, as small as the measured path allows: the flusher task runs while block_on
    // waits for the callback; the log's fdatasync runs on its flusher thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("log_append_flush");
    for batch in BATCH_SIZES {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The log store starts its flusher task, so it opens inside the runtime.
        let Store { mut log_store, .. } = runtime
            .block_on(async { store::open(dir.path()) })
            .expect("open the store");
        let mut next_index = 1;

        // Once, untimed: after the callback, the whole batch is in the log.
        let first = entries(&mut next_index, batch);
        runtime
            .block_on(append_flushed(&mut log_store, first))
            .expect("append and flush a batch");
        let state = runtime
            .block_on(log_store.get_log_state())
            .expect("read the log state");
        assert_eq!(
            state.last_log_id.map(|log_id| log_id.index()),
            Some(batch as u64)
        );

        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_batched(
                || entries(&mut next_index, batch),
                |entries| {
                    runtime
                        .block_on(append_flushed(&mut log_store, entries))
                        .expect("append and flush a batch")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(WARM_UP_MS))
        .measurement_time(Duration::from_millis(MEASUREMENT_MS))
        .sample_size(SAMPLE_SIZE);
    targets = keyspace_apply_put, log_append_flush
}
criterion_main!(hot_paths);
