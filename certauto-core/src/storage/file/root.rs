//! The OS default storage folder.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use super::FileStorage;
use crate::storage::StorageError;

/// The OS default storage folder, reading the environment through `var`.
pub(super) fn default_root_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let path = |name: &str| {
        var(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if cfg!(windows) {
        path("APPDATA")
            .or_else(|| path("USERPROFILE").map(|h| h.join("AppData").join("Roaming")))
            .map(|d| d.join("certauto"))
    } else if cfg!(target_os = "macos") {
        path("HOME").map(|h| {
            h.join("Library")
                .join("Application Support")
                .join("certauto")
        })
    } else if cfg!(unix) {
        path("XDG_DATA_HOME")
            .or_else(|| path("HOME").map(|h| h.join(".local").join("share")))
            .map(|d| d.join("certauto"))
    } else {
        None
    }
}

impl FileStorage {
    /// The OS default storage folder, from the environment:
    /// `$XDG_DATA_HOME/certauto` or `$HOME/.local/share/certauto` on Linux and
    /// other Unix systems, `$HOME/Library/Application Support/certauto` on
    /// macOS, `%APPDATA%\certauto` on Windows. `None` when the variables are
    /// unset (or not absolute paths).
    pub fn default_root() -> Option<PathBuf> {
        default_root_from(|name| std::env::var_os(name))
    }

    /// A storage at [`default_root`](Self::default_root) with default timings.
    ///
    /// Fails with [`StorageError::Backend`] when there is no default folder.
    pub fn with_default_root() -> Result<Self, StorageError> {
        Self::default_root().map(Self::new).ok_or_else(|| {
            StorageError::Backend(Box::new(io::Error::new(
                io::ErrorKind::NotFound,
                "no default storage folder: set HOME (or XDG_DATA_HOME, or APPDATA on Windows)",
            )))
        })
    }
}
