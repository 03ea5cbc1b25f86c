//! Replays the README's walk-through (the ```console block between `<!-- walkthrough:start -->`
//! and `<!-- walkthrough:end -->`) against the real binary running the repository's
//! gateway.toml, so the README stays true.
//!
//! The shipped gateway.toml is started from a temp dir with `listen` and `admin_listen` on
//! `127.0.0.1:0`; once the binary has logged the ports it got, the copy is rewritten with
//! `127.0.0.1:8080` (listen and issuer) replaced by the bound address and `admin_listen` by the
//! admin one, and reloaded (SIGHUP); the same replacement is made in the commands. The `$ ` commands run in one bash process whose working directory is the temp
//! dir (so `sed -i ... gateway.toml` edits the copy and `$TOKEN` persists), with a unique
//! marker line printed between commands; each command's output must equal the README's lines.
//! `scopegate` in a command is the binary under test: its directory comes first on `PATH`.

use crate::common::*;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The address the README and the shipped gateway.toml use.
const DEMO_ADDR: &str = "127.0.0.1:8080";
/// Bound on the reload that moves the gateway onto the copy with the bound addresses.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the whole replay.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

/// One `$ ` command of the walk-through and the lines the README shows after it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The walk-through's commands, from README.md.
fn walkthrough(readme: &str) -> Vec<Step> {
    let start = readme.find("<!-- walkthrough:start -->").expect("README.md has <!-- walkthrough:start -->");
    let end = readme.find("<!-- walkthrough:end -->").expect("README.md has <!-- walkthrough:end -->");
    assert!(start < end, "walkthrough markers out of order");
    let section = &readme[start..end];
    let mut lines = section.lines().skip_while(|l| l.trim() != "```console");
    assert!(lines.next().is_some(), "no ```console block between the walkthrough markers");
    let mut steps: Vec<Step> = Vec::new();
    let mut closed = false;
    for line in lines {
        if line.trim() == "```" {
            closed = true;
            break;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step { command: command.to_string(), expected: Vec::new() });
        } else {
            let step = steps.last_mut().unwrap_or_else(|| panic!("output line before any `$ ` command: {line:?}"));
            step.expected.push(line.to_string());
        }
    }
    assert!(closed, "the ```console block is not closed before <!-- walkthrough:end -->");
    assert!(!steps.is_empty(), "the walkthrough has no `$ ` commands");
    steps
}

