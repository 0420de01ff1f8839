//! A linearizability checker for the register workloads: Wing & Gong's search with Lowe's
//! memoisation, as Porcupine implements it, split per key (a register per key is P-compositional:
//! the history is linearizable iff every key's sub-history is).
//!
//! Per key: every call and return becomes an entry in time order, in a doubly linked list. The
//! search walks the list; at a call it tries to linearize that operation now (the model must
//! accept it, and the pair (set of linearized operations, model state) must be new, which is
//! Lowe's cache). At a return whose call is still unlinearized it backtracks. An `info`
//! operation returns at +infinity, so it may be placed anywhere after its call, including after
//! everything (which is the same as never having happened). Failed operations and unanswered
//! reads are dropped: they constrain nothing.
//!
//! Must never: hang (a step budget turns a blow-up into `Unknown`), or call a history valid that
//! has no linearization (the unit tests below hold hand-made invalid histories).

use std::collections::BTreeMap;
use std::collections::HashSet;

use serde::Serialize;

use crate::history::EventKind;
use crate::history::Op;
use crate::history::Operation;

/// The register model's state: None while the key does not exist.
type State = Option<u64>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The step budget ran out before an answer: neither proven nor refuted.
    Unknown,
}

/// One operation as the search sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RegisterOp {
    call_ns: u64,
    /// u64::MAX for an `info` operation.
    return_ns: u64,
    step: Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Read(State),
    Write(u64),
    /// (expected, new, result): result None when the outcome is unknown.
    Cas(u64, u64, Option<bool>),
}

/// The model: the state after `step` from `state`, or None when the step is impossible there.
fn apply(state: State, step: Step) -> Option<State> {
    match step {
        Step::Read(value) => (value == state).then_some(state),
        Step::Write(value) => Some(Some(value)),
        Step::Cas(expected, new, Some(true)) => (state == Some(expected)).then_some(Some(new)),
        Step::Cas(expected, _, Some(false)) => (state != Some(expected)).then_some(state),
        // Unknown: it took effect iff the compare held at the point where it is placed.
        Step::Cas(expected, new, None) => Some(if state == Some(expected) {
            Some(new)
        } else {
            state
        }),
    }
}

fn register_op(operation: &Operation) -> Option<(String, RegisterOp)> {
    let return_ns = match operation.outcome {
        EventKind::Ok => operation.return_ns?,
        EventKind::Info => u64::MAX,
        EventKind::Fail | EventKind::Invoke => return None,
    };
    let (key, step) = match &operation.op {
        Op::Read { key, value } if operation.outcome == EventKind::Ok => (key, Step::Read(*value)),
        Op::Read { .. } => return None,
        Op::Write { key, value } => (key, Step::Write(*value)),
        Op::Cas {
            key,
            expected,
            new,
            succeeded,
        } => {
            let result = if operation.outcome == EventKind::Ok {
                *succeeded
            } else {
                None
            };
            (key, Step::Cas(*expected, *new, result))
        }
        _ => return None,
    };
    Some((
        key.clone(),
        RegisterOp {
            call_ns: operation.call_ns,
            return_ns,
            step,
        },
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct RegisterReport {
    pub verdict: Verdict,
    pub keys: usize,
    pub keys_unknown: Vec<String>,
    /// The first key found not linearizable, with a minimal sub-history that still is not.
    pub failing_key: Option<String>,
    pub minimal_failing_history: Vec<serde_json::Value>,
    pub max_steps_on_a_key: u64,
}

/// Checks every key's sub-history; `step_budget` bounds the search on each key.
pub fn check(operations: &[Operation], step_budget: u64) -> RegisterReport {
    let mut by_key: BTreeMap<String, Vec<(RegisterOp, &Operation)>> = BTreeMap::new();
    for operation in operations {
        if let Some((key, op)) = register_op(operation) {
            by_key.entry(key).or_default().push((op, operation));
        }
    }
    let mut report = RegisterReport {
        verdict: Verdict::Linearizable,
        keys: by_key.len(),
        keys_unknown: Vec::new(),
        failing_key: None,
        minimal_failing_history: Vec::new(),
        max_steps_on_a_key: 0,
    };
    for (key, entries) in &by_key {
        let ops: Vec<RegisterOp> = entries.iter().map(|(op, _)| op.clone()).collect();
        let (verdict, steps) = search(&ops, step_budget);
        report.max_steps_on_a_key = report.max_steps_on_a_key.max(steps);
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown => {
                report.keys_unknown.push(key.clone());
                if report.verdict == Verdict::Linearizable {
                    report.verdict = Verdict::Unknown;
                }
            }
            Verdict::NotLinearizable => {
                report.verdict = Verdict::NotLinearizable;
                if report.failing_key.is_none() {
                    let kept = minimise(&ops, step_budget);
                    report.failing_key = Some(key.clone());
                    report.minimal_failing_history =
                        kept.iter().map(|i| describe(entries[*i].1)).collect();
                }
            }
        }
    }
    report
}

fn describe(operation: &Operation) -> serde_json::Value {
    serde_json::json!({
        "process": operation.process,
        "node": operation.node,
        "outcome": operation.outcome,
        "op": operation.op,
        "call_ms": operation.call_ns as f64 / 1e6,
        "return_ms": operation.return_ns.map(|t| t as f64 / 1e6),
    })
}

/// Greedily drops operations while the rest stays not linearizable, keeping every write whose
/// value a kept read or compare still refers to (so the result reads as a story, not as "a read
/// of a value nobody wrote"). Returns the indexes kept.
fn minimise(ops: &[RegisterOp], step_budget: u64) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..ops.len()).collect();
    let mut position = 0;
    while position < kept.len() {
        let candidate = kept[position];
        let referenced = match ops[candidate].step {
            Step::Write(v) | Step::Cas(_, v, _) => kept.iter().any(|i| {
                *i != candidate
                    && match ops[*i].step {
                        Step::Read(Some(r)) => r == v,
                        Step::Cas(e, _, _) => e == v,
                        _ => false,
                    }
            }),
            Step::Read(_) => false,
        };
        if !referenced {
            let trial: Vec<RegisterOp> = kept
                .iter()
                .filter(|i| **i != candidate)
                .map(|i| ops[*i].clone())
                .collect();
            if search(&trial, step_budget).0 == Verdict::NotLinearizable {
                kept.remove(position);
                continue;
            }
        }
        position += 1;
    }
    kept
}

