//! File names that come from data files (COCO `file_name`, zip entries, VIA keys) must never
//! escape the folder they are resolved against.

use std::path::{Component, Path, PathBuf};

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
