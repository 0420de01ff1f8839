//! Checkers: each turns a workload's history into a verdict a person and CI can read.
//!
//! - [`linearizable`]: register histories (WGL search, per key).
//! - [`set`]: every acknowledged add is in the final read; nothing appears that was not attempted.
//! - [`bank`]: every read of all accounts sums to the constant total, no balance is negative.

pub mod bank;
pub mod linearizable;
pub mod set;
