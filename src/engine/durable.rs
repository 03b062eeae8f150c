//! Making finished files survive a power cut. A file's `fsync` flushes its data, but the name
//! that a create or rename gave it lives in its folder, which POSIX flushes only when the folder
//! itself is synced: without that, a bid reported as decrypted could be gone after a crash.

use std::fs::File;
use std::io;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::format::BidError;

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes the entries of `dir` (names created, renamed or removed in it) to the disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Publishes the finished temporary file `tmp` as `out`: its data first, then the rename, then
/// the folder that names it. `what` names the file in errors ("the decrypted bid").
pub fn persist(tmp: NamedTempFile, out: &Path, what: &str) -> Result<(), BidError> {
    tmp.as_file()
        .sync_all()
        .map_err(BidError::io(format!("flushing {what} to disk")))?;
    tmp.persist(out).map_err(|e| BidError::Io {
        context: format!("saving {}", out.display()),
        source: e.error,
    })?;
    sync_dir(parent_of(out)).map_err(BidError::io(format!(
        "flushing the folder of {} to disk",
        out.display()
    )))
}

/// Flushes every file and folder under `dir`, and `dir` itself.
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_file_appears_whole_and_its_temporary_name_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = NamedTempFile::new_in(dir.path()).unwrap();
        std::io::Write::write_all(&mut tmp, b"plaintext").unwrap();
        let out = dir.path().join("bid.bin");
        persist(tmp, &out, "the test file").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"plaintext");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_that_cannot_be_published_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = NamedTempFile::new_in(dir.path()).unwrap();
        let out = dir.path().join("missing").join("bid.bin");
        let err = persist(tmp, &out, "the test file").unwrap_err().to_string();
        assert!(err.contains("bid.bin"), "{err}");
    }

    #[test]
    fn a_tree_is_synced_down_to_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/c.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("d.txt"), b"y").unwrap();
        sync_tree(dir.path()).unwrap();
        assert!(sync_tree(&dir.path().join("none")).is_err());
        assert_eq!(parent_of(Path::new("bid.bin")), Path::new("."));
        assert_eq!(parent_of(Path::new("/x/bid.bin")), Path::new("/x"));
    }
}
