//! The bank checker: transfers move money between accounts in one Txn each, so every read of all
//! accounts (one Range, one revision) must show the same total and no negative balance, whatever
//! the faults did.
//!
//! Must never: ignore a read with the wrong number of accounts (that is an anomaly too).

use serde::Serialize;

use crate::history::EventKind;
use crate::history::Op;
use crate::history::Operation;

#[derive(Debug, Clone, Serialize)]
pub struct BankReport {
    pub verdict: &'static str,
    pub reads: usize,
    pub transfers_ok: usize,
    pub transfers_refused: usize,
    pub transfers_unknown: usize,
    /// Up to ten bad reads: (time in ms, balances).
    pub bad_reads: Vec<(f64, Vec<i64>)>,
    pub bad_read_count: usize,
}

pub fn check(operations: &[Operation], accounts: usize, total: i64) -> BankReport {
    let mut report = BankReport {
        verdict: "valid",
        reads: 0,
        transfers_ok: 0,
        transfers_refused: 0,
        transfers_unknown: 0,
        bad_reads: Vec::new(),
        bad_read_count: 0,
    };
    for operation in operations {
        match (&operation.op, operation.outcome) {
            (
                Op::ReadAccounts {
                    balances: Some(balances),
                },
                EventKind::Ok,
            ) => {
                report.reads += 1;
                let sum: i64 = balances.iter().sum();
                if balances.len() != accounts || sum != total || balances.iter().any(|b| *b < 0) {
                    report.bad_read_count += 1;
                    if report.bad_reads.len() < 10 {
                        let at_ms = operation.return_ns.unwrap_or(0) as f64 / 1e6;
                        report.bad_reads.push((at_ms, balances.clone()));
                    }
                }
            }
            (Op::Transfer { succeeded, .. }, EventKind::Ok) => {
                if *succeeded == Some(true) {
                    report.transfers_ok += 1;
                } else {
                    report.transfers_refused += 1;
                }
            }
            (Op::Transfer { .. }, EventKind::Info) => report.transfers_unknown += 1,
            _ => {}
        }
    }
    if report.bad_read_count > 0 {
        report.verdict = "invalid";
    } else if report.reads == 0 {
        report.verdict = "unknown";
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(balances: &[i64]) -> Operation {
        Operation {
            process: 1,
            node: "n1".into(),
            op: Op::ReadAccounts {
                balances: Some(balances.to_vec()),
            },
            outcome: EventKind::Ok,
            call_ns: 0,
            return_ns: Some(1),
            completed_ns: Some(1),
            error: None,
        }
    }

    #[test]
    fn reads_with_the_constant_total_pass() {
        assert_eq!(
            check(&[read(&[10, 10]), read(&[5, 15])], 2, 20).verdict,
            "valid"
        );
    }

    #[test]
    fn a_wrong_total_a_negative_balance_or_a_missing_account_fails() {
        assert_eq!(check(&[read(&[10, 11])], 2, 20).verdict, "invalid");
        assert_eq!(check(&[read(&[-1, 21])], 2, 20).verdict, "invalid");
        assert_eq!(check(&[read(&[20])], 2, 20).verdict, "invalid");
    }
}
