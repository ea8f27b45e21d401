//! Whole-file writes that never leave a half-written file behind: a temp file with a unique
//! name in the destination's folder, written and fsynced, renamed over the destination, then
//! the folder fsynced so the rename itself survives a power cut (where the platform allows).
//!
//! Folder-level swaps (model bundles, checkpoints, run exports) stage a whole folder and
//! rename it; they stay with their owners.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Prefix of the temp files [`write_atomic`] creates beside their destination. A writer killed
/// between create and rename leaves one behind; `dataset::store` sweeps them from `images/`.
pub const TEMP_PREFIX: &str = ".partial-";

/// A failed [`write_atomic`]: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path:?}: {source}")]
pub struct WriteError {
    /// The destination file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a mix.
/// Creates missing parent folders and replaces an existing file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    // A temp file is private (0600); the file it becomes gets what `std::fs::write` would
    // give it (0666 less the umask), so exports and sheets are readable like any other file.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename in `dir` durable. Best effort: some platforms cannot open a folder.
fn sync_dir(dir: &Path) {
    if let Ok(folder) = std::fs::File::open(dir) {
        folder.sync_all().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_content_is_written_and_no_temp_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("a.json");
        write_atomic(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 1}");
        assert_eq!(names_in(&dir.path().join("sub")), ["a.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_gets_the_mode_a_plain_write_gives() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (ours, plain) = (dir.path().join("ours"), dir.path().join("plain"));
        write_atomic(&ours, b"x").unwrap();
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ours), mode(&plain));
    }

    #[test]
    fn an_existing_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "old and longer").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(names_in(dir.path()), ["a.txt"]);
    }

    #[test]
    fn an_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "file").unwrap();
        let path = blocker.join("a.txt");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.path, path);
        assert!(err.to_string().contains("a.txt"), "{err}");
        assert_eq!(names_in(dir.path()), ["not-a-folder"]);
    }
}
