//! The run's report, written under its results folder:
//!
//! - `summary.txt`: the one line CI greps (`JEPSEN PASS ...` / `JEPSEN FAIL ...`), also printed last;
//! - `report.md`: seed and replay command, the fault schedule as it happened, per-workload
//!   verdicts and counts, anomalies (the minimal failing key history), crashes;
//! - `report.json`: the same, for tools;
//! - `history-<workload>.json`: every event, as recorded;
//! - `latency.svg`: every operation's latency over time, fault windows shaded;
//! - `nodes/n*.log`: the servers' logs (written there while they run).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::selftest::SelfTestReport;

use crate::history::Event;
use crate::history::EventKind;
use crate::history::Operation;
use crate::nemesis::Family;
use crate::nemesis::Planned;
use crate::nemesis::Window;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

pub fn counts(operations: &[Operation]) -> Counts {
    let mut counts = Counts::default();
    for operation in operations {
        match operation.outcome {
            EventKind::Ok => counts.ok += 1,
            EventKind::Fail => counts.fail += 1,
            EventKind::Info | EventKind::Invoke => counts.info += 1,
        }
    }
    counts
}

/// One workload's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub workload: String,
    /// "linearizable", "not-linearizable", "valid", "invalid" or "unknown".
    pub verdict: String,
    /// Whether this verdict fails the run.
    pub failed: bool,
    pub counts: Counts,
    pub details: serde_json::Value,
}

/// A plotted operation: (completion time s, latency ms, outcome, workload index).
pub struct Point {
    pub at_s: f64,
    pub latency_ms: f64,
    pub outcome: EventKind,
}

pub fn points(operations: &[Operation]) -> Vec<Point> {
    operations
        .iter()
        .filter_map(|o| {
            let end = o.completed_ns?;
            Some(Point {
                at_s: end as f64 / 1e9,
                latency_ms: (end.saturating_sub(o.call_ns)) as f64 / 1e6,
                outcome: o.outcome,
            })
        })
        .collect()
}

fn family_colour(family: Family) -> &'static str {
    match family {
        Family::Partition => "#e45756",
        Family::Kill => "#4c78a8",
        Family::Pause => "#b279a2",
        Family::Loss => "#f58518",
        Family::TransferStorm => "#54a24b",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency over time on a log scale (0.1 ms .. 10 s), one dot per operation, fault windows shaded
/// and labelled. Hand-written SVG: no plotting dependency to build in CI.
pub fn latency_svg(points: &[Point], windows: &[Window], end_s: f64, title: &str) -> String {
    let (width, height) = (1400.0, 560.0);
    let (left, right, top, bottom) = (70.0, 20.0, 60.0, 50.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let end_s = end_s.max(1.0);
    let x = |s: f64| left + plot_w * (s / end_s).clamp(0.0, 1.0);
    let (log_min, log_max) = (-1.0f64, 4.0f64);
    let y = |ms: f64| {
        let l = ms.max(0.1).log10().clamp(log_min, log_max);
        top + plot_h * (1.0 - (l - log_min) / (log_max - log_min))
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    for (i, window) in windows.iter().enumerate() {
        let (x0, x1) = (
            x(window.start_ns as f64 / 1e9),
            x(window.end_ns as f64 / 1e9),
        );
        let colour = family_colour(window.fault.family());
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="{colour}" fill-opacity="0.18"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            escape(&window.description)
        );
        let label_y = top - 6.0 - 12.0 * (i % 3) as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{x0:.1}" y="{label_y}" fill="{colour}" font-size="11">{}</text>"#,
            window.name
        );
    }
    // Axes and grid.
    for decade in -1..=4 {
        let ms = 10f64.powi(decade);
        let yy = y(ms);
        let label = if ms < 1.0 {
            format!("{ms} ms")
        } else if ms < 1000.0 {
            format!("{ms:.0} ms")
        } else {
            format!("{:.0} s", ms / 1000.0)
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0
        );
    }
    let step = if end_s > 600.0 {
        60.0
    } else if end_s > 120.0 {
        20.0
    } else {
        10.0
    };
    let mut tick = 0.0;
    while tick <= end_s {
        let xx = x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{}" y2="{}" stroke="#999"/><text x="{xx:.1}" y="{}" text-anchor="middle">{tick:.0}s</text>"##,
            top + plot_h,
            top + plot_h + 5.0,
            top + plot_h + 18.0
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    // Dots: at most ~40k, evenly thinned, so the file stays small enough to open.
    let stride = (points.len() / 40_000).max(1);
    for point in points.iter().step_by(stride) {
        let colour = match point.outcome {
            EventKind::Ok => "#1f77b4",
            EventKind::Fail => "#ff7f0e",
            _ => "#d62728",
        };
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{colour}" fill-opacity="0.55"/>"#,
            x(point.at_s),
            y(point.latency_ms)
        );
    }
    let legend_y = height - 12.0;
    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="{legend_y}"><tspan fill="#1f77b4">● ok</tspan>  <tspan fill="#ff7f0e">● fail</tspan>  <tspan fill="#d62728">● info (unknown)</tspan>   shaded: fault windows (hover for details); x: completion time since start; y: latency, log scale</text>"##
    );
    svg.push_str("</svg>\n");
    svg
}

