//! etcd's duplicate-key rule for transactions: among the operations that may run together, no
//! key is put twice and no put falls inside a delete range, across nesting levels. Puts in the
//! success and failure branches of one nested txn may overlap: only one branch runs.

use std::collections::BTreeSet;

use crate::api::error::ApiError;
use crate::types::DeleteOp;
use crate::types::TxnOp;
use crate::types::TxnRequestOp;

/// A deleted interval `[start, end)`; `end == None` means "to the end of the key space".
#[derive(Clone)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(op: &DeleteOp) -> Interval {
        if op.range_end.is_empty() {
            let mut end = op.key.clone();
            end.push(0);
            Interval {
                start: op.key.clone(),
                end: Some(end),
            }
        } else if op.range_end == [0] {
            Interval {
                start: op.key.clone(),
                end: None,
            }
        } else {
            Interval {
                start: op.key.clone(),
                end: Some(op.range_end.clone()),
            }
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|end| key < end.as_slice())
    }
}

fn deleted(deletes: &[Interval], key: &[u8]) -> bool {
    deletes.iter().any(|interval| interval.contains(key))
}

/// Returns the puts and deletes of `ops` (one branch), or the duplicate-key error.
fn check_ops(ops: &[TxnRequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Interval>), ApiError> {
    let mut deletes: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            TxnRequestOp::Delete(d) => Some(Interval::of(d)),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        match op {
            TxnRequestOp::Txn(nested) => {
                let (puts_then, deletes_then) = check_ops(&nested.success)?;
                let (puts_else, deletes_else) = check_ops(&nested.failure)?;
                for key in &puts_then {
                    if puts.contains(key) || deleted(&deletes, key) {
                        return Err(ApiError::DuplicateKey);
                    }
                    puts.insert(key.clone());
                }
                for key in puts_else {
                    if (puts.contains(&key) && !puts_then.contains(&key)) || deleted(&deletes, &key)
                    {
                        return Err(ApiError::DuplicateKey);
                    }
                    puts.insert(key);
                }
                deletes.extend(deletes_then);
                deletes.extend(deletes_else);
            }
            TxnRequestOp::Put(put) => {
                if puts.contains(&put.key) || deleted(&deletes, &put.key) {
                    return Err(ApiError::DuplicateKey);
                }
                puts.insert(put.key.clone());
            }
            TxnRequestOp::Range(_) | TxnRequestOp::Delete(_) => {}
        }
    }
    Ok((puts, deletes))
}

pub fn check_txn(txn: &TxnOp) -> Result<(), ApiError> {
    check_ops(&txn.success)?;
    check_ops(&txn.failure)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PutOp;

    fn put(key: &[u8]) -> TxnRequestOp {
        TxnRequestOp::Put(PutOp {
            key: key.to_vec(),
            ..PutOp::default()
        })
    }

    fn delete(key: &[u8], range_end: &[u8]) -> TxnRequestOp {
        TxnRequestOp::Delete(DeleteOp {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            prev_kv: false,
        })
    }

    fn txn(success: Vec<TxnRequestOp>, failure: Vec<TxnRequestOp>) -> TxnOp {
        TxnOp {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn same_key_put_twice_in_one_branch_is_duplicate() {
        assert_eq!(
            check_txn(&txn(vec![put(b"a"), put(b"a")], vec![])),
            Err(ApiError::DuplicateKey)
        );
    }

    #[test]
    fn same_key_in_success_and_failure_is_allowed() {
        assert_eq!(check_txn(&txn(vec![put(b"a")], vec![put(b"a")])), Ok(()));
    }

    #[test]
    fn put_inside_delete_range_is_duplicate_in_any_order() {
        assert_eq!(
            check_txn(&txn(vec![delete(b"a", b"c"), put(b"b")], vec![])),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put(b"b"), delete(b"a", b"c")], vec![])),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put(b"x"), delete(b"a", &[0])], vec![])),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put(b"c"), delete(b"a", b"c")], vec![])),
            Ok(())
        );
    }

    #[test]
    fn overlapping_deletes_are_allowed() {
        assert_eq!(
            check_txn(&txn(vec![delete(b"a", b"z"), delete(b"b", b"c")], vec![])),
            Ok(())
        );
    }

    #[test]
    fn nested_put_conflicts_with_outer_put_but_branches_may_overlap() {
        let nested = TxnRequestOp::Txn(txn(vec![put(b"k")], vec![put(b"k")]));
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![])), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![put(b"k"), nested], vec![])),
            Err(ApiError::DuplicateKey)
        );
    }

    #[test]
    fn nested_delete_conflicts_with_later_outer_put() {
        let nested = TxnRequestOp::Txn(txn(vec![delete(b"k", b"")], vec![]));
        assert_eq!(
            check_txn(&txn(vec![nested, put(b"k")], vec![])),
            Err(ApiError::DuplicateKey)
        );
    }
}
