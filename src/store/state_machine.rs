//! The Raft state machine: applies committed entries to the MVCC key space and makes snapshots.
//!
//! ```text
//! committed entries --admit numbered writes (ClientSessions: apply / replay / forgotten)
//!                   --apply--> KeySpace::apply_with (data + last_applied + membership + client
//!                              sessions, one batch)
//!                                   |
//! try_create_snapshot_builder: KeySpace::freeze_dump (in the state machine task, so no apply
//!                                   |          interleaves: applied writes to sled, meta copied)
//! build_snapshot (concurrent with apply): flush the db; nothing is encoded (see store::snapshot)
//! get_current_snapshot: KeySpace::freeze_dump where the state machine stands, encoded only if
//!                       it is sent
//! install_snapshot: KeySpace::restore (one batch, the applied state with it), flush the db
//! ```
//!
//! Must never: answer a client before its entry is applied; let openraft purge the log behind a
//! state the key space does not hold durably. openraft purges only behind a snapshot it built
//! (`build_snapshot` flushes the db first) or installed (`install_snapshot` flushes before it
//! returns); the meta `get_current_snapshot` reports may be ahead of the flushed state, and is
//! used only to send the snapshot and, on start, as openraft's snapshot position.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use super::alarms::AlarmPlan;
use super::alarms::Alarms;
use super::client_sessions::Admission;
use super::client_sessions::BatchRecord;
use super::client_sessions::ClientSessions;
use super::codec::sled_error;
use super::mvcc::EXTRA_PREFIX;
use super::mvcc::KeySpace;
use super::snapshot::SnapshotData;
use super::snapshot::clear_snapshot_folder;
use super::snapshot::snapshot_folder;
use super::snapshot::take_earlier_file;
use crate::codec::decode;
use crate::codec::encode;
use crate::observe::metrics::StoreMetrics;
use crate::types::Command;
use crate::types::CommandOutput;
use crate::types::KvError;
use crate::types::TypeConfig;

fn extra_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.push(EXTRA_PREFIX);
    key.extend_from_slice(name);
    key
}

fn applied_key() -> Vec<u8> {
    extra_key(b"last_applied")
}

fn membership_key() -> Vec<u8> {
    extra_key(b"last_membership")
}

/// The state machine handed to openraft. Reads by the API go through [`super::KvReader`], which
/// shares the same key space.
pub struct StateMachine {
    db: sled::Db,
    keyspace: Arc<KeySpace>,
    /// Where a send encodes the key space before the network takes it (see `store::snapshot`).
    snapshot_folder: PathBuf,
    /// In memory as well as in the key space: checked on every apply without a read.
    last_applied: Option<LogIdOf<TypeConfig>>,
    /// Index over the client sessions stored in the key space (exactly-once writes).
    sessions: ClientSessions,
    /// Raised alarms, shared with readers.
    alarms: Alarms,
    metrics: StoreMetrics,
}

impl StateMachine {
    /// Opens the state machine over the key space of the node's `data_dir`. A snapshot file an
    /// earlier version left there is installed if it is ahead of the key space, then removed.
    pub(crate) fn open(
        db: sled::Db,
        keyspace: Arc<KeySpace>,
        data_dir: &Path,
        metrics: StoreMetrics,
        alarms: Alarms,
    ) -> io::Result<Self> {
        let mut state_machine = StateMachine {
            db,
            keyspace,
            snapshot_folder: snapshot_folder(data_dir),
            last_applied: None,
            sessions: ClientSessions::default(),
            alarms,
            metrics,
        };
        state_machine.last_applied = state_machine.read_applied_state()?.0;
        state_machine.sessions = ClientSessions::load(&state_machine.keyspace)?;
        state_machine.alarms.reload(&state_machine.keyspace)?;
        if let Some(earlier) = take_earlier_file(data_dir)?
            && earlier.meta.last_log_id > state_machine.last_applied
        {
            tracing::info!(last_log_id = ?earlier.meta.last_log_id, "installing the snapshot file of an earlier version");
            state_machine.restore_dump(&earlier.meta, &earlier.data)?;
        }
        // The earlier file goes only once the key space holds what it held durably.
        state_machine.db.flush().map_err(sled_error)?;
        clear_snapshot_folder(data_dir)?;
        Ok(state_machine)
    }

