//! Sequence-number bookkeeping for one RTP source: wrap-aware extension, duplicates, reordering,
//! and the RFC 3550 loss count.

/// How far back (in sequence numbers) duplicates are recognised.
const HISTORY: i64 = 1024;
/// A forward step at least this large is suspect until confirmed by the next packet (RFC 3550 A.1).
const MAX_DROPOUT: i64 = 3000;
const WORDS: usize = (HISTORY as usize) / 64;

/// What one packet's sequence number means for its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqClass {
    /// Newer than anything seen; `ext` is the extended (unwrapped) sequence number.
    InOrder {
        /// Extended sequence number.
        ext: i64,
    },
    /// Older than the newest seen but not seen before.
    Reordered {
        /// Extended sequence number.
        ext: i64,
    },
    /// Seen before: drop.
    Duplicate,
    /// Too far from the rest to place (older than the duplicate history, or an unconfirmed jump).
    Stray,
}

/// Per-source sequence state. Sequence numbers start at random values and wrap every 65 536
/// packets, so all comparisons use the signed 16-bit difference to the newest packet.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    max_seq: u16,
    max_ext: i64,
    base_ext: i64,
    seen: [u64; WORDS],
    received: u64,
    /// Expected and received packets of earlier epochs (before a sequence restart).
    closed_expected: u64,
    closed_received: u64,
    probation: Option<u16>,
}

impl SeqTracker {
    /// Starts tracking at the first packet's sequence number.
    pub fn new(first: u16) -> Self {
        let mut t = SeqTracker {
            max_seq: first,
            max_ext: i64::from(first),
            base_ext: i64::from(first),
            seen: [0; WORDS],
            received: 1,
            closed_expected: 0,
            closed_received: 0,
            probation: None,
        };
        t.mark(0);
        t
    }

    fn bit(&self, back: i64) -> bool {
        let i = back as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }

    fn mark(&mut self, back: i64) {
        let i = back as usize;
        self.seen[i / 64] |= 1 << (i % 64);
    }

    fn shift(&mut self, by: i64) {
        if by >= HISTORY {
            self.seen = [0; WORDS];
            return;
        }
        // Bit i means "max_ext - i was seen"; moving max forward moves bits up.
        let by = by as usize;
        let (words, bits) = (by / 64, by % 64);
        for w in (0..WORDS).rev() {
            let src = w.checked_sub(words);
            let hi = src.map_or(0, |s| self.seen[s]);
            let lo = src.and_then(|s| s.checked_sub(1)).map_or(0, |s| self.seen[s]);
            self.seen[w] = if bits == 0 { hi } else { (hi << bits) | (lo >> (64 - bits)) };
        }
    }

    /// Classifies a packet's sequence number and records it.
    pub fn classify(&mut self, seq: u16) -> SeqClass {
        let delta = i64::from(seq.wrapping_sub(self.max_seq) as i16);
        if delta > 0 && delta < MAX_DROPOUT {
            self.probation = None;
            self.advance(seq, delta);
            return SeqClass::InOrder { ext: self.max_ext };
        }
        if delta <= 0 && -delta < HISTORY {
            self.probation = None;
            let ext = self.max_ext + delta;
            if self.bit(-delta) {
                return SeqClass::Duplicate;
            }
            self.mark(-delta);
            self.received += 1;
            if ext < self.base_ext {
                self.base_ext = ext;
            }
            return SeqClass::Reordered { ext };
        }
        // A big jump: the sender restarted its sequence numbers, or a stray packet. Believe it
        // only when the next packet follows on (RFC 3550 A.1).
        if self.probation == Some(seq) {
            self.probation = None;
            self.closed_expected += self.expected_in_epoch();
            self.closed_received += self.received;
            // Extended numbers only need to be consistent within an epoch.
            let (closed_expected, closed_received) = (self.closed_expected, self.closed_received);
            *self = SeqTracker::new(seq);
            self.closed_expected = closed_expected;
            self.closed_received = closed_received;
            return SeqClass::InOrder { ext: self.max_ext };
        }
        self.probation = Some(seq.wrapping_add(1));
        SeqClass::Stray
    }

    fn advance(&mut self, seq: u16, delta: i64) {
        self.shift(delta);
        self.max_seq = seq;
        self.max_ext += delta;
        self.mark(0);
        self.received += 1;
    }

    fn expected_in_epoch(&self) -> u64 {
        (self.max_ext - self.base_ext + 1) as u64
    }

    /// Packets expected from sequence numbers (RFC 3550 A.3), over all epochs.
    pub fn expected(&self) -> u64 {
        self.closed_expected + self.expected_in_epoch()
    }

    /// Distinct packets received (duplicates not counted, so loss never goes negative).
    pub fn received(&self) -> u64 {
        self.closed_received + self.received
    }

    /// Expected − received.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received())
    }

    /// The newest extended sequence number.
    pub fn max_ext(&self) -> i64 {
        self.max_ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_counts_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::new(65534);
        assert_eq!(t.classify(65535), SeqClass::InOrder { ext: 65535 });
        assert_eq!(t.classify(1), SeqClass::InOrder { ext: 65537 }); // 0 lost across the wrap
        assert_eq!(t.classify(0), SeqClass::Reordered { ext: 65536 });
        assert_eq!(t.classify(0), SeqClass::Duplicate);
        assert_eq!(t.classify(5), SeqClass::InOrder { ext: 65541 });
        assert_eq!(t.expected(), 8);
        assert_eq!(t.received(), 5);
        assert_eq!(t.lost(), 3);
    }

    #[test]
    fn packet_older_than_the_first_extends_the_base() {
        let mut t = SeqTracker::new(10);
        assert_eq!(t.classify(9), SeqClass::Reordered { ext: 9 });
        assert_eq!(t.expected(), 2);
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn sequence_restart_is_accepted_after_two_sequential_packets() {
        let mut t = SeqTracker::new(100);
        t.classify(101);
        assert_eq!(t.classify(40000), SeqClass::Stray);
        assert!(matches!(t.classify(40001), SeqClass::InOrder { .. }));
        assert!(matches!(t.classify(40002), SeqClass::InOrder { .. }));
        // 100,101 then 40001,40002: the probe packet 40000 counts as neither expected nor received.
        assert_eq!(t.expected(), 4);
        assert_eq!(t.received(), 4);
    }

    #[test]
    fn duplicate_history_survives_large_shifts() {
        let mut t = SeqTracker::new(0);
        for s in 1..2000u16 {
            t.classify(s);
        }
        assert_eq!(t.classify(1990), SeqClass::Duplicate);
        assert_eq!(t.classify(500), SeqClass::Stray, "older than the history window");
    }
}
