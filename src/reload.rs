//! Hot config: gateway.toml (and the files it names) are watched, and SIGHUP re-reads them.
//!
//! A reload goes through the start-up path: `Config::load` -> `Snapshot::build` -> one atomic
//! swap. Requests in flight keep the snapshot they loaded; an invalid file is rejected whole and
//! the old snapshot stays. A few settings are bound once at start (listener addresses, the
//! connection limit, TLS on or off, the log format): a change to them is logged as taking a
//! restart and counted in `scopegate_config_restart_required`, never applied.
//!
//! Files change in several ways: written in place, replaced by an editor's
//! write-to-temp-and-rename, or swapped by Kubernetes through a `..data` symlink pointing at a
//! new directory. Watching the file itself misses the last two, so the parent directories are
//! watched. Only events that name a watched file (or `..data`) count: a log file written next
//! to the config must not keep the debounce waiting. Counted events (debounced, within a bound)
//! lead to a comparison of the watched files' contents with what was last loaded. A slow poll
//! catches what the watcher might miss, and SIGHUP forces a reload; neither waits for events.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, ConfigError, Diag, KeySource};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, StartOnly};
use crate::state::Shared;

/// Quiet time after the last file event before files are compared.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Files are compared at the latest this long after the first event of a burst, however long
/// the burst goes on.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// The name Kubernetes swaps to publish a new ConfigMap or Secret revision.
const K8S_DATA: &str = "..data";
/// How long the contents of changed files must stay put before they are loaded.
const STEADY: Duration = Duration::from_millis(50);
/// How often files are compared even without events.
const POLL: Duration = Duration::from_secs(5);
/// How long a reload waits for a newly added issuer's first keys before swapping anyway.
const NEW_ISSUER_WAIT: Duration = Duration::from_secs(5);

/// Reloads the config. Returns the problems of the new file when it was rejected.
pub async fn reload(shared: &Shared) -> Result<(), ConfigError> {
    let result = try_reload(shared).await;
    match &result {
        Ok(()) => {
            shared.metrics.config_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(path = %shared.config_path.display(), "config reloaded");
        }
        Err(error) => {
            shared.metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(%error, "config reload rejected; keeping the previous config");
        }
    }
    result
}

async fn try_reload(shared: &Shared) -> Result<(), ConfigError> {
    // An empty file is a valid config (every setting at its default, no routes), but as a
    // reload it is a write caught half-way or a mistake, and it would drop every route: it is
    // refused like a file that cannot be read, and the running config stays.
    if crate::files::read(&shared.config_path).is_ok_and(|b| b.trim_ascii().is_empty()) {
        return Err(ConfigError(vec![Diag {
            file: shared.config_path.clone(),
            pos: None,
            message: "the file is empty".to_owned(),
        }]));
    }
    let config = Config::load(&shared.config_path)?;
    let old = shared.snapshot.load_full();
    let new = shared.build(config, Some(&old))?;
    flag_restart_only(&new, &shared.metrics, true);
    flag_not_enforcing(&new, Some(&old), &shared.metrics);
    let fresh: Vec<_> =
        new.verifier.issuers().filter(|i| !old.verifier.issuers().any(|o| Arc::ptr_eq(o, i))).cloned().collect();
    futures_util::future::join_all(fresh.iter().map(|i| i.first_attempt(NEW_ISSUER_WAIT))).await;
    shared.snapshot.store(Arc::new(new));
    Ok(())
}

/// Compares the settings `snap`'s config asks for with those the process runs with: each one
/// that differs is logged (when `log`) and sets `scopegate_config_restart_required{setting}` to
/// 1; those that agree (again) set it to 0.
fn flag_restart_only(snap: &Snapshot, metrics: &Metrics, log: bool) {
    let running = snap.start_only.settings();
    let configured = StartOnly::of(&snap.config).settings();
    for ((setting, running), (_, configured)) in running.iter().zip(&configured) {
        let differs = running != configured;
        metrics.config_restart_required.with_label_values(&[setting]).set(i64::from(differs));
        if differs && log {
            tracing::warn!(
                setting, running = %running, configured = %configured,
                "{setting} changed from {running} to {configured} in the config; this takes a restart (still running with {running})"
            );
        }
    }
}

