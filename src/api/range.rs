//! HTTP `Range: bytes=…` (RFC 9110 §14), one range per request: what players and browsers send
//! when they seek.

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// No (usable) range: the whole body, 200.
    Whole,
    /// `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// Cannot be satisfied or not understood: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Reads a `Range` header value. Several ranges in one request are served whole (a server may
/// ignore Range; no player needs multipart/byteranges), and so is a unit other than bytes (RFC
/// 9110 says to ignore it); a byte range that is malformed or lies past the end is refused, so
/// a client learns its mistake instead of getting bytes it did not ask for.
pub fn parse(header: Option<&str>, len: u64) -> Wanted {
    let Some(h) = header else { return Wanted::Whole };
    let Some((unit, spec)) = h.trim().split_once('=') else { return Wanted::Unsatisfiable };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Wanted::Whole;
    }
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Wanted::Unsatisfiable };
    // Digits past u64 are as good as u64::MAX: a client may write "to the end" that way.
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().unwrap_or(u64::MAX))
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        // `-N`: the last N bytes.
        (true, false) => match num(b) {
            Some(0) | None => Wanted::Unsatisfiable,
            Some(_) if len == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part { start: len.saturating_sub(n), end: len - 1 },
        },
        // `N-`: from N to the end.
        (false, true) => match num(a) {
            Some(s) if s < len => Wanted::Part { start: s, end: len - 1 },
            _ => Wanted::Unsatisfiable,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e && s < len => Wanted::Part { start: s, end: e.min(len - 1) },
            _ => Wanted::Unsatisfiable,
        },
        (true, true) => Wanted::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = |h: &str| parse(Some(h), 1000);
        assert_eq!(parse(None, 1000), Wanted::Whole);
        assert_eq!(p("bytes=0-0"), Wanted::Part { start: 0, end: 0 });
        assert_eq!(p("bytes=0-"), Wanted::Part { start: 0, end: 999 });
        assert_eq!(p("bytes=500-599"), Wanted::Part { start: 500, end: 599 });
        assert_eq!(p("bytes=900-5000"), Wanted::Part { start: 900, end: 999 });
        assert_eq!(p("bytes=-1"), Wanted::Part { start: 999, end: 999 });
        assert_eq!(p("bytes=-5000"), Wanted::Part { start: 0, end: 999 });
        assert_eq!(p("bytes=999-"), Wanted::Part { start: 999, end: 999 });
        assert_eq!(p("bytes=0-1,5-6"), Wanted::Whole);
        assert_eq!(p("items=0-1"), Wanted::Whole, "another unit is ignored");
        assert_eq!(p("Bytes=0-1"), Wanted::Part { start: 0, end: 1 });
        // Past u64: the end of the body.
        assert_eq!(p("bytes=10-99999999999999999999999"), Wanted::Part { start: 10, end: 999 });
        assert_eq!(p("bytes=-99999999999999999999999"), Wanted::Part { start: 0, end: 999 });
        for bad in [
            "bytes=1000-",
            "bytes=1000-1001",
            "bytes=5-4",
            "bytes=-0",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(p(bad), Wanted::Unsatisfiable, "{bad:?}");
        }
        assert_eq!(parse(Some("bytes=-5"), 0), Wanted::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }
}
