//! Reading the files a config names (and the config itself): regular files only, and never
//! more than a bound. A path such as `/dev/zero` or a FIFO would otherwise hold `check`, the
//! start or a reload forever, or fill the memory.

use std::io::{self, Read as _};
use std::path::Path;

/// The most any of these files may hold: the config, TLS certificates and keys, an upstream's
/// `ca_file`, the built-in issuer's `signing_key`. A system CA bundle is about 200 KiB, and a
/// config with 10,000 routes about 1 MiB.
pub const MAX_FILE: u64 = 16 << 20;

/// Reads the regular file at `path` (a symlink to one is followed, as ConfigMap mounts use),
/// refusing anything else and anything longer than `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // Looked at before opening: opening a FIFO without a writer blocks.
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let file = std::fs::File::open(path)?;
    let expected = file.metadata().map_or(0, |m| m.len()).min(limit);
    let mut buf = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {}", Size(limit))));
    }
    Ok(buf)
}

/// [`read_limited`] with [`MAX_FILE`].
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    read_limited(path, MAX_FILE)
}

/// A byte count in the largest binary unit that divides it.
struct Size(u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{} KiB", n >> 10),
            n => write!(f, "{n} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_long_files_are_refused() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let e = read(Path::new(path)).expect_err(path);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{path}: {e}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 2048]).expect("write");
        assert_eq!(read_limited(&path, 2048).expect("at the limit").len(), 2048);
        let e = read_limited(&path, 1024).expect_err("over the limit");
        assert_eq!(e.to_string(), "larger than 1 KiB");
    }
}
