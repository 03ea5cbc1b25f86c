//! `[auth] key_cache_dir`: the last good key set of each fetched issuer, and the built-in
//! issuer's generated signing key, kept on disk so that a cold start without the IdP still has
//! keys. One file per issuer, named by the SHA-256 of the issuer URL; written atomically (a temp
//! file, fsync, rename, fsync of the directory), mode 0600, in a directory created 0700.
//!
//! Everything here is blocking file I/O: it runs in the refresh task (through
//! `spawn_blocking`) or while a snapshot is built, never on the request path. Nothing here is
//! fatal: a file that cannot be read, parsed or written is reported to the caller, which logs it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::KeyCacheConfig;

/// What a key-set file holds: the issuer it belongs to, when its document was fetched (Unix
/// seconds), and the JWKS document as fetched.
#[derive(Serialize, Deserialize)]
struct Persisted {
    issuer: String,
    fetched_at: u64,
    jwks: serde_json::Value,
}

fn hex_sha256(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The file holding `issuer`'s key set.
pub fn jwks_file(dir: &Path, issuer: &str) -> PathBuf {
    dir.join(format!("jwks-{}.json", hex_sha256(issuer)))
}

/// The file holding the built-in issuer's generated signing key.
pub fn signing_key_file(dir: &Path, issuer: &str) -> PathBuf {
    dir.join(format!("signing-key-{}.pem", hex_sha256(issuer)))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A persisted key set that may be served: its JWKS document and its age.
#[derive(Debug)]
pub struct Loaded {
    pub jwks: Vec<u8>,
    pub age: Duration,
}

/// Reads `issuer`'s persisted key set. `Err` says why it cannot be served: missing, unreadable,
/// corrupt, written for another issuer, or older than the maximum age.
pub fn load_jwks(cache: &KeyCacheConfig, issuer: &str) -> Result<Loaded, String> {
    let path = jwks_file(&cache.dir, issuer);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p: Persisted =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a key cache file: {e}", path.display()))?;
    if p.issuer != issuer {
        return Err(format!("{}: written for issuer {:?}", path.display(), p.issuer));
    }
    // A timestamp in the future (the clock stepped back) counts as just fetched.
    let age = Duration::from_secs(unix_now().saturating_sub(p.fetched_at));
    if age > cache.max_age {
        return Err(format!(
            "{}: fetched {} ago, older than key_cache_max_age ({})",
            path.display(),
            humantime::format_duration(age),
            humantime::format_duration(cache.max_age)
        ));
    }
    let jwks = serde_json::to_vec(&p.jwks).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Loaded { jwks, age })
}

/// Persists `issuer`'s freshly fetched JWKS document, unless the file already holds the same
/// document, fetched less than a quarter of the maximum age ago (so the age limit counts from a
/// recent fetch, while a key set that does not change is rewritten only a few times per
/// maximum age). Returns whether the file was written.
pub fn store_jwks(cache: &KeyCacheConfig, issuer: &str, document: &[u8]) -> Result<bool, String> {
    let path = jwks_file(&cache.dir, issuer);
    let jwks: serde_json::Value = serde_json::from_slice(document).map_err(|e| e.to_string())?;
    let unchanged =
        std::fs::read(&path).ok().and_then(|old| serde_json::from_slice::<Persisted>(&old).ok()).is_some_and(|old| {
            let age = Duration::from_secs(unix_now().saturating_sub(old.fetched_at));
            old.issuer == issuer && old.jwks == jwks && age < cache.max_age / 4
        });
    if unchanged {
        return Ok(false);
    }
    let p = Persisted { issuer: issuer.to_owned(), fetched_at: unix_now(), jwks };
    let mut text = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
    text.push(b'\n');
    write_atomic(&cache.dir, &path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

/// Writes `contents` to `path` (inside `dir`) so that a reader sees the old file or the new one,
/// never a part: a temp file in the same directory (mode 0600), fsync, rename over `path`,
/// fsync of the directory. Creates `dir` (mode 0700) when missing.
pub fn write_atomic(dir: &Path, path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let tmp = dir.join(format!(".{name}.{}.{:x}.tmp", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_and_what_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KeyCacheConfig { dir: dir.path().join("cache"), max_age: Duration::from_secs(60) };
        let doc = br#"{"keys":[{"kty":"EC","kid":"a"}]}"#;
        assert!(store_jwks(&cache, "https://a.test", doc).unwrap());
        // The same document again: the file is left alone.
        assert!(!store_jwks(&cache, "https://a.test", doc).unwrap());
        let loaded = load_jwks(&cache, "https://a.test").unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&loaded.jwks).unwrap(),
            serde_json::from_slice::<serde_json::Value>(doc).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&cache.dir), 0o700);
            assert_eq!(mode(&jwks_file(&cache.dir, "https://a.test")), 0o600);
        }
        // Another issuer's file under this issuer's name.
        std::fs::copy(jwks_file(&cache.dir, "https://a.test"), jwks_file(&cache.dir, "https://b.test")).unwrap();
        assert!(load_jwks(&cache, "https://b.test").unwrap_err().contains("written for issuer"));
        // Too old.
        let old =
            Persisted { issuer: "https://a.test".into(), fetched_at: unix_now() - 120, jwks: serde_json::json!({}) };
        std::fs::write(jwks_file(&cache.dir, "https://a.test"), serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(load_jwks(&cache, "https://a.test").unwrap_err().contains("older than"));
        // Corrupt.
        std::fs::write(jwks_file(&cache.dir, "https://a.test"), b"{\"issuer\":").unwrap();
        assert!(load_jwks(&cache, "https://a.test").is_err());
    }
}
