//! The sans-IO recording core: bytes and times in, audio out. No sockets, no clock, no threads;
//! the same inputs always give the same output, whether they come from a capture, a test's
//! virtual clock or the live engine.
#![forbid(unsafe_code)]

pub mod decode;
pub mod g711;
pub mod leg;
pub mod mixer;
pub mod payload;
pub mod recording;
pub mod resample;
pub mod rtp;
pub mod seq;
pub mod session;