/// `text` with its `admin_listen` line set to `addr`, and whether it had one.
fn with_admin_listen(text: &str, addr: &str) -> (String, bool) {
    let mut saw = false;
    let text = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("admin_listen") {
                saw = true;
                format!("admin_listen = \"{addr}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    (text, saw)
}

fn log_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `scopegate_config_reloads_total{result="ok"}` from the admin listener's `/metrics`.
async fn reloads_ok(admin: std::net::SocketAddr) -> Option<f64> {
    let resp = try_send_to(admin, "GET", "/metrics", &[], "").await.ok()?;
    Some(series_value(&resp.body, "scopegate_config_reloads_total{result=\"ok\"}"))
}

/// Each step's output, cut out of the combined output at the marker lines.
fn split_outputs(output: &str, markers: &[String]) -> Result<Vec<Vec<String>>, String> {
    let mut outputs = Vec::new();
    for pair in markers.windows(2) {
        let open = format!("\n{}\n", pair[0]);
        let close = format!("\n{}\n", pair[1]);
        let start = output.find(&open).ok_or_else(|| format!("marker {:?} not in the output", pair[0]))? + open.len();
        let len = output[start..].find(&close).ok_or_else(|| format!("marker {:?} not in the output", pair[1]))?;
        let text = &output[start..start + len];
        // A terminal shows "a\n" and "a" alike before the next prompt; CRs (curl -i) are invisible.
        let text = text.strip_suffix('\n').unwrap_or(text);
        let lines = if text.is_empty() {
            Vec::new()
        } else {
            text.split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect()
        };
        outputs.push(lines);
    }
    Ok(outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_replays_against_the_real_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let shipped = std::fs::read_to_string(root.join("gateway.toml")).expect("read gateway.toml");
    let mut steps = walkthrough(&readme);

    assert!(shipped.contains(DEMO_ADDR), "the shipped gateway.toml does not use {DEMO_ADDR}");
    assert!(steps.iter().any(|s| s.command.contains(DEMO_ADDR)), "the walkthrough's commands do not use {DEMO_ADDR}");
    // Start on ports the system picks; the commands and the config then name the bound ones.
    let first = shipped.replace(&format!("listen = \"{DEMO_ADDR}\""), "listen = \"127.0.0.1:0\"");
    let (first, _) = with_admin_listen(&first, "127.0.0.1:0");
    let mut gateway = Binary::start(&first).await;
    let (addr, admin) = (gateway.addr, gateway.admin());
    let (config, saw_admin) = with_admin_listen(&shipped.replace(DEMO_ADDR, &addr.to_string()), &admin.to_string());
    assert!(saw_admin, "the shipped gateway.toml has no admin_listen line");
    for step in &mut steps {
        step.command = step.command.replace(DEMO_ADDR, &addr.to_string());
        for line in &mut step.expected {
            *line = line.replace(DEMO_ADDR, &addr.to_string());
        }
    }

    // The copy, with the bound addresses, is what the binary runs from here on.
    let before = reloads_ok(admin).await.expect("GET /metrics");
    replace_by_rename(gateway.config_path(), &config);
    gateway.signal("HUP");
    let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
    while reloads_ok(admin).await.unwrap_or(0.0) <= before {
        assert!(
            tokio::time::Instant::now() < deadline && gateway.running(),
            "the copy with the bound addresses was not reloaded within {RELOAD_TIMEOUT:?}\n--- its output ---\n{}",
            log_tail(&gateway.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let work = gateway.dir.path().to_path_buf();
    let aux = tempfile::tempdir().expect("tempdir");

    // One bash, cwd = the copy's dir; a unique marker line before each command and at the end.
    let nonce =
        format!("{}-{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos());
    let markers: Vec<String> = (0..=steps.len()).map(|i| format!("@@scopegate-walkthrough-{nonce}-{i}@@")).collect();
    let mut script = String::from("exec 2>&1\n");
    for (step, marker) in steps.iter().zip(&markers) {
        script.push_str(&format!("printf '\\n%s\\n' '{marker}'\n{}\n", step.command));
    }
    script.push_str(&format!("printf '\\n%s\\n' '{}'\n", markers[steps.len()]));
    let script_path = aux.path().join("walkthrough.sh");
    std::fs::write(&script_path, &script).expect("write script");

    // `scopegate explain` in the walk-through runs the binary under test, on the copy's config.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_scopegate")).parent().expect("the binary's directory");
    let path = std::env::join_paths(
        std::iter::once(bin_dir.to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let mut bash = tokio::process::Command::new("bash");
    bash.arg("--noprofile")
        .arg("--norc")
        .arg(&script_path)
        .current_dir(&work)
        // Requests to 127.0.0.1 must not go through a proxy configured for the machine.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("CURL_HOME")
        .env("PATH", path)
        .env_remove("SCOPEGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(REPLAY_TIMEOUT, bash.output())
        .await
        .unwrap_or_else(|_| panic!("the walkthrough did not finish within {REPLAY_TIMEOUT:?}"))
        .expect("run bash");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();

    let outputs = split_outputs(&output, &markers).unwrap_or_else(|e| {
        panic!(
            "{e}\n--- script ---\n{script}\n--- output ---\n{output}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut report = String::new();
    for (i, (step, got)) in steps.iter().zip(&outputs).enumerate() {
        if *got != step.expected {
            report.push_str(&format!("step {}: $ {}\n", i + 1, step.command));
            for line in &step.expected {
                report.push_str(&format!("  - {line}\n"));
            }
            for line in got {
                report.push_str(&format!("  + {line}\n"));
            }
        }
    }
    let log = gateway.log();
    drop(gateway);
    assert!(
        report.is_empty(),
        "the README walk-through does not replay (- README, + actual output):\n{report}\n--- scopegate output ---\n{}",
        log_tail(&log)
    );
}
