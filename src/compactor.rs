//! Automatic compaction (etcd's `--auto-compaction-mode` / `--auto-compaction-retention`): the
//! leader proposes `Compact` so the history does not grow without bound.
//!
//! ```text
//! revision mode (retention N):  every REVISION_MODE_CHECK, compact to revision - N
//! periodic mode (retention D):  sample the revision every D/10; compact to the newest sample
//!                               at least D old (history younger than D is kept)
//! ```
//!
//! Only the leader proposes (followers sample too, so a new leader can compact at once). A
//! compaction that fails (leader change, compacted already) is simply tried at the next tick.
//! Must never: compact beyond the current revision or below the current compact revision.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::Consensus;
use crate::store::KvReader;
use crate::types::Command;

/// How often revision mode checks (etcd's is 5 minutes).
pub const REVISION_MODE_CHECK: Duration = Duration::from_secs(300);

/// Periodic mode samples the revision this many times per retention period (as etcd does).
pub const PERIODIC_SAMPLES_PER_RETENTION: u32 = 10;

/// What `--auto-compaction-mode` and `--auto-compaction-retention` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this many revisions of history.
    Revision(i64),
    /// Keep this much time of history.
    Periodic(Duration),
}

impl AutoCompaction {
    /// Parses etcd's flags: `periodic` takes a duration (`1h`, `30m`, `90s`) or a number of
    /// hours (`1`, `0.5`); `revision` takes a count. `0` turns it off.
    pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
        let retention = retention.trim();
        if retention.is_empty() || retention == "0" {
            return Ok(AutoCompaction::Off);
        }
        match mode {
            "revision" => retention
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(AutoCompaction::Revision)
                .ok_or_else(|| {
                    format!("--auto-compaction-retention {retention:?}: revision mode keeps a positive number of revisions")
                }),
            "periodic" => {
                let (number, unit_secs) = match retention.char_indices().last() {
                    Some((i, 'h')) => (&retention[..i], 3600.0),
                    Some((i, 'm')) => (&retention[..i], 60.0),
                    Some((i, 's')) => (&retention[..i], 1.0),
                    _ => (retention, 3600.0),
                };
                number
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .map(|n| AutoCompaction::Periodic(Duration::from_secs_f64(n * unit_secs)))
                    .ok_or_else(|| {
                        format!("--auto-compaction-retention {retention:?}: periodic mode takes a duration like 1h, 30m, 90s or a number of hours")
                    })
            }
            other => Err(format!(
                "--auto-compaction-mode must be periodic or revision, not {other:?}"
            )),
        }
    }
}

/// Revision mode's target: keep `keep` revisions of history.
pub fn revision_target(current: i64, compacted: i64, keep: i64) -> Option<i64> {
    let target = current - keep;
    (target > compacted && target > 0).then_some(target)
}

/// Periodic mode's target: the newest sample at least `retention` old, dropping older samples.
pub fn periodic_target(
    samples: &mut VecDeque<(Instant, i64)>,
    now: Instant,
    retention: Duration,
    compacted: i64,
) -> Option<i64> {
    let mut target = None;
    while let Some(&(at, revision)) = samples.front() {
        if now.saturating_duration_since(at) < retention {
            break;
        }
        target = Some(revision);
        samples.pop_front();
    }
    target.filter(|revision| *revision > compacted)
}

/// Runs until `stopped`: proposes compactions on the leader as `policy` says.
pub async fn run(
    policy: AutoCompaction,
    consensus: Consensus,
    reader: KvReader,
    mut stopped: watch::Receiver<bool>,
) {
    let tick = match policy {
        AutoCompaction::Off => return,
        AutoCompaction::Revision(_) => REVISION_MODE_CHECK,
        AutoCompaction::Periodic(retention) => retention / PERIODIC_SAMPLES_PER_RETENTION,
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let (current, compacted) = (reader.revision(), reader.compact_revision());
        let target = match policy {
            AutoCompaction::Off => None,
            AutoCompaction::Revision(keep) => revision_target(current, compacted, keep),
            AutoCompaction::Periodic(retention) => {
                samples.push_back((Instant::now(), current));
                periodic_target(&mut samples, Instant::now(), retention, compacted)
            }
        };
        let is_leader = consensus
            .leader()
            .is_some_and(|(leader, _)| leader == consensus.id);
        if let (Some(revision), true) = (target, is_leader) {
            match consensus.write(Command::Compact { revision }).await {
                Ok(response) if response.result.is_ok() => {
                    tracing::info!(revision, "auto-compaction: compacted");
                }
                Ok(response) => {
                    tracing::debug!(revision, result = ?response.result, "auto-compaction skipped")
                }
                Err(error) => {
                    tracing::warn!(revision, %error, "auto-compaction failed; will retry")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_parse_like_etcds() {
        assert_eq!(
            AutoCompaction::parse("periodic", "0"),
            Ok(AutoCompaction::Off)
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "1"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "2s"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(2)))
        );
        assert_eq!(
            AutoCompaction::parse("revision", "1000"),
            Ok(AutoCompaction::Revision(1000))
        );
        assert!(AutoCompaction::parse("revision", "1h").is_err());
        assert!(AutoCompaction::parse("periodic", "soon").is_err());
        assert!(AutoCompaction::parse("hourly", "1").is_err());
    }

    #[test]
    fn revision_mode_keeps_the_newest_revisions() {
        assert_eq!(revision_target(1500, 0, 1000), Some(500));
        assert_eq!(revision_target(1500, 500, 1000), None, "already there");
        assert_eq!(
            revision_target(800, 0, 1000),
            None,
            "not enough history yet"
        );
    }

    #[test]
    fn periodic_mode_compacts_to_the_newest_sample_older_than_the_retention() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut samples: VecDeque<(Instant, i64)> = (0..5)
            .map(|i| (start + second * i, 10 * i as i64 + 10))
            .collect();
        // At start+3.5s with 2 s retention: samples at 0 s and 1 s are old enough.
        let now = start + Duration::from_millis(3500);
        assert_eq!(periodic_target(&mut samples, now, 2 * second, 0), Some(20));
        assert_eq!(samples.len(), 3, "used samples are dropped");
        assert_eq!(periodic_target(&mut samples, now, 2 * second, 0), None);
        let later = start + Duration::from_secs(10);
        assert_eq!(
            periodic_target(&mut samples, later, 2 * second, 50),
            None,
            "below compacted"
        );
    }
}
