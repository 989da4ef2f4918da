//! The live RTP engine: one worker thread per core, each owning its back end, its sockets and
//! its calls. This is the I/O layer: the only place with `unsafe` (each block says why it holds).

pub mod backend;
