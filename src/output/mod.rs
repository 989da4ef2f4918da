//! Recording output formats.
//!
//! Kept separate from capture/core so the on-disk format (and its crash-recovery rules) can be
//! reasoned about and tested in isolation.

pub mod encode;
pub mod sealed;
pub mod stream;
pub mod wav;

pub use wav::{RepairReport, WavError, WavInfo, WavSpec, WavStatus, WavWriter, create_file, inspect, repair};

/// `path` with `suffix` appended to its file name (`a.wav.cvs` + `.partial`).
pub fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

/// Creates `path` and its parents as needed. A file in the way is said as such ("exists and is
/// not a directory"), where the OS would only say "File exists".
pub fn ensure_dir(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::create_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists || path.is_file() => {
            Err(std::io::Error::new(e.kind(), "it exists and is not a directory"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_in_the_way_of_a_directory_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = super::ensure_dir(&file).unwrap_err();
        assert_eq!(e.to_string(), "it exists and is not a directory");
        super::ensure_dir(&dir.path().join("a/b")).unwrap();
        super::ensure_dir(&dir.path().join("a/b")).unwrap();
    }
}
