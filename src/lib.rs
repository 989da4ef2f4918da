//! callvault: a call-recording appliance for contact centres.
//!
//! - [`core`]: the sans-IO recording core (RTP/RTCP parsing, per-leg timelines, G.711, mixing).
//! - [`capture`]: reading packet captures (pcap, pcapng) and their SIP/SDP signalling.
//! - [`output`]: recording containers (crash-recoverable WAV/RF64).
//! - [`import`]: the `callvault import` job: a capture in, recordings out.
//! - [`replay`]: the `callvault replay` job: a capture's RTP streams sent to live addresses.

pub mod api;
pub mod audit;
pub mod capture;
pub mod catalog;
pub mod config;
pub mod control;
pub mod core;
pub mod ctl;
pub mod doctor;
pub mod engine;
pub mod fuzz_targets;
pub mod host;
pub mod import;
pub mod log;
pub mod metrics;
pub mod output;
pub mod replay;
pub mod seal;
pub mod serve;
pub mod storage;