pub fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

/// `YYYY-MM-DDTHH-MM-SSZ` for a UTC time (civil-from-days, proleptic Gregorian).
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Everything `report.md` and `report.json` say about one run.
#[derive(Serialize)]
pub struct RunReport<'a> {
    pub mode: &'a str,
    pub seed: u64,
    pub replay: &'a str,
    pub passed: bool,
    pub duration_s: f64,
    pub fault_time_s: f64,
    pub interrupted: bool,
    pub recovered: bool,
    pub nemesis_error: Option<&'a str>,
    pub schedule_planned: &'a [Planned],
    pub faults: &'a [Window],
    pub recovery: &'a [Recovery],
    pub workloads: &'a [WorkloadResult],
    pub self_test: Option<&'a SelfTestReport>,
    pub crashes: &'a [String],
    pub results_dir: &'a Path,
}

/// The one line CI reads: verdict, seed, faults, per-workload verdict and counts.
pub fn summary_line(run: &RunReport) -> String {
    let mut summary = format!(
        "JEPSEN {} mode={} seed={} duration={:.0}s faults={} fault_time={:.0}s",
        if run.passed { "PASS" } else { "FAIL" },
        run.mode,
        run.seed,
        run.duration_s,
        run.faults.len(),
        run.fault_time_s,
    );
    for result in run.workloads {
        let _ = write!(
            summary,
            " {}={}(ok={},fail={},info={})",
            result.workload,
            result.verdict,
            result.counts.ok,
            result.counts.fail,
            result.counts.info
        );
    }
    if let Some(s) = run.self_test {
        summary.push_str(if s.detected {
            " self-test=detected"
        } else {
            " self-test=NOT-DETECTED"
        });
    }
    let _ = write!(
        summary,
        " crashes={} recovered={}",
        run.crashes.len(),
        run.recovered
    );
    if run.interrupted {
        summary.push_str(" interrupted=true");
    }
    if let Some(e) = run.nemesis_error {
        let _ = write!(summary, " nemesis-error={e:?}");
    }
    let _ = write!(summary, " results={}", run.results_dir.display());
    summary
}

/// Writes report.json, report.md, summary.txt and latency.svg, points `latest` at the run's
/// folder, and returns the summary line.
pub fn write_run(run: &RunReport, operations: &[Operation]) -> Result<String, String> {
    let summary = summary_line(run);
    let dir = run.results_dir;
    let mut json = serde_json::to_value(run).map_err(|e| e.to_string())?;
    json["summary"] = serde_json::Value::String(summary.clone());
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    write(&dir.join("report.json"), &text)?;
    write(&dir.join("report.md"), &markdown(run, &summary))?;
    write(&dir.join("summary.txt"), &format!("{summary}\n"))?;
    let title = format!(
        "QuorumDB jepsen {} seed {} — latency of every operation",
        run.mode, run.seed
    );
    let svg = latency_svg(&points(operations), run.faults, run.duration_s, &title);
    write(&dir.join("latency.svg"), &svg)?;
    let latest = dir.with_file_name("latest");
    let _ = std::fs::remove_file(&latest);
    if let Some(name) = dir.file_name() {
        let _ = std::os::unix::fs::symlink(name, &latest);
    }
    Ok(summary)
}

