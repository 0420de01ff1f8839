//! What the clients did, as Jepsen records it: one `invoke` event when an operation starts and one
//! completion (`ok`, `fail`, `info`) when it ends, stamped with monotonic nanoseconds since the run
//! started, the client process and the node it was sent to. `info` means the outcome is unknown
//! (a timeout, a connection lost after sending, `leader changed`): the operation may or may not
//! have taken effect, and the checkers treat it that way. `fail` means it certainly did not.
//!
//! Must never: record an ambiguous write as `fail` (that would let the checker "prove" things that
//! are not true), or reorder events (the order of the vector is the order things happened).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One operation's arguments and, on an `ok` completion, its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Op {
    /// Register read; `value` is the result on `ok` (None: the key does not exist).
    Read {
        key: String,
        value: Option<u64>,
    },
    Write {
        key: String,
        value: u64,
    },
    /// Compare-and-set; `succeeded` is the result on `ok` (the Txn's compare held).
    Cas {
        key: String,
        expected: u64,
        new: u64,
        succeeded: Option<bool>,
    },
    /// Set workload: add one unique element.
    Add {
        element: u64,
    },
    /// Set workload: the final read of every element.
    ReadAll {
        elements: Option<Vec<u64>>,
    },
    /// Bank workload: read every account at once; `balances` is the result on `ok`.
    ReadAccounts {
        balances: Option<Vec<i64>>,
    },
    /// Bank workload: move `amount` between two accounts (a Txn guarded by mod revisions);
    /// `succeeded` is the result on `ok`.
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
        succeeded: Option<bool>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub process: u64,
    pub node: String,
    pub time_ns: u64,
    pub op: Op,
    /// Why a `fail` or `info` ended the operation (the gRPC status), for the reader.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// A completed operation: its invocation and completion paired up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub process: u64,
    pub node: String,
    /// The completion's op (carries the result on `ok`; the invocation's arguments otherwise).
    pub op: Op,
    pub outcome: EventKind,
    pub call_ns: u64,
    /// None while unknown: an `info` operation may take effect at any later time.
    pub return_ns: Option<u64>,
    /// When the client stopped waiting, whatever the outcome (for latency plots).
    pub completed_ns: Option<u64>,
    pub error: Option<String>,
}

/// Pairs invocations with completions by process (each process has at most one operation in
/// flight). An invocation never completed (the run stopped) becomes `info`.
pub fn operations(events: &[Event]) -> Vec<Operation> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut result: Vec<Operation> = Vec::new();
    for event in events {
        match event.kind {
            EventKind::Invoke => {
                open.insert(event.process, result.len());
                result.push(Operation {
                    process: event.process,
                    node: event.node.clone(),
                    op: event.op.clone(),
                    outcome: EventKind::Info,
                    call_ns: event.time_ns,
                    return_ns: None,
                    completed_ns: None,
                    error: Some("never completed".to_string()),
                });
            }
            kind => {
                if let Some(index) = open.remove(&event.process) {
                    let operation = &mut result[index];
                    operation.outcome = kind;
                    operation.op = event.op.clone();
                    operation.error = event.error.clone();
                    operation.return_ns = (kind != EventKind::Info).then_some(event.time_ns);
                    operation.completed_ns = Some(event.time_ns);
                }
            }
        }
    }
    result
}

/// A shared, append-only history with one clock for everyone in the run.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, kind: EventKind, process: u64, node: &str, op: Op, error: Option<String>) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        // The timestamp is taken under the lock, so the vector's order is the time order.
        let time_ns = self.now_ns();
        events.push(Event {
            kind,
            process,
            node: node.to_string(),
            time_ns,
            op,
            error,
        });
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
