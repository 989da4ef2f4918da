//! A small line logger on standard error: `2026-12-03T21:22:57.123Z INFO message`. Under systemd
//! the journal adds its own timestamp; the level prefix keeps `journalctl -p` useful.

use std::io::Write;
use std::time::SystemTime;

fn line(level: &str, message: &str) {
    let now = crate::engine::call::rfc3339(SystemTime::now());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{now} {level} {message}");
}

/// Something an operator may want to know.
pub fn info(message: &str) {
    line("INFO", message);
}

/// Something is wrong but the daemon carries on.
pub fn warn(message: &str) {
    line("WARN", message);
}

/// Something failed.
pub fn error(message: &str) {
    line("ERROR", message);
}
