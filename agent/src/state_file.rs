//! Small state files beside the buffer (`{storage.path}.remote.json`,
//! `{storage.path}.subscriptions.json`), replaced atomically and durably: one helper, so that
//! every such file gets every step.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` so that a crash or power cut at any moment leaves either the
/// old file or the new one, whole: write a temporary file beside it, fsync it, rename it over
/// `path`, then fsync the directory (without that last step the rename itself may be lost).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// The temporary file `replace` writes first: `{path}.tmp`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_no_temporary_is_left() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("buffer.redb.remote.json");
        // What a crash between write and rename leaves: overwritten, never read.
        std::fs::write(temp_path(&path), b"half")?;
        replace(&path, b"old")?;
        replace(&path, b"new")?;
        assert_eq!(std::fs::read(&path)?, b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("buffer.redb.remote.json")]
        );
        Ok(())
    }

    #[test]
    fn a_file_in_the_working_directory_is_replaced_too() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.json");
        // A relative path has an empty parent: the directory synced is ".".
        replace(&path, b"1")?;
        assert_eq!(std::fs::read(&path)?, b"1");
        Ok(())
    }
}
