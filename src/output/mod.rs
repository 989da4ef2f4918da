//! Recording output formats.
//!
//! Kept separate from capture/core so the on-disk format (and its crash-recovery rules) can be
//! reasoned about and tested in isolation.

pub mod wav;

pub use wav::{RepairReport, WavError, WavInfo, WavSpec, WavStatus, WavWriter, create_file, inspect, repair};
