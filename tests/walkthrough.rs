//! Replays the README's walk-through (the ```console block between `<!-- walkthrough:start -->`
//! and `<!-- walkthrough:end -->`) against the real binary running the repository's
//! gateway.toml, so the README stays true.
//!
//! The shipped gateway.toml is copied to a temp dir with `127.0.0.1:8080` (listen and issuer)
//! replaced by a free port and `admin_listen` by another; the same replacement is made in the
//! commands. The `$ ` commands run in one bash process whose working directory is the temp
//! dir (so `sed -i ... gateway.toml` edits the copy and `$TOKEN` persists), with a unique
//! marker line printed between commands; each command's output must equal the README's lines.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The address the README and the shipped gateway.toml use.
const DEMO_ADDR: &str = "127.0.0.1:8080";
/// Bound on the gateway's start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
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

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// Kills the child process when dropped, also when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until the gateway accepts connections and answers HTTP.
fn wait_until_serving(gateway: &mut KillOnDrop, addr: SocketAddr, log: &Path) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = gateway.0.try_wait() {
            panic!("scopegate exited during start-up ({status})\n--- its output ---\n{}", log_tail(log));
        }
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /.well-known/jwks.json HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if stream.write_all(req.as_bytes()).is_ok()
                && stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.1 ")
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "scopegate did not answer on {addr} within {START_TIMEOUT:?}\n--- its output ---\n{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

    let addr = free_addr();
    let admin = free_addr();
    assert!(shipped.contains(DEMO_ADDR), "the shipped gateway.toml does not use {DEMO_ADDR}");
    assert!(steps.iter().any(|s| s.command.contains(DEMO_ADDR)), "the walkthrough's commands do not use {DEMO_ADDR}");
    let mut saw_admin = false;
    let config: String = shipped
        .replace(DEMO_ADDR, &addr.to_string())
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("admin_listen") {
                saw_admin = true;
                format!("admin_listen = \"{admin}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(saw_admin, "the shipped gateway.toml has no admin_listen line");
    for step in &mut steps {
        step.command = step.command.replace(DEMO_ADDR, &addr.to_string());
        for line in &mut step.expected {
            *line = line.replace(DEMO_ADDR, &addr.to_string());
        }
    }

    let work = tempfile::tempdir().expect("tempdir");
    let aux = tempfile::tempdir().expect("tempdir");
    let config_path = work.path().join("gateway.toml");
    std::fs::write(&config_path, &config).expect("write gateway.toml");
    let log_path = aux.path().join("scopegate.log");
    let log = std::fs::File::create(&log_path).expect("create log");

    let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("--config")
        .arg(&config_path)
        .current_dir(work.path())
        .env_remove("SCOPEGATE_CONFIG")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn scopegate");
    let mut gateway = KillOnDrop(child);
    wait_until_serving(&mut gateway, addr, &log_path);

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

    let mut bash = tokio::process::Command::new("bash");
    bash.arg("--noprofile")
        .arg("--norc")
        .arg(&script_path)
        .current_dir(work.path())
        // Requests to 127.0.0.1 must not go through a proxy configured for the machine.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("CURL_HOME")
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
    drop(gateway);
    assert!(
        report.is_empty(),
        "the README walk-through does not replay (- README, + actual output):\n{report}\n--- scopegate output ---\n{}",
        log_tail(&log_path)
    );
}