    /// Replaces the key space, client sessions and alarms by those of an encoded dump, with the
    /// applied state of `meta`, in one batch. The caller flushes the db.
    fn restore_dump(&mut self, meta: &SnapshotMetaOf<TypeConfig>, dump: &[u8]) -> io::Result<()> {
        let dump: Vec<(Vec<u8>, Vec<u8>)> = decode(dump)?;
        // The meta is authoritative for what the snapshot covers; the dump's own copies of the
        // applied state are replaced so the two can never disagree.
        let (applied, membership) = (applied_key(), membership_key());
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = dump
            .into_iter()
            .filter(|(key, _)| *key != applied && *key != membership)
            .collect();
        if let Some(log_id) = &meta.last_log_id {
            entries.push((applied_key(), encode(log_id)?));
        }
        entries.push((membership_key(), encode(&meta.last_membership)?));
        self.keyspace.restore(entries)?;
        self.last_applied = meta.last_log_id;
        // The snapshot's client sessions replace ours, as its data replaces our data.
        self.sessions = ClientSessions::load(&self.keyspace)?;
        self.alarms.reload(&self.keyspace)?;
        Ok(())
    }

    /// The key space frozen where the state machine stands, with its applied state as the meta.
    fn freeze(&self) -> io::Result<(SnapshotMetaOf<TypeConfig>, SnapshotData)> {
        let (last_log_id, last_membership) = self.read_applied_state()?;
        // Every applied write goes to sled here, which a db flush makes durable; the history is
        // read from sled only if the snapshot is sent, outside this task.
        let dump = self.keyspace.freeze_dump()?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id,
            last_membership,
        };
        let data = SnapshotData::Frozen {
            dump,
            spill_folder: self.snapshot_folder.clone(),
        };
        Ok((meta, data))
    }

    fn read_applied_state(
        &self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let applied = match self.keyspace.get_extra(&applied_key())? {
            Some(bytes) => Some(decode(&bytes)?),
            None => None,
        };
        let membership = match self.keyspace.get_extra(&membership_key())? {
            Some(bytes) => decode(&bytes)?,
            None => StoredMembershipOf::<TypeConfig>::default(),
        };
        Ok((applied, membership))
    }
}

/// What an entry that does not run in the key space answers.
#[derive(Debug, Clone)]
enum Answer {
    Session(Admission),
    Refused(KvError),
    Alarms(Vec<(crate::types::NodeId, crate::types::AlarmKind)>),
}

/// Freezes the key space when created (inside the state machine task, between applies) and
/// flushes the db in `build_snapshot`, concurrently with apply and reads. The key space is the
/// snapshot: nothing is encoded or written besides (see [`super::snapshot`]).
pub struct SnapshotBuilder {
    db: sled::Db,
    metrics: StoreMetrics,
    meta: SnapshotMetaOf<TypeConfig>,
    /// The key space at `meta.last_log_id`; taken by `build_snapshot`.
    dump: Option<SnapshotData>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        let dump = self
            .dump
            .take()
            .ok_or_else(|| io::Error::other("a snapshot builder builds once"))?;
        // The key space must hold at least this state durably before openraft purges the log
        // behind the snapshot; the flush covers every tree of the db.
        self.db.flush_async().await.map_err(sled_error)?;
        tracing::info!(last_log_id = ?self.meta.last_log_id, "built snapshot");
        self.metrics.snapshots_built.inc();
        // openraft keeps only the meta; the dump, dropped with it, lets compaction go on.
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: self.meta.clone(),
            snapshot: dump,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        self.read_applied_state()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch: Vec<EntryResponder<TypeConfig>> = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        let last_applied = last.log_id();
        if let Some(previous) = self.last_applied {
            assert!(last_applied > previous, "last_applied would go backwards");
        }