/// Sets `scopegate_routes_not_enforcing` and, at start (no `previous`) or when the list changed,
/// names the routes in audit mode in a warning: a route left in audit mode after a rollout
/// forwards what it should refuse, so it must not go unnoticed.
pub(crate) fn flag_not_enforcing(snap: &Snapshot, previous: Option<&Snapshot>, metrics: &Metrics) {
    let routes = snap.config.not_enforcing();
    metrics.routes_not_enforcing.set(i64::try_from(routes.len()).unwrap_or(i64::MAX));
    if previous.is_some_and(|p| p.config.not_enforcing() == routes) {
        return;
    }
    if routes.is_empty() {
        if previous.is_some() {
            tracing::info!("every route enforces its token and scope checks again");
        }
        return;
    }
    let list = routes.join(", ");
    tracing::warn!(
        routes = %list,
        "{} route(s) in audit mode (enforce = false) forward requests their token or scope check refuses: {list}",
        routes.len()
    );
}

/// The files whose contents decide the snapshot, besides gateway.toml itself.
fn watched_files(snap: &Snapshot) -> Vec<PathBuf> {
    let mut files = vec![snap.config.path.clone()];
    for i in &snap.config.auth.issuers {
        if let KeySource::File(p) = &i.source {
            files.push(p.clone());
        }
    }
    if let Some(k) = snap.config.issuer.as_ref().and_then(|i| i.signing_key.clone()) {
        files.push(k);
    }
    if let Some(tls) = &snap.config.server.tls {
        files.push(tls.cert.clone());
        files.push(tls.key.clone());
    }
    files
}

/// The file names whose events count: those of the watched files, and Kubernetes' `..data`.
fn watched_names(files: &[PathBuf]) -> HashSet<OsString> {
    files.iter().filter_map(|f| f.file_name()).map(ToOwned::to_owned).chain([OsString::from(K8S_DATA)]).collect()
}

/// True for an event that may mean a watched file changed: one that names a watched file (an
/// editor's rename-over names the final name, a Kubernetes swap names `..data`) and is not a
/// mere open or read. An event that names no file (the kernel queue overflowed) counts too.
fn counts(event: &notify::Event, names: &HashSet<OsString>) -> bool {
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    event.need_rescan()
        || event.paths.is_empty()
        || event.paths.iter().any(|p| p.file_name().is_some_and(|n| names.contains(n)))
}

