//! The Raft state machine: applies committed entries to the MVCC key space and makes snapshots.
//!
//! ```text
//! committed entries --admit numbered writes (ClientSessions: apply / replay / forgotten)
//!                   --apply--> KeySpace::apply_with (data + last_applied + membership + client
//!                              sessions, one batch)
//!                                   |
//! try_create_snapshot_builder: KeySpace::freeze_dump (in the state machine task, so no apply
//!                                   |          interleaves: applied writes to sled, meta copied)
//! build_snapshot (concurrent with apply): flush the db, encode the frozen dump (history read
//!                                          from sled up to the frozen revision), write
//!                                          snapshots/current.snap
//! install_snapshot: keep the file as the current snapshot, then KeySpace::restore (one batch)
//! ```
//!
//! Must never: answer a client before its entry is applied; report a snapshot whose state is not
//! durable in the key space (the log before it is purged once it is reported).

use std::io;
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
use super::mvcc::FrozenDump;
use super::mvcc::KeySpace;
use super::snapshot_file::SnapshotFile;
use super::snapshot_file::SnapshotFiles;
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
    snapshots: SnapshotFiles,
    /// In memory as well as in the key space: checked on every apply without a read.
    last_applied: Option<LogIdOf<TypeConfig>>,
    /// Index over the client sessions stored in the key space (exactly-once writes).
    sessions: ClientSessions,
    /// Raised alarms, shared with readers.
    alarms: Alarms,
    metrics: StoreMetrics,
}

impl StateMachine {
    pub(crate) fn open(
        db: sled::Db,
        keyspace: Arc<KeySpace>,
        snapshot_dir: PathBuf,
        metrics: StoreMetrics,
        alarms: Alarms,
    ) -> io::Result<Self> {
        let mut state_machine = StateMachine {
            db,
            keyspace,
            snapshots: SnapshotFiles::open(snapshot_dir)?,
            last_applied: None,
            sessions: ClientSessions::default(),
            alarms,
            metrics,
        };
        state_machine.last_applied = state_machine.read_applied_state()?.0;
        state_machine.sessions = ClientSessions::load(&state_machine.keyspace)?;
        state_machine.alarms.reload(&state_machine.keyspace)?;
        Ok(state_machine)
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

/// Freezes the key space when created (inside the state machine task, between applies) and does
/// the slow part, flushing, encoding and writing the file, in `build_snapshot`, concurrently with
/// apply and reads.
pub struct SnapshotBuilder {
    db: sled::Db,
    metrics: StoreMetrics,
    snapshots: SnapshotFiles,
    meta: SnapshotMetaOf<TypeConfig>,
    /// The key space at `meta.last_log_id`, to be encoded; taken by `build_snapshot`.
    dump: Option<FrozenDump>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, Vec<u8>>> {
        let dump = self
            .dump
            .take()
            .ok_or_else(|| io::Error::other("a snapshot builder builds once"))?;
        // The key space must hold at least this state durably before openraft purges the log
        // behind the snapshot; the flush covers every tree of the db.
        self.db.flush_async().await.map_err(sled_error)?;
        let meta = self.meta.clone();
        let snapshots = self.snapshots.clone();
        let file = tokio::task::spawn_blocking(move || {
            let data = dump.encode()?;
            // Compactions may remove history again.
            drop(dump);
            let file = SnapshotFile { meta, data };
            snapshots.save(&file).map(|_| file)
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?file.meta.last_log_id, bytes = file.data.len(), "built snapshot");
        self.metrics.snapshots_built.inc();
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta: file.meta,
            snapshot: file.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
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
            commands.push(match &entry.payload {
                // Refused before a numbered write is admitted: refused is not applied, so a
                // retry after the alarm is cleared runs as a new write.
                EntryPayload::Normal(command)
                    if command.may_add_data() && alarm_plan.no_space() =>
                {
                    answers[position] = Some(Answer::Refused(KvError::NoSpace));
                    None
                }
                EntryPayload::Normal(Command::Alarm {
                    activate,
                    member,
                    alarm,
                }) => {
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
                EntryPayload::Normal(command @ Command::Numbered { write, .. }) => {
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
                EntryPayload::Normal(command) => Some(command),
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    tracing::info!(log_id = %entry.log_id(), membership = %m, "membership changed");
                    membership = Some(StoredMembershipOf::<TypeConfig>::new(
                        Some(entry.log_id()),
                        m.clone(),
                    ));
                    None
                }
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
        let (last_log_id, last_membership) = self
            .read_applied_state()
            .expect("read applied state for a snapshot");
        // Every applied write goes to sled here, which the db flush in build_snapshot makes
        // durable; the history is read from sled there, outside this task.
        let dump = self
            .keyspace
            .freeze_dump()
            .expect("freeze the key space for a snapshot");
        SnapshotBuilder {
            db: self.db.clone(),
            metrics: self.metrics.clone(),
            snapshots: self.snapshots.clone(),
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id,
                last_membership,
            },
            dump: Some(dump),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> io::Result<()> {
        let dump: Vec<(Vec<u8>, Vec<u8>)> = decode(&snapshot)?;
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
        // The file first: if a crash comes between the two, the restart finds a snapshot newer
        // than the key space and installs it again, instead of a key space ahead of every
        // snapshot on disk with the log behind it already purged.
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot,
        };
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.save(&file))
            .await
            .map_err(io::Error::other)??;
        self.keyspace.restore(entries)?;
        self.last_applied = meta.last_log_id;
        // The snapshot's client sessions replace ours, as its data replaces our data.
        self.sessions = ClientSessions::load(&self.keyspace)?;
        self.alarms.reload(&self.keyspace)?;
        self.db.flush_async().await.map_err(sled_error)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        self.metrics.snapshots_installed.inc();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>> {
        let snapshots = self.snapshots.clone();
        let file = tokio::task::spawn_blocking(move || snapshots.load())
            .await
            .map_err(io::Error::other)??;
        Ok(file.map(|file| SnapshotOf::<TypeConfig, Vec<u8>> {
            meta: file.meta,
            snapshot: file.data,
        }))
    }
}