const NONE: usize = usize::MAX;

/// The WGL search over one key. Returns the verdict and the steps taken.
fn search(ops: &[RegisterOp], step_budget: u64) -> (Verdict, u64) {
    if ops.is_empty() {
        return (Verdict::Linearizable, 0);
    }
    // Entries: 2i is op i's call, 2i+1 its return. Sorted by time; at equal times calls first,
    // which only ever allows more overlap (the generous reading).
    let mut order: Vec<usize> = (0..ops.len() * 2).collect();
    order.sort_by_key(|e| {
        let op = &ops[e / 2];
        if e.is_multiple_of(2) {
            (op.call_ns, 0)
        } else {
            (op.return_ns, 1)
        }
    });
    // Doubly linked list over entry ids, with a head sentinel at index 2n.
    let head = ops.len() * 2;
    let mut next = vec![NONE; head + 1];
    let mut prev = vec![NONE; head + 1];
    let mut last = head;
    for &entry in &order {
        next[last] = entry;
        prev[entry] = last;
        last = entry;
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut steps: u64 = 0;
    let mut entry = next[head];
    while next[head] != NONE {
        steps += 1;
        if steps > step_budget {
            return (Verdict::Unknown, steps);
        }
        if entry == NONE {
            // Walked off the end without linearizing everything: only possible through
            // returns, which backtrack; treat defensively as a dead end.
            return (Verdict::NotLinearizable, steps);
        }
        if entry.is_multiple_of(2) {
            let op = entry / 2;
            let mut moved = false;
            if let Some(new_state) = apply(state, ops[op].step) {
                let mut candidate = linearized.clone();
                candidate[op / 64] |= 1 << (op % 64);
                if cache.insert((candidate.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    linearized = candidate;
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    moved = true;
                }
            }
            if !moved {
                entry = next[entry];
            }
        } else {
            // A return whose call is not linearized yet: every choice so far is wrong.
            let Some((call, previous_state)) = stack.pop() else {
                return (Verdict::NotLinearizable, steps);
            };
            let op = call / 2;
            state = previous_state;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    (Verdict::Linearizable, steps)
}

/// Removes a call entry and its return from the list (they stay linked to their neighbours so
/// `unlift` can put them back in place).
fn lift(next: &mut [usize], prev: &mut [usize], call: usize) {
    let ret = call + 1;
    next[prev[call]] = next[call];
    if next[call] != NONE {
        prev[next[call]] = prev[call];
    }
    next[prev[ret]] = next[ret];
    if next[ret] != NONE {
        prev[next[ret]] = prev[ret];
    }
}

fn unlift(next: &mut [usize], prev: &mut [usize], call: usize) {
    let ret = call + 1;
    next[prev[ret]] = ret;
    if next[ret] != NONE {
        prev[next[ret]] = ret;
    }
    next[prev[call]] = call;
    if next[call] != NONE {
        prev[next[call]] = call;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, outcome: EventKind, op: Op) -> Operation {
        Operation {
            process: call,
            node: "n1".into(),
            op,
            outcome,
            call_ns: call,
            return_ns: ret,
            completed_ns: ret,
            error: None,
        }
    }
    fn write(call: u64, ret: u64, value: u64) -> Operation {
        op(
            call,
            Some(ret),
            EventKind::Ok,
            Op::Write {
                key: "k".into(),
                value,
            },
        )
    }
    fn read(call: u64, ret: u64, value: Option<u64>) -> Operation {
        op(
            call,
            Some(ret),
            EventKind::Ok,
            Op::Read {
                key: "k".into(),
                value,
            },
        )
    }
    fn cas(call: u64, ret: u64, expected: u64, new: u64, succeeded: bool) -> Operation {
        op(
            call,
            Some(ret),
            EventKind::Ok,
            Op::Cas {
                key: "k".into(),
                expected,
                new,
                succeeded: Some(succeeded),
            },
        )
    }
    fn verdict(history: &[Operation]) -> Verdict {
        check(history, 1_000_000).verdict
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let history = [
            read(0, 1, None),
            write(2, 3, 1),
            read(4, 5, Some(1)),
            write(6, 7, 2),
            read(8, 9, Some(2)),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let history = [write(0, 1, 1), write(2, 3, 2), read(4, 5, Some(1))];
        let report = check(&history, 1_000_000);
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        assert_eq!(report.failing_key.as_deref(), Some("k"));
        // Minimal: both writes (the second makes the read stale, the first is read) and the read.
        assert_eq!(report.minimal_failing_history.len(), 3);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The write overlaps both reads: one sees the old value, the next the new one.
        let history = [
            write(0, 1, 1),
            write(2, 10, 2),
            read(3, 4, Some(1)),
            read(5, 6, Some(2)),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
        // But once a read has seen 2, a later read cannot see 1 again.
        let history = [
            write(0, 1, 1),
            write(2, 10, 2),
            read(3, 4, Some(2)),
            read(5, 6, Some(1)),
        ];
        assert_eq!(verdict(&history), Verdict::NotLinearizable);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_not_linearizable() {
        assert_eq!(
            verdict(&[write(0, 1, 1), read(2, 3, Some(9))]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let unknown = op(
            0,
            None,
            EventKind::Info,
            Op::Write {
                key: "k".into(),
                value: 5,
            },
        );
        // Seen much later: fine.
        assert_eq!(
            verdict(&[unknown.clone(), read(100, 101, Some(5))]),
            Verdict::Linearizable
        );
        // Never seen: fine too.
        assert_eq!(
            verdict(&[unknown.clone(), read(100, 101, None)]),
            Verdict::Linearizable
        );
        // But it cannot take effect before it was invoked.
        assert_eq!(
            verdict(&[
                read(0, 1, Some(5)),
                op(
                    2,
                    None,
                    EventKind::Info,
                    Op::Write {
                        key: "k".into(),
                        value: 5
                    }
                )
            ]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn a_failed_write_never_happened() {
        let failed = op(
            0,
            Some(1),
            EventKind::Fail,
            Op::Write {
                key: "k".into(),
                value: 5,
            },
        );
        assert_eq!(
            verdict(&[failed.clone(), read(2, 3, None)]),
            Verdict::Linearizable
        );
        assert_eq!(
            verdict(&[failed, read(2, 3, Some(5))]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn compare_and_set_results_must_match_the_state() {
        let ok = [
            write(0, 1, 1),
            cas(2, 3, 1, 2, true),
            read(4, 5, Some(2)),
            cas(6, 7, 1, 3, false),
        ];
        assert_eq!(verdict(&ok), Verdict::Linearizable);
        // The compare held (value 1) but the client was told it failed.
        let wrong = [
            write(0, 1, 1),
            cas(2, 3, 1, 2, false),
            read(4, 5, Some(1)),
            read(6, 7, Some(1)),
        ];
        assert_eq!(verdict(&wrong[..2]), Verdict::NotLinearizable);
        // Two successful CAS from the same expected value cannot both win.
        let double = [write(0, 1, 1), cas(2, 3, 1, 2, true), cas(4, 5, 1, 3, true)];
        assert_eq!(verdict(&double), Verdict::NotLinearizable);
    }

    #[test]
    fn an_unknown_compare_and_set_is_explored_both_ways() {
        let unknown_cas = op(
            2,
            None,
            EventKind::Info,
            Op::Cas {
                key: "k".into(),
                expected: 1,
                new: 2,
                succeeded: None,
            },
        );
        assert_eq!(
            verdict(&[write(0, 1, 1), unknown_cas.clone(), read(4, 5, Some(2))]),
            Verdict::Linearizable
        );
        assert_eq!(
            verdict(&[write(0, 1, 1), unknown_cas.clone(), read(4, 5, Some(1))]),
            Verdict::Linearizable
        );
        assert_eq!(
            verdict(&[
                write(0, 1, 1),
                unknown_cas,
                read(4, 5, Some(2)),
                read(6, 7, Some(1))
            ]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = vec![write(0, 1, 1), read(2, 3, Some(1))];
        history.push(op(
            0,
            Some(1),
            EventKind::Ok,
            Op::Write {
                key: "j".into(),
                value: 7,
            },
        ));
        history.push(op(
            2,
            Some(3),
            EventKind::Ok,
            Op::Read {
                key: "j".into(),
                value: None,
            },
        ));
        let report = check(&history, 1_000_000);
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        assert_eq!(report.failing_key.as_deref(), Some("j"));
        assert_eq!(report.keys, 2);
    }

    /// Histories produced by a real atomic register (each operation takes effect at a random
    /// instant inside its interval; some answers are lost and become `info`) are linearizable,
    /// whatever the overlap; changing one read to a value nobody wrote makes them not.
    #[test]
    fn random_histories_of_an_atomic_register_are_linearizable() {
        for seed in 0..300 {
            let mut rng = crate::rng::Rng::new(seed);
            let mut planned = Vec::new();
            for i in 0..(5 + rng.below(25)) {
                let call = rng.below(1000) * 10;
                let effect = call + 1 + rng.below(200);
                let ret = effect + 1 + rng.below(200);
                let kind = rng.below(3);
                planned.push((effect, call, ret, kind, i + 1, 1 + rng.below(i + 1)));
            }
            planned.sort();
            let mut state: Option<u64> = None;
            let mut history = Vec::new();
            for (_, call, ret, kind, value, expected) in planned {
                let lost = rng.chance(15);
                let (outcome, ret) = if lost {
                    (EventKind::Info, None)
                } else {
                    (EventKind::Ok, Some(ret))
                };
                let operation = match kind {
                    0 if !lost => Op::Read {
                        key: "k".into(),
                        value: state,
                    },
                    0 | 1 => {
                        state = Some(value);
                        Op::Write {
                            key: "k".into(),
                            value,
                        }
                    }
                    _ => {
                        let succeeded = state == Some(expected);
                        if succeeded {
                            state = Some(value);
                        }
                        Op::Cas {
                            key: "k".into(),
                            expected,
                            new: value,
                            succeeded: Some(succeeded),
                        }
                    }
                };
                history.push(op(call, ret, outcome, operation));
            }
            assert_eq!(
                verdict(&history),
                Verdict::Linearizable,
                "seed {seed}: {history:#?}"
            );
            if let Some(read) = history.iter_mut().find(|o| matches!(o.op, Op::Read { .. })) {
                read.op = Op::Read {
                    key: "k".into(),
                    value: Some(999_999),
                };
                assert_eq!(verdict(&history), Verdict::NotLinearizable, "seed {seed}");
            }
        }
    }

    #[test]
    fn the_step_budget_reports_unknown_instead_of_hanging() {
        // Many concurrent unknown writes and reads that force deep backtracking.
        let mut history = Vec::new();
        for i in 0..40 {
            history.push(op(
                i,
                None,
                EventKind::Info,
                Op::Write {
                    key: "k".into(),
                    value: i,
                },
            ));
        }
        for i in 0..40 {
            history.push(read(100 + 2 * i, 101 + 2 * i, Some(i % 7)));
        }
        assert_eq!(check(&history, 50).verdict, Verdict::Unknown);
    }
}
