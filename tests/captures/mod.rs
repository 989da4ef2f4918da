//! Where the shared real captures are. Under CI their absence is a failure; elsewhere the test
//! is skipped with a message.

use std::path::PathBuf;

pub fn dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
    if dir.join("reference").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the shared captures are missing at {}", dir.display());
    }
    eprintln!("skipping: shared captures not found at {}", dir.display());
    None
}
