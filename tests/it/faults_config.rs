//! Fault injection on the config file and the process: reloads every 50 ms under load; the
//! file deleted, emptied, replaced by a directory, made unreadable; SIGTERM during a flood of
//! requests; a storm of SIGHUPs. Each test asserts what clients get, what the gateway counts
//! (`scopegate_config_reloads_total`) and, for the real binary, how it exits.

use crate::common::*;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};

fn mock_route(path: &str, body: &str) -> String {
    route_toml(path, &["GET"], &[PUBLIC, &mock_response("text/plain", body)])
}

/// Version `n` of the config: `/stable` in every version, plus a route only this version has.
fn version(n: usize) -> String {
    server_admin_toml("") + &mock_route("/stable", "stable") + &mock_route(&format!("/v{n}"), &format!("v{n}"))
}

/// GETs `path` on fresh connections until `stop`; every answer that is not 200 `body` (or
/// no answer at all) is collected.
fn load(
    addr: std::net::SocketAddr,
    path: &'static str,
    body: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut sent, mut bad) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match try_send_to(addr, "GET", path, &[], "").await {
                Ok(r) if r.status == 200 && r.body == body => {}
                Ok(r) => bad.push(format!("{} {}", r.status, r.body)),
                Err(e) => bad.push(e),
            }
            sent += 1;
        }
        (sent, bad)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_every_50ms_under_load_drops_nothing() {
    let gw = Gateway::start(&version(0)).await;
    let (ok0, err0) = (gw.reloads("ok"), gw.reloads("error"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3).map(|_| load(gw.addr, "/stable", "stable", Arc::clone(&stop))).collect();

    let started = Instant::now();
    let mut reloads = 0;
    while started.elapsed() < Duration::from_secs(10) {
        reloads += 1;
        gw.rewrite(&version(reloads));
        gw.reload().await.unwrap_or_else(|e| panic!("reload {reloads} refused: {e}"));
        sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for client in clients {
        let (n, bad) = bounded(20, "load client", client).await.expect("client task");
        assert!(
            bad.is_empty(),
            "{} of {n} requests to /stable failed during reloads: {:?}",
            bad.len(),
            &bad[..bad.len().min(10)]
        );
        sent += n;
    }
    assert!(reloads >= 50, "only {reloads} reloads in 10 s");
    assert!(sent >= 100, "only {sent} requests under reload");
    // Every reload counted ok (the file watcher may add reloads of its own; none fails).
    assert!(gw.reloads("ok") - ok0 >= reloads as u64, "{} ok reloads counted for {reloads}", gw.reloads("ok") - ok0);
    assert_eq!(gw.reloads("error"), err0, "failed reloads");
    // The last version is in force.
    let last = gw.get(&format!("/v{reloads}"), None).await;
    assert_eq!((last.status, last.body.clone()), (200, format!("v{reloads}")), "{last:?}");
    assert_eq!(gw.get("/v1", None).await.status, 404);
    gw.stop().await;
}

/// True when the process can read a file it made mode 000 (root can): then "unreadable" is
/// not testable here.
fn can_read_mode_000(dir: &std::path::Path) -> bool {
    let probe = dir.join("probe");
    std::fs::write(&probe, "x").expect("write probe");
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o000)).expect("chmod probe");
    let readable = std::fs::read(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    readable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_files_keep_the_old_config_and_are_counted() {
    let v1 = server_admin_toml("") + &mock_route("/a", "A");
    let gw = Gateway::start(&v1).await;
    let path = gw.config_path();
    let stop = Arc::new(AtomicBool::new(false));
    let client = load(gw.addr, "/a", "A", Arc::clone(&stop));

    type Fault = fn(&std::path::Path);
    let mut faults: Vec<(&str, Fault)> = vec![
        ("deleted", |p| std::fs::remove_file(p).expect("remove")),
        ("truncated to zero bytes", |p| std::fs::write(p, "").expect("truncate")),
        ("truncated mid-table", |p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            std::fs::write(p, &text[..text.len() / 2]).expect("truncate")
        }),
        ("replaced by a directory", |p| {
            let _ = std::fs::remove_file(p);
            std::fs::create_dir(p).expect("mkdir");
        }),
        // Opening a FIFO blocks until a writer comes: the reload must not wait for one.
        ("replaced by a FIFO", |p| {
            let _ = std::fs::remove_file(p);
            let made = std::process::Command::new("mkfifo").arg(p).status().expect("run mkfifo");
            assert!(made.success(), "mkfifo");
        }),
    ];
    if can_read_mode_000(gw.dir.path()) {
        println!("skipping the unreadable (chmod 000) case: this process can read mode 000 files (root)");
    } else {
        faults.push(("made unreadable", |p| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o000)).expect("chmod 000")
        }));
    }

    for (i, (what, fault)) in faults.into_iter().enumerate() {
        let errors = gw.reloads("error");
        fault(&path);
        let refused = gw.reload().await;
        assert!(refused.is_err(), "config {what}: reload accepted");
        assert!(gw.reloads("error") > errors, "config {what}: failed reload not counted");
        let resp = gw.get("/a", None).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "A"), "old config after the file was {what}: {resp:?}");
        assert!(gw.server().ready(), "not ready after the file was {what}");

        // A valid file returns (with one more route): it takes effect.
        if path.is_dir() {
            std::fs::remove_dir(&path).expect("rmdir");
        }
        let _ = std::fs::remove_file(&path);
        let route = format!("/back{i}");
        let v2 = server_admin_toml("") + &mock_route("/a", "A") + &mock_route(&route, "back");
        write_file(&path, &v2);
        gw.reload().await.unwrap_or_else(|e| panic!("valid file after {what}: {e}"));
        let resp = gw.get(&route, None).await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "back"), "after {what} and recovery: {resp:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, bad) = bounded(20, "load client", client).await.expect("client task");
    assert!(bad.is_empty(), "{} of {sent} requests to /a failed: {:?}", bad.len(), &bad[..bad.len().min(10)]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Process: signals on the real binary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_flood_completes_what_was_started() {
    // An upstream that takes 300 ms per answer, so requests are in flight at the signal.
    let received = Arc::new(AtomicUsize::new(0));
    let (listener, addr) = bind_local().await;
    let _upstream = {
        let received = Arc::clone(&received);
        spawn_http_server(listener, move |_req| {
            received.fetch_add(1, Ordering::SeqCst);
            async move {
                sleep(Duration::from_millis(300)).await;
                response(200, "text/plain", "done")
            }
        })
    };
    let toml = server_admin_toml("shutdown_grace = \"5s\"")
        + &upstream_toml("slow", &format!("http://{addr}"))
        + &route_toml("/slow", &["GET"], &[PUBLIC, &forward_to("slow")]);
    let mut bin = Binary::start(&toml).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (stop, ok, addr) = (Arc::clone(&stop), Arc::clone(&ok), bin.addr);
        clients.push(tokio::spawn(async move {
            let mut broken = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match try_send_to(addr, "GET", "/slow", &[], "").await {
                    Ok(r) if r.status == 200 && r.body == "done" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => broken.push(format!("{} {}", r.status, r.body)),
                    // After the head: the response was cut. Before it: the connection was not
                    // served (refused or closed unanswered once the listener stopped).
                    Err(e) if e.contains("reading body") => broken.push(e),
                    Err(_) => sleep(Duration::from_millis(20)).await,
                }
            }
            broken
        }));
    }
    // Let the flood build up: requests in flight on every client.
    sleep(Duration::from_millis(1000)).await;
    assert!(received.load(Ordering::SeqCst) >= 16, "the flood did not reach the upstream");
    let signalled = Instant::now();
    bin.signal("TERM");
    let status = bin.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let broken = bounded(20, "flood client", client).await.expect("client task");
        assert!(broken.is_empty(), "responses broken by the shutdown: {broken:?}");
    }
    let status = status.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM:\n{}", bin.output()));
    assert!(status.success(), "exit status {status}:\n{}", bin.output());
    assert!(took < Duration::from_secs(5), "exit took {took:?}, beyond shutdown_grace (5 s)");
    // Every request the upstream got was answered to its client in full.
    assert_eq!(
        ok.load(Ordering::SeqCst),
        received.load(Ordering::SeqCst),
        "requests forwarded vs complete answers:\n{}",
        bin.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_sighups_keeps_serving() {
    let v1 = server_admin_toml("") + "[log]\nformat = \"json\"\n\n" + &mock_route("/a", "A");
    let mut bin = Binary::start(&v1).await;
    let admin = bin.admin();
    let reloads = |result: &'static str| async move {
        let resp = send_to(admin, "GET", "/metrics", &[], "").await;
        metric(&resp.body, "scopegate_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
    };
    let (ok0, err0) = (reloads("ok").await, reloads("error").await);
    let stop = Arc::new(AtomicBool::new(false));
    let client = load(bin.addr, "/a", "A", Arc::clone(&stop));

    let started = Instant::now();
    for i in 0..100 {
        if i == 50 {
            let v2 = v1.clone() + &mock_route("/b", "B");
            replace_by_rename(bin.config_path(), &v2);
        }
        bin.signal("HUP");
        sleep(Duration::from_millis(20)).await;
    }
    let storm = started.elapsed();
    // Let the last reloads land.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = try_send_to(bin.addr, "GET", "/b", &[], "").await;
        if matches!(&b, Ok(r) if r.status == 200 && r.body == "B") {
            break;
        }
        assert!(Instant::now() < deadline, "/b after the storm: {b:?}\n{}", bin.output());
        sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, bad) = bounded(20, "load client", client).await.expect("client task");
    assert!(bin.running(), "the gateway died in the SIGHUP storm:\n{}", bin.output());
    assert!(
        bad.is_empty(),
        "{} of {sent} requests to /a failed during the storm: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    let (ok, err) = (reloads("ok").await - ok0, reloads("error").await - err0);
    assert_eq!(err, 0.0, "failed reloads in the storm");
    // Signals that arrive while a reload runs may be coalesced; at least one per ~storm.
    assert!((1.0..=100.0 + 10.0).contains(&ok), "{ok} ok reloads for 100 SIGHUPs in {storm:?}");
    bin.stop().await;
}