        let mut membership = None;
        let mut record = BatchRecord::default();
        let mut alarm_plan = AlarmPlan::new(&self.alarms);
        // Per position: an entry that must not run in the key space, and what it answers.
        let mut answers: Vec<Option<Answer>> = vec![None; batch.len()];
        let mut commands: Vec<Option<&Command>> = Vec::with_capacity(batch.len());
        for (position, (entry, _)) in batch.iter().enumerate() {
            let command = match &entry.payload {
                EntryPayload::Normal(command) => Some(&**command),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            };
            commands.push(match (command, &entry.payload) {
                // Refused before a numbered write is admitted: refused is not applied, so a
                // retry after the alarm is cleared runs as a new write.
                (Some(command), _) if command.may_add_data() && alarm_plan.no_space() => {
                    answers[position] = Some(Answer::Refused(KvError::NoSpace));
                    None
                }
                (
                    Some(Command::Alarm {
                        activate,
                        member,
                        alarm,
                    }),
                    _,
                ) => {
                    let changed = alarm_plan.change(*activate, *member, *alarm);
                    if !changed.is_empty() {
                        tracing::warn!(
                            member = %format!("{member:x}"),
                            ?alarm,
                            "alarm {}",
                            if *activate { "raised" } else { "cleared" }
                        );
                    }
                    answers[position] = Some(Answer::Alarms(changed));
                    None
                }
                (Some(command @ Command::Numbered { write, .. }), _) => {
                    let admission = self.sessions.admit(
                        &self.keyspace,
                        *write,
                        entry.log_id().index,
                        position,
                        &mut record,
                    )?;
                    if admission == Admission::Apply {
                        Some(command)
                    } else {
                        answers[position] = Some(Answer::Session(admission));
                        None
                    }
                }
                (Some(command), _) => Some(command),
                (None, EntryPayload::Membership(m)) => {
                    tracing::info!(log_id = %entry.log_id(), membership = %m, "membership changed");
                    membership = Some(StoredMembershipOf::<TypeConfig>::new(
                        Some(entry.log_id()),
                        m.clone(),
                    ));
                    None
                }
                (None, _) => None,
            });
        }
        let (alarm_changes, alarms_after) = alarm_plan.finish();

        let mut extra = vec![(applied_key(), Some(encode(&last_applied)?))];
        if let Some(membership) = membership {
            extra.push((membership_key(), Some(encode(&membership)?)));
        }
        extra.extend(alarm_changes);
        let sessions = &self.sessions;
        let mut responses = self.keyspace.apply_with(&commands, |responses| {
            extra.extend(sessions.stored_changes(&record, responses)?);
            Ok(extra)
        })?;
        self.last_applied = Some(last_applied);
        assert_eq!(
            responses.len(),
            batch.len(),
            "one response per applied entry"
        );
        self.alarms.publish(alarms_after);
        for (position, answer) in answers.into_iter().enumerate() {
            match answer {
                None | Some(Answer::Session(Admission::Apply)) => {}
                Some(Answer::Session(Admission::Replay(response))) => {
                    responses[position] = response
                }
                Some(Answer::Session(Admission::ReplayInBatch(earlier))) => {
                    assert!(earlier < position, "a replay follows what it replays");
                    responses[position] = responses[earlier].clone();
                }
                // Nothing was applied: the current revision, and the refusal.
                Some(Answer::Session(Admission::Forgotten(error)) | Answer::Refused(error)) => {
                    responses[position].result = Err(error)
                }
                Some(Answer::Alarms(changed)) => {
                    responses[position].result = Ok(CommandOutput::Alarms(changed))
                }
            }
        }

        for ((_, responder), response) in batch.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Runs in the state machine task, between applies: the dump and the applied state are
        // taken at the same point of the log.
        let (meta, dump) = self.freeze().expect("freeze the key space for a snapshot");
        SnapshotBuilder {
            db: self.db.clone(),
            metrics: self.metrics.clone(),
            meta,
            dump: Some(dump),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        // A frozen dump (openraft's storage suite hands one member's snapshot to another) is
        // encoded first and dropped: restoring waits for every frozen dump of its key space.
        let dump = tokio::task::spawn_blocking(move || snapshot.into_bytes())
            .await
            .map_err(io::Error::other)??;
        // One batch: a crash leaves the key space and its applied state either before the
        // snapshot (the leader sends it again) or at it.
        self.restore_dump(meta, &dump)?;
        self.db.flush_async().await.map_err(sled_error)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        self.metrics.snapshots_installed.inc();
        Ok(())
    }

