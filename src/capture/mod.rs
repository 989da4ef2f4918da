//! Reading packet captures for `callvault import`.
//!
//! [`CaptureReader`] streams UDP datagrams out of a pcap or pcapng file (the
//! only I/O in this module); [`net`] decodes one frame down to UDP and
//! [`sip`] extracts call and media information from one SIP payload. The
//! decoders are sans-IO so they can be reused for live capture later.

pub mod net;
mod pcap;
pub mod sip;

pub use net::LinkType;
pub use pcap::{CaptureError, CaptureReader, CaptureStats, Datagram};
pub use sip::{RtpMap, Sdp, SdpMedia, SipKind, SipMessage, parse_sdp, parse_sip};
