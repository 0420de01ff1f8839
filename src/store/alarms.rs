//! Alarms (etcd's NOSPACE and CORRUPT): cluster-wide state changed through the log
//! ([`Command::Alarm`](crate::types::Command::Alarm)), kept in the key space tree as extra
//! entries (so in snapshots), and read by the API (Alarm GET, Status errors) through a shared
//! in-memory copy.
//!
//! While any NOSPACE alarm is raised, the state machine refuses every command that may add data
//! (Put, Txn with a put): deterministic on every replica. Reads, deletes and compactions still
//! run, which is how an operator frees space before disarming.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::RwLock;

use super::mvcc::EXTRA_PREFIX;
use super::mvcc::ExtraChanges;
use super::mvcc::KeySpace;
use crate::types::AlarmKind;
use crate::types::NodeId;

const ALARM_TAG: &[u8] = b"alarm/";

fn prefix() -> Vec<u8> {
    let mut key = vec![EXTRA_PREFIX];
    key.extend_from_slice(ALARM_TAG);
    key
}

fn kind_byte(kind: AlarmKind) -> u8 {
    match kind {
        AlarmKind::NoSpace => 1,
        AlarmKind::Corrupt => 2,
    }
}

fn key(member: NodeId, kind: AlarmKind) -> Vec<u8> {
    let mut key = prefix();
    key.extend_from_slice(&member.to_be_bytes());
    key.push(kind_byte(kind));
    key
}

/// The raised alarms, shared between the state machine (which changes them) and readers.
#[derive(Clone, Default, Debug)]
pub struct Alarms {
    raised: Arc<RwLock<BTreeSet<(NodeId, AlarmKind)>>>,
}

impl Alarms {
    /// Replaces the in-memory copy with what the key space holds.
    pub(crate) fn reload(&self, keyspace: &KeySpace) -> io::Result<()> {
        let prefix = prefix();
        let mut raised = BTreeSet::new();
        for (key, _) in keyspace.scan_extra(&prefix)? {
            let rest = &key[prefix.len()..];
            if rest.len() != 9 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed alarm key {key:?}"),
                ));
            }
            let member = NodeId::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let kind = match rest[8] {
                1 => AlarmKind::NoSpace,
                2 => AlarmKind::Corrupt,
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown alarm kind {other}"),
                    ));
                }
            };
            raised.insert((member, kind));
        }
        *self.raised.write().expect("alarms lock") = raised;
        Ok(())
    }

    pub fn list(&self) -> Vec<(NodeId, AlarmKind)> {
        self.raised
            .read()
            .expect("alarms lock")
            .iter()
            .copied()
            .collect()
    }

    pub fn is_raised(&self, member: NodeId, kind: AlarmKind) -> bool {
        self.raised
            .read()
            .expect("alarms lock")
            .contains(&(member, kind))
    }

    pub fn no_space(&self) -> bool {
        self.raised
            .read()
            .expect("alarms lock")
            .iter()
            .any(|(_, kind)| *kind == AlarmKind::NoSpace)
    }
}

/// The alarm changes of one batch, planned in log order on a working copy.
pub(crate) struct AlarmPlan {
    working: BTreeSet<(NodeId, AlarmKind)>,
    changes: ExtraChanges,
}

impl AlarmPlan {
    pub(crate) fn new(alarms: &Alarms) -> Self {
        AlarmPlan {
            working: alarms.raised.read().expect("alarms lock").clone(),
            changes: Vec::new(),
        }
    }

    pub(crate) fn no_space(&self) -> bool {
        self.working
            .iter()
            .any(|(_, kind)| *kind == AlarmKind::NoSpace)
    }

    /// Applies one alarm command to the working copy; returns what it changed.
    pub(crate) fn change(
        &mut self,
        activate: bool,
        member: NodeId,
        kind: AlarmKind,
    ) -> Vec<(NodeId, AlarmKind)> {
        let changed = if activate {
            self.working.insert((member, kind))
        } else {
            self.working.remove(&(member, kind))
        };
        if !changed {
            return Vec::new();
        }
        self.changes
            .push((key(member, kind), activate.then(Vec::new)));
        vec![(member, kind)]
    }

    /// The extra entries to write, and the set to publish once they are written.
    pub(crate) fn finish(self) -> (ExtraChanges, BTreeSet<(NodeId, AlarmKind)>) {
        (self.changes, self.working)
    }
}

impl Alarms {
    pub(crate) fn publish(&self, raised: BTreeSet<(NodeId, AlarmKind)>) {
        *self.raised.write().expect("alarms lock") = raised;
    }
}