pub fn write_history(path: &Path, events: &[Event]) -> Result<(), String> {
    let mut text = String::from("[\n");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            text.push_str(",\n");
        }
        text.push_str(&serde_json::to_string(event).map_err(|e| e.to_string())?);
    }
    text.push_str("\n]\n");
    write(path, &text)
}

fn markdown(run: &RunReport, summary: &str) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# QuorumDB jepsen run: {}\n\n",
        if run.passed { "PASS" } else { "FAIL" }
    ));
    md.push_str(&format!(
        "- mode: `{}`\n- seed: `{}`\n- replay: `{}`\n- duration: {:.1} s, fault time {:.1} s\n- recovered after heal: {}\n- crashes: {}\n- interrupted: {}\n\n",
        run.mode,
        run.seed,
        run.replay,
        run.duration_s,
        run.fault_time_s,
        run.recovered,
        if run.crashes.is_empty() { "none".to_string() } else { run.crashes.join("; ") },
        run.interrupted
    ));
    md.push('`');
    md.push_str(summary);
    md.push_str("`\n\n## Faults (as they happened; seconds since start)\n\n| start | end | fault | what | every node answering ok again after (s) |\n|---|---|---|---|---|\n");
    for (w, r) in run.faults.iter().zip(run.recovery) {
        let recovery: Vec<String> = r
            .node_recovery_s
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(s) => format!("n{} {s:.1}", i + 1),
                None => format!("n{} never", i + 1),
            })
            .collect();
        md.push_str(&format!(
            "| {:.1} | {:.1} | {} | {} | {} |\n",
            w.start_ns as f64 / 1e9,
            w.end_ns as f64 / 1e9,
            w.name,
            w.description,
            recovery.join(", ")
        ));
    }
    md.push_str("\n![latency](latency.svg)\n\n## Workloads\n\n| workload | verdict | ok | fail | info |\n|---|---|---|---|---|\n");
    for r in run.workloads {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.workload, r.verdict, r.counts.ok, r.counts.fail, r.counts.info
        ));
    }
    for r in run.workloads {
        md.push_str(&format!(
            "\n### {}\n\n```json\n{}\n```\n",
            r.workload,
            serde_json::to_string_pretty(&r.details).unwrap_or_default()
        ));
    }
    if let Some(s) = run.self_test {
        md.push_str(&format!(
            "\n## Self-test (must be NOT linearizable)\n\n{} — verdict {:?} on {} operations; serializable reads to the isolated follower {}.\n\nMinimal failing history of `{}`:\n\n```json\n{}\n```\n",
            if s.detected { "Detected" } else { "NOT DETECTED" },
            s.verdict,
            s.operations,
            s.follower,
            s.failing_key.as_deref().unwrap_or("-"),
            serde_json::to_string_pretty(&s.minimal_failing_history).unwrap_or_default()
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_are_calendar_dates() {
        assert_eq!(utc_stamp(0), "1970-01-01T00-00-00Z");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29T00-00-00Z");
        assert_eq!(utc_stamp(1_795_000_000), "2026-11-18T11-06-40Z");
    }
}

/// How long after a fault was healed each node answered an operation `ok` again.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub fault: String,
    pub healed_at_s: f64,
    /// Per node (n1..): seconds from the heal to its first `ok` answer to an operation invoked
    /// after the heal; None when it never answered before the run ended.
    pub node_recovery_s: Vec<Option<f64>>,
}

pub fn recoveries(operations: &[Operation], windows: &[Window], nodes: usize) -> Vec<Recovery> {
    windows
        .iter()
        .map(|window| {
            let node_recovery_s = (0..nodes)
                .map(|index| {
                    let name = format!("n{}", index + 1);
                    operations
                        .iter()
                        .filter(|o| {
                            o.outcome == EventKind::Ok
                                && o.node == name
                                && o.call_ns >= window.end_ns
                        })
                        .filter_map(|o| o.return_ns)
                        .min()
                        .map(|t| (t - window.end_ns) as f64 / 1e9)
                })
                .collect();
            Recovery {
                fault: window.name.clone(),
                healed_at_s: window.end_ns as f64 / 1e9,
                node_recovery_s,
            }
        })
        .collect()
}
