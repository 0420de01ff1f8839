//! The status page in a real browser: Debian's headless chromium loads a member's page from a
//! live three-node cluster, lets the page's script fetch `/status` and render it, and the DOM it
//! produces must show the leader the cluster agrees on (summary line, member table, ring), as
//! seen from a follower and from the leader. A screenshot of the leader's page is kept under
//! the target directory for a person to look at.
//!
//! Needs `chromium` on PATH: `./scripts/test.sh` installs it (CI runs exactly that script);
//! elsewhere `apt-get install -y chromium`. Without it the test fails instead of skipping, so a
//! passing run always means a browser really ran the page's script.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on one chromium run; a cold start and render take about 1.5 s here.
const CHROMIUM_RUN_MAX: Duration = Duration::from_secs(60);
/// Virtual time the page may run before chromium dumps or captures it. Virtual time only moves
/// on while nothing is pending, so the script's first fetch of `/status` (and its render) always
/// lands inside this budget, however slow the machine; without it the DOM may be dumped at
/// "loading…".
const VIRTUAL_TIME_BUDGET_MS: u64 = 5000;
/// The rendered page makes a PNG of about 60 KB at 1200x800; a blank or broken capture is far
/// smaller.
const SCREENSHOT_BYTES_MIN: usize = 10 * 1024;
const SCREENSHOT_WIDTH: u32 = 1200;
const SCREENSHOT_HEIGHT: u32 = 800;
const PNG_MAGIC: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// The browser binary, or a failure that says how to get it.
fn chromium_program() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromium"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed, and this test needs a real browser: run \
                 ./scripts/test.sh (it installs chromium; CI runs it) or \
                 `apt-get install -y chromium` (Debian)"
            )
        })
}

/// Runs headless chromium on `url` with `args` and a fresh profile under `scratch`; returns
/// its standard output. Past [`CHROMIUM_RUN_MAX`] its whole process group (browser, renderer,
/// GPU and utility processes) is killed and the test fails.
async fn run_chromium(program: &Path, scratch: &Path, args: &[String], url: &str) -> String {
    let run = tempfile::tempdir_in(scratch).expect("a directory for this run");
    let stdout_path = run.path().join("stdout");
    let stderr_path = run.path().join("stderr");
    let mut child = tokio::process::Command::new(program)
        .args([
            "--headless=new",
            // Root in a container has no usable sandbox.
            "--no-sandbox",
            "--disable-gpu",
            // Containers often have a 64 MB /dev/shm, too small for the renderer.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            run.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .args(args)
        .arg(url)
        // Its own process group, so a hung run can be ended with all of its children.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = match tokio::time::timeout(CHROMIUM_RUN_MAX, child.wait()).await {
        Ok(status) => status.expect("wait for chromium"),
        Err(_) => {
            // The browser is not reaped yet, so its process group id is still ours.
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            let _ = child.kill().await;
            panic!(
                "chromium {args:?} {url} did not finish within {CHROMIUM_RUN_MAX:?}; stderr:\n{}",
                stderr()
            );
        }
    };
    assert!(
        status.success(),
        "chromium {args:?} {url} failed ({status}); stderr:\n{}",
        stderr()
    );
    std::fs::read_to_string(&stdout_path).expect("chromium's output is UTF-8")
}

/// The markup inside the element that opens with `opening` (its tag and attributes, verbatim)
/// up to the first `closing` after it.
fn inner<'a>(dom: &'a str, opening: &str, closing: &str) -> &'a str {
    let start = dom
        .find(opening)
        .unwrap_or_else(|| panic!("{opening} not in the page:\n{dom}"))
        + opening.len();
    let length = dom[start..]
        .find(closing)
        .unwrap_or_else(|| panic!("{opening} is not closed by {closing}:\n{dom}"));
    &dom[start..start + length]
}