    /// The key space where the state machine stands: at or past the last snapshot built or
    /// installed (see the module's "Must never"). None before anything is applied.
    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        if self.last_applied.is_none() {
            return Ok(None);
        }
        let (meta, data) = self.freeze()?;
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::StoredMembership;
    use openraft::vote::RaftLeaderId;
    use serde::Serialize;

    use super::*;
    use crate::store::mvcc::tests::open_when_released;
    use crate::types::PutOp;
    use crate::types::RangeOp;

    /// The snapshot file as versions before the key space became the snapshot wrote it.
    #[derive(Serialize)]
    struct EarlierFile {
        meta: SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    }

    fn log_id(index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new(
            openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(2, 1),
            index,
        )
    }

    fn open_at(dir: &Path) -> StateMachine {
        let db = open_when_released(&dir.join("db"));
        let keyspace = Arc::new(
            KeySpace::open(
                db.open_tree("keyspace").expect("tree"),
                &crate::store::history_dir(dir),
            )
            .expect("open"),
        );
        StateMachine::open(
            db,
            keyspace,
            dir,
            StoreMetrics::default(),
            Alarms::default(),
        )
        .expect("open the state machine")
    }

    /// The encoded dump of a key space holding `key` = `value` (or nothing).
    fn dump_holding(entry: Option<(&[u8], &[u8])>) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("dir");
        let state_machine = open_at(dir.path());
        if let Some((key, value)) = entry {
            let put = Command::Put(PutOp {
                key: key.to_vec(),
                value: value.to_vec(),
                ..PutOp::default()
            });
            state_machine
                .keyspace
                .apply(&[Some(&put)], Vec::new())
                .expect("apply");
        }
        encode(&state_machine.keyspace.dump().expect("dump")).expect("encode")
    }

    fn write_earlier_file(dir: &Path, index: u64, data: Vec<u8>) {
        let folder = dir.join("snapshots");
        std::fs::create_dir_all(&folder).expect("folder");
        let file = EarlierFile {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(log_id(index)),
                last_membership: StoredMembership::default(),
            },
            data,
        };
        std::fs::write(folder.join("current.snap"), encode(&file).expect("encode")).expect("write");
        std::fs::write(folder.join("current.snap.3.tmp"), b"unfinished").expect("write");
    }

    fn value_of(state_machine: &StateMachine, key: &[u8]) -> Option<Vec<u8>> {
        let op = RangeOp {
            key: key.to_vec(),
            ..RangeOp::default()
        };
        let (result, _) = state_machine.keyspace.range(&op).expect("range");
        result.kvs.into_iter().next().map(|kv| kv.value)
    }

    #[test]
    fn an_earlier_versions_snapshot_file_is_installed_only_if_ahead_and_then_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let folder = dir.path().join("snapshots");

        // A crash between writing the file and restoring from it: the file is ahead.
        write_earlier_file(dir.path(), 7, dump_holding(Some((b"k", b"from the file"))));
        let state_machine = open_at(dir.path());
        assert_eq!(state_machine.last_applied, Some(log_id(7)));
        assert_eq!(
            value_of(&state_machine, b"k").as_deref(),
            Some(&b"from the file"[..])
        );
        assert!(
            !folder.exists(),
            "the earlier folder is removed once installed"
        );
        drop(state_machine);

        // A file behind the key space (the usual case) changes nothing.
        write_earlier_file(dir.path(), 5, dump_holding(None));
        let state_machine = open_at(dir.path());
        assert_eq!(state_machine.last_applied, Some(log_id(7)));
        assert_eq!(
            value_of(&state_machine, b"k").as_deref(),
            Some(&b"from the file"[..])
        );
        assert!(!folder.exists(), "the earlier folder is removed");
    }
}
