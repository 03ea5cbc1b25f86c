//! Hot config: gateway.toml (and the files it names) are watched, and SIGHUP re-reads them.
//!
//! A reload goes through the start-up path: `Config::load` -> `Snapshot::build` -> one atomic
//! swap. Requests in flight keep the snapshot they loaded; an invalid file is rejected whole and
//! the old snapshot stays. Listener addresses are bound once: a change to them is logged as
//! needing a restart, never re-bound.
//!
//! Files change in several ways: written in place, replaced by an editor's
//! write-to-temp-and-rename, or swapped by Kubernetes through a `..data` symlink pointing at a
//! new directory. Watching the file itself misses the last two, so the parent directories are
//! watched and every event (debounced) leads to a comparison of the watched files' contents
//! with what was last loaded. A slow poll catches what the watcher might miss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, KeySource};
use crate::proxy::Shared;
use crate::snapshot::{Runtime, Snapshot};

/// Quiet time after the last file event before files are compared.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// How often files are compared even without events.
const POLL: Duration = Duration::from_secs(5);
/// How long a reload waits for a newly added issuer's first keys before swapping anyway.
const NEW_ISSUER_WAIT: Duration = Duration::from_secs(5);

/// Reloads the config. Returns the error text when the new file was rejected.
pub async fn reload(shared: &Shared, rt: &Runtime) -> Result<(), String> {
    let result = try_reload(shared, rt).await;
    match &result {
        Ok(()) => {
            rt.metrics.config_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(path = %shared.config_path.display(), "config reloaded");
        }
        Err(error) => {
            rt.metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(%error, "config reload rejected; keeping the previous config");
        }
    }
    result
}

async fn try_reload(shared: &Shared, rt: &Runtime) -> Result<(), String> {
    let config = Config::load(&shared.config_path).map_err(|e| e.to_string())?;
    let old = shared.snapshot.load_full();
    let (was, now) = (&old.config.server, &config.server);
    if was.listen != now.listen || was.admin_listen != now.admin_listen {
        tracing::warn!(
            old_listen = %was.listen, new_listen = %now.listen,
            "listener addresses changed in the config; this takes a restart (still serving on the old ones)"
        );
    }
    let new = Snapshot::build(config, Some(&old), rt)?;
    let fresh: Vec<_> =
        new.verifier.issuers().filter(|i| !old.verifier.issuers().any(|o| Arc::ptr_eq(o, i))).cloned().collect();
    futures_util::future::join_all(fresh.iter().map(|i| i.first_attempt(NEW_ISSUER_WAIT))).await;
    shared.snapshot.store(Arc::new(new));
    Ok(())
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

fn read_all(files: &[PathBuf]) -> HashMap<PathBuf, Option<Vec<u8>>> {
    files.iter().map(|p| (p.clone(), std::fs::read(p).ok())).collect()
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the config and the files it names until `shutdown`; reloads on change or SIGHUP.
pub async fn watch(shared: Arc<Shared>, rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
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

    let mut files = watched_files(&shared.snapshot.load());
    let mut seen = read_all(&files);
    let mut dirs: Vec<PathBuf> = Vec::new();
    loop {
        // (Re)point the watcher at the directories of the current file set.
        let want: Vec<PathBuf> = {
            let mut d: Vec<PathBuf> = files.iter().map(|f| parent(f)).collect();
            d.sort();
            d.dedup();
            d
        };
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

        let mut forced = false;
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
        tokio::select! {
            () = crate::listener::stopped(&mut shutdown) => return,
            Some(()) = rx.recv() => {
                // Let a burst of events (write, rename, symlink swap) settle.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            }
            () = hup_recv => {
                tracing::info!("SIGHUP: reloading");
                forced = true;
            }
            () = tokio::time::sleep(POLL) => {}
        }

        let now = read_all(&files);
        let changed: Vec<&PathBuf> = files.iter().filter(|f| now.get(*f) != seen.get(*f)).collect();
        if !forced && changed.is_empty() {
            continue;
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
            let _ = reload(&shared, &rt).await;
        }
        files = watched_files(&shared.snapshot.load());
        // Files the new config names for the first time count as seen as of now.
        for f in &files {
            seen.entry(f.clone()).or_insert_with(|| std::fs::read(f).ok());
        }
    }
}