/// The member table's rows, each the text of its cells (the page builds plain `<td>` cells).
fn member_rows(dom: &str) -> Vec<Vec<String>> {
    inner(dom, r#"<tbody id="members">"#, "</tbody>")
        .split("</tr>")
        .filter(|row| row.contains("<td>"))
        .map(|row| {
            row.split("<td>")
                .skip(1)
                .map(|cell| {
                    let cell = cell.split("</td>").next().unwrap_or_default();
                    // The lag bar cell holds only markup, no text.
                    if cell.starts_with('<') {
                        String::new()
                    } else {
                        cell.to_string()
                    }
                })
                .collect()
        })
        .collect()
}

/// Checks a dumped page served by member `viewer` shows `cluster`'s leader `leader`.
fn check_page_shows_leader(cluster: &Cluster, dom: &str, viewer: usize, leader: usize) {
    let leader_node = &cluster.nodes[leader];
    let viewer_role = if viewer == leader {
        "leader"
    } else {
        "follower"
    };
    assert_eq!(
        inner(dom, r#"<span id="who">"#, "</span>"),
        format!("· {} ({viewer_role})", cluster.nodes[viewer].name),
        "the heading names the member serving the page"
    );
    let summary = inner(dom, r#"<div class="sub" id="summary">"#, "</div>");
    assert!(
        summary.contains(&format!(" · leader {} · ", leader_node.name)),
        "the summary names leader {}: {summary:?}",
        leader_node.name
    );

    let rows = member_rows(dom);
    assert_eq!(
        rows.len(),
        cluster.nodes.len(),
        "one row per member: {rows:?}"
    );
    for node in &cluster.nodes {
        let label = format!("{} ({:x})", node.name, node.id);
        let row = rows
            .iter()
            .find(|row| row[0] == label)
            .unwrap_or_else(|| panic!("no row {label:?} in {rows:?}"));
        let expected_role = if node.id == leader_node.id {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(row[1], expected_role, "{label}'s role in {rows:?}");
        // Lag is known only on the leader: numbers there, dashes elsewhere.
        let lag = &row[3];
        if viewer == leader {
            assert!(lag.parse::<u64>().is_ok(), "{label}'s lag {lag:?}");
        } else {
            assert_eq!(lag, "–", "{label}'s lag on a follower's page");
        }
    }

    // The ring fills exactly one circle, the leader's, in the leader colour.
    let ring = inner(dom, r#"<svg id="ring""#, "</svg>");
    assert_eq!(ring.matches(r##"fill="#f4c430""##).count(), 1, "{ring}");
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(PNG_MAGIC) && &bytes[12..16] == b"IHDR",
        "not a PNG"
    );
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (word(16), word(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_browser_shows_the_leader_on_every_member() {
    let program = chromium_program();
    let cluster = Cluster::start(3);
    tokio::time::timeout(TEST_TIMEOUT, async {
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.followers(leader)[0];
        let scratch = tempfile::tempdir().expect("a directory for chromium's profiles");
        eprintln!(
            "leader {} ({:x}); pages of {} and {}",
            cluster.nodes[leader].name,
            cluster.nodes[leader].id,
            cluster.nodes[follower].name,
            cluster.nodes[leader].name
        );

        let dump_dom = ["--dump-dom".to_string()];
        for viewer in [follower, leader] {
            let url = format!("{}/", cluster.nodes[viewer].metrics_url());
            let started = Instant::now();
            let dom = run_chromium(&program, scratch.path(), &dump_dom, &url).await;
            eprintln!("dumped {url} in {:?}", started.elapsed());
            check_page_shows_leader(&cluster, &dom, viewer, leader);
        }

        let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        // A picture left by an earlier run must not pass for this one.
        let _ = std::fs::remove_file(&screenshot);
        let capture = [
            format!("--screenshot={}", screenshot.display()),
            format!("--window-size={SCREENSHOT_WIDTH},{SCREENSHOT_HEIGHT}"),
        ];
        let url = format!("{}/", cluster.nodes[leader].metrics_url());
        run_chromium(&program, scratch.path(), &capture, &url).await;
        let png = std::fs::read(&screenshot)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
        assert_eq!(
            png_size(&png),
            (SCREENSHOT_WIDTH, SCREENSHOT_HEIGHT),
            "{}",
            screenshot.display()
        );
        assert!(
            png.len() > SCREENSHOT_BYTES_MIN,
            "{} is only {} bytes: blank or broken",
            screenshot.display(),
            png.len()
        );
        println!(
            "status page screenshot: {} ({} bytes)",
            screenshot.display(),
            png.len()
        );
    })
    .await
    .expect("the test finished in time");
}
