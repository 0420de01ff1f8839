//! The set checker: unique elements are added under faults, then read once the cluster is healed.
//! An element acknowledged (`ok`) but absent is *lost*; an element present that no client ever
//! attempted is *unexpected*; an element whose add definitely failed but is present is
//! *revived*. An `info` add may be present or not. 0 lost is the bar.
//!
//! Must never: pass when the final read did not happen (the verdict is then `unknown`).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::history::EventKind;
use crate::history::Op;
use crate::history::Operation;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SetReport {
    /// "valid", "invalid" or "unknown" (no final read).
    pub verdict: &'static str,
    pub attempted: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub present: usize,
    /// Unknown adds that turned out to be present.
    pub recovered: usize,
    pub lost: Vec<u64>,
    pub unexpected: Vec<u64>,
    pub revived: Vec<u64>,
}

pub fn check(operations: &[Operation]) -> SetReport {
    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut final_read: Option<&Vec<u64>> = None;
    for operation in operations {
        match (&operation.op, operation.outcome) {
            (Op::Add { element }, outcome) => {
                attempted.insert(*element);
                match outcome {
                    EventKind::Ok => acknowledged.insert(*element),
                    EventKind::Fail => failed.insert(*element),
                    _ => unknown.insert(*element),
                };
            }
            (
                Op::ReadAll {
                    elements: Some(elements),
                },
                EventKind::Ok,
            ) => final_read = Some(elements),
            _ => {}
        }
    }
    let mut report = SetReport {
        verdict: "unknown",
        attempted: attempted.len(),
        acknowledged: acknowledged.len(),
        unknown: unknown.len(),
        present: 0,
        recovered: 0,
        lost: Vec::new(),
        unexpected: Vec::new(),
        revived: Vec::new(),
    };
    let Some(elements) = final_read else {
        return report;
    };
    let present: BTreeSet<u64> = elements.iter().copied().collect();
    report.present = present.len();
    report.recovered = unknown.intersection(&present).count();
    report.lost = acknowledged.difference(&present).copied().collect();
    report.unexpected = present.difference(&attempted).copied().collect();
    report.revived = failed.intersection(&present).copied().collect();
    let valid = report.lost.is_empty() && report.unexpected.is_empty() && report.revived.is_empty();
    report.verdict = if valid { "valid" } else { "invalid" };
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(element: u64, outcome: EventKind) -> Operation {
        Operation {
            process: 1,
            node: "n1".into(),
            op: Op::Add { element },
            outcome,
            call_ns: 0,
            return_ns: Some(1),
            completed_ns: Some(1),
            error: None,
        }
    }
    fn read_all(elements: &[u64]) -> Operation {
        Operation {
            process: 2,
            node: "n1".into(),
            op: Op::ReadAll {
                elements: Some(elements.to_vec()),
            },
            outcome: EventKind::Ok,
            call_ns: 2,
            return_ns: Some(3),
            completed_ns: Some(3),
            error: None,
        }
    }

    #[test]
    fn acknowledged_and_recovered_elements_pass() {
        let history = [
            add(1, EventKind::Ok),
            add(2, EventKind::Info),
            add(3, EventKind::Info),
            read_all(&[1, 2]),
        ];
        let report = check(&history);
        assert_eq!(report.verdict, "valid");
        assert_eq!(report.recovered, 1);
    }

    #[test]
    fn a_lost_acknowledged_element_fails() {
        let report = check(&[add(1, EventKind::Ok), add(2, EventKind::Ok), read_all(&[2])]);
        assert_eq!(report.verdict, "invalid");
        assert_eq!(report.lost, vec![1]);
    }

    #[test]
    fn unexpected_and_revived_elements_fail() {
        let report = check(&[add(1, EventKind::Fail), read_all(&[1, 9])]);
        assert_eq!(report.verdict, "invalid");
        assert_eq!(report.unexpected, vec![9]);
        assert_eq!(report.revived, vec![1]);
    }

    #[test]
    fn no_final_read_is_unknown() {
        assert_eq!(check(&[add(1, EventKind::Ok)]).verdict, "unknown");
    }
}
