//! File names that come from data files (COCO `file_name`, zip entries, VIA keys) must never
//! escape the folder they are resolved against.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// A path part (`path.file_name()`, `path.file_stem()`) as a `String`, lossily converted; empty
/// when there is none.
pub fn lossy(part: Option<&OsStr>) -> String {
    part.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why a file name from a data file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Empty name.
    #[error("file name is empty")]
    Empty,
    /// Absolute path, drive letter or UNC path.
    #[error("file name {0:?} is absolute; only paths relative to the dataset folder are allowed")]
    Absolute(String),
    /// A `..` component.
    #[error("file name {0:?} climbs out of its folder with '..'")]
    ParentDir(String),
    /// A NUL byte or another control character.
    #[error("file name {0:?} contains a control character")]
    ControlChar(String),
    /// Resolves (through a symlink) outside the root folder.
    #[error("file name {name:?} resolves outside {root:?} (symlink?)")]
    Escapes {
        /// The name from the data file.
        name: String,
        /// The folder it had to stay in.
        root: PathBuf,
    },
    /// Not a single plain file name: a separator, a leading `.`, or too long.
    #[error("{0:?} is not a plain file name (one path component, no leading '.')")]
    NotAFileName(String),
    /// The root could not be resolved.
    #[error("cannot resolve folder {root:?}: {source}")]
    Root {
        /// The folder.
        root: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Checks a relative file name from a data file and normalises `\` to `/`.
pub fn safe_relative_path(name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name.chars().any(char::is_control) {
        return Err(PathError::ControlChar(name.to_owned()));
    }
    let normalised = name.replace('\\', "/");
    let bytes = normalised.as_bytes();
    let has_drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if normalised.starts_with('/') || has_drive {
        return Err(PathError::Absolute(name.to_owned()));
    }
    let mut out = PathBuf::new();
    for component in Path::new(&normalised).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::ParentDir(name.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(name.to_owned()));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// Joins a data-file name onto `root`; if the result exists, checks that its real path (symlinks
/// resolved) is still inside `root`.
pub fn resolve_inside(root: &Path, name: &str) -> Result<PathBuf, PathError> {
    let joined = root.join(safe_relative_path(name)?);
    if joined.symlink_metadata().is_err() {
        return Ok(joined);
    }
    let canonical_root = root.canonicalize().map_err(|source| PathError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    match joined.canonicalize() {
        Ok(real) if real.starts_with(&canonical_root) => Ok(joined),
        // A dangling symlink or one that leads elsewhere.
        _ => Err(PathError::Escapes {
            name: name.to_owned(),
            root: root.to_path_buf(),
        }),
    }
}

/// Longest file name accepted by [`safe_file_name`] (the usual file-system limit, in bytes).
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Checks that `name` (from a data file or a server) is one plain path component: not empty,
/// at most [`MAX_FILE_NAME_BYTES`], no `/`, `\`, `:`, NUL or other control character, and no
/// leading `.` (which also refuses `.` and `..`). Such a name joined onto a folder stays in it.
pub fn safe_file_name(name: &str) -> Result<&str, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name.chars().any(char::is_control) {
        return Err(PathError::ControlChar(name.to_owned()));
    }
    if name.len() > MAX_FILE_NAME_BYTES || name.starts_with('.') || name.contains(['/', '\\', ':'])
    {
        return Err(PathError::NotAFileName(name.to_owned()));
    }
    Ok(name)
}

/// Joins a single file name (checked by [`safe_file_name`]) onto `folder`; if the result
/// exists, its real path must still be inside `folder` (no symlink out), as in
/// [`resolve_inside`]. The one place where a name from outside becomes a path to read, write or
/// delete.
pub fn join_file_name(folder: &Path, name: &str) -> Result<PathBuf, PathError> {
    resolve_inside(folder, safe_file_name(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_names_pass_and_backslashes_become_slashes() {
        assert_eq!(
            safe_relative_path("a/b.jpg").unwrap(),
            PathBuf::from("a/b.jpg")
        );
        assert_eq!(
            safe_relative_path("a\\b.jpg").unwrap(),
            PathBuf::from("a/b.jpg")
        );
        assert_eq!(
            safe_relative_path("./a.jpg").unwrap(),
            PathBuf::from("a.jpg")
        );
    }

    #[test]
    fn escaping_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x.jpg",
            "a/../../x",
            "C:\\x.jpg",
            "\\\\srv\\x",
            "a\0b",
            ".",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn single_file_names_only() {
        assert_eq!(
            safe_file_name("0a1b_m01b9xk_1234abcd.png").unwrap(),
            "0a1b_m01b9xk_1234abcd.png"
        );
        for bad in [
            "",
            ".",
            "..",
            ".hidden.png",
            "a/b.png",
            "../b.png",
            "/etc/passwd",
            "a\\b.png",
            "C:x.png",
            "a\0b.png",
            "a\nb.png",
        ] {
            assert!(safe_file_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(safe_file_name(&"a".repeat(MAX_FILE_NAME_BYTES + 1)).is_err());
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            join_file_name(root.path(), "x.png").unwrap(),
            root.path().join("x.png")
        );
        assert!(join_file_name(root.path(), "../x.png").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_leading_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.jpg"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.jpg"), root.path().join("a.jpg"))
            .unwrap();
        std::fs::write(root.path().join("b.jpg"), b"x").unwrap();
        assert!(matches!(
            resolve_inside(root.path(), "a.jpg"),
            Err(PathError::Escapes { .. })
        ));
        assert_eq!(
            resolve_inside(root.path(), "b.jpg").unwrap(),
            root.path().join("b.jpg")
        );
        assert_eq!(
            resolve_inside(root.path(), "new.jpg").unwrap(),
            root.path().join("new.jpg")
        );
    }
}