fn read_all(files: &[PathBuf]) -> HashMap<PathBuf, Option<Vec<u8>>> {
    files.iter().map(|p| (p.clone(), crate::files::read(p).ok())).collect()
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the config and the files it names until `shutdown`; reloads on change or SIGHUP.
pub async fn watch(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut files = watched_files(&shared.snapshot.load());
    // Shared with the watcher's callback, which drops the events of other files at once.
    let names = Arc::new(Mutex::new(watched_names(&files)));
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let filter = Arc::clone(&names);
    let mut watcher = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if counts(&event, &filter.lock().unwrap_or_else(PoisonError::into_inner)) {
                let _ = tx.send(());
            }
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; relying on polling and SIGHUP");
            None
        }
    };
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // Every restart-only setting shows in the metrics from the start, at 0.
    flag_restart_only(&shared.snapshot.load(), &shared.metrics, false);

    let mut seen = read_all(&files);
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Events never move the poll: it ticks every POLL whatever happens.
    let mut poll = tokio::time::interval_at(Instant::now() + POLL, POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // (Re)point the watcher at the directories of the current file set.
        let want: Vec<PathBuf> = {
            let mut d: Vec<PathBuf> = files.iter().map(|f| parent(f)).collect();
            d.sort();
            d.dedup();
            d
        };
        *names.lock().unwrap_or_else(PoisonError::into_inner) = watched_names(&files);
        if let Some(w) = watcher.as_mut() {
            if want != dirs {
                for d in &dirs {
                    let _ = w.unwatch(d);
                }
                for d in &want {
                    if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
                    }
                }
                dirs = want;
            }
        }

        // Waits for a reason to compare: the debounce of counted events ran out, SIGHUP, or
        // the poll. The debounce is a deadline of its own, so events never hold up the others.
        // (first event of the burst, when files are compared)
        let mut burst: Option<(Instant, Instant)> = None;
        let forced = loop {
            #[cfg(unix)]
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_recv = std::future::pending::<()>();
            let settled = async {
                match burst {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = crate::listener::stopped(&mut shutdown) => return,
                Some(()) = rx.recv() => {
                    // Let a burst of events (write, rename, symlink swap) settle, within a bound.
                    let now = Instant::now();
                    let first = burst.map_or(now, |(first, _)| first);
                    burst = Some((first, (now + DEBOUNCE).min(first + MAX_DEBOUNCE)));
                }
                () = settled => break false,
                () = hup_recv => {
                    tracing::info!("SIGHUP: reloading");
                    break true;
                }
                _ = poll.tick() => break false,
            }
        };
        let now = read_all(&files);
        let changed: Vec<&PathBuf> = files.iter().filter(|f| now.get(*f) != seen.get(*f)).collect();
        if !forced && changed.is_empty() {
            continue;
        }
        // A file written in place (truncate, then write) can be read between the two: empty,
        // or cut at a point where it still parses (a config with half its routes). Compare
        // again a moment later; while the contents still move, the write is not over, and its
        // next event (or the poll) brings the files back here.
        if !forced {
            tokio::time::sleep(STEADY).await;
            if read_all(&files) != now {
                continue;
            }
        }
        // A jwks_file that changed is re-read by its issuer at once.
        let snap = shared.snapshot.load_full();
        for issuer in snap.verifier.issuers() {
            if let KeySource::File(p) = &issuer.config.source {
                if changed.contains(&p) || forced {
                    issuer.refresh_now();
                }
            }
        }
        let only_jwks = !forced
            && changed
                .iter()
                .all(|f| snap.config.auth.issuers.iter().any(|i| i.source == KeySource::File((*f).clone())));
        seen = now;
        if !only_jwks {
            let _ = reload(&shared).await;
        }
        files = watched_files(&shared.snapshot.load());
        // Files the new config names for the first time count as seen as of now.
        for f in &files {
            seen.entry(f.clone()).or_insert_with(|| crate::files::read(f).ok());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    #[test]
    fn only_events_naming_a_watched_file_count() {
        let names = watched_names(&[PathBuf::from("/etc/gw/gateway.toml"), PathBuf::from("/etc/gw/keys/jwks.json")]);
        let write = EventKind::Modify(ModifyKind::Any);
        assert!(counts(&event(write, &["/etc/gw/gateway.toml"]), &names));
        assert!(counts(&event(write, &["/etc/gw/keys/jwks.json"]), &names));
        assert!(!counts(&event(write, &["/etc/gw/gw.log"]), &names), "a log next to the config");
        assert!(!counts(&event(EventKind::Create(CreateKind::File), &["/etc/gw/.gateway.toml.swp"]), &names));
        // An editor's rename-over, and the Kubernetes `..data` swap.
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(counts(&event(rename, &["/etc/gw/.gateway.toml.tmp", "/etc/gw/gateway.toml"]), &names));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(counts(&event(to, &["/etc/gw/..data"]), &names));
        // Reading a file (the gateway's own reads included) is no change; a finished write is.
        assert!(!counts(
            &event(EventKind::Access(AccessKind::Open(AccessMode::Any)), &["/etc/gw/gateway.toml"]),
            &names
        ));
        assert!(counts(
            &event(EventKind::Access(AccessKind::Close(AccessMode::Write)), &["/etc/gw/gateway.toml"]),
            &names
        ));
        // An event that names nothing (the kernel dropped events) may hide anything.
        assert!(counts(&event(EventKind::Other, &[]), &names));
    }
}
