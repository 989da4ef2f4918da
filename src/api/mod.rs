//! The search and playback API (docs/api.md): an HTTP listener of its own, off the RTP cores,
//! with tokens, roles and scopes, Range playback of sealed recordings, QA sampling, legal holds
//! and an audit entry for every request.

pub mod access;
pub mod media;
pub mod range;
pub mod sample;
pub mod server;
