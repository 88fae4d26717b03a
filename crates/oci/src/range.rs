/// One byte range of a `Range: bytes=…` header, before the length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last`, inclusive.
    FromTo(u64, u64),
    /// `bytes=first-`: what containerd sends for parallel layer fetches.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range header is malformed")]
    Malformed,
}

/// Parses a Range header. `Ok(None)` means "answer with the whole body": a
/// unit other than bytes, or several ranges (the spec lets a server ignore
/// multi-range requests, and one whole body is never a wrong body).
pub fn parse_range(header: &str) -> Result<Option<ByteRange>, RangeError> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.trim().split_once('-').ok_or(RangeError::Malformed)?;
    let number = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RangeError::Malformed);
        }
        s.parse().map_err(|_| RangeError::Malformed)
    };
    match (first.trim(), last.trim()) {
        ("", n) => Ok(Some(ByteRange::Suffix(number(n)?))),
        (f, "") => Ok(Some(ByteRange::From(number(f)?))),
        (f, l) => {
            let (f, l) = (number(f)?, number(l)?);
            if l < f {
                return Err(RangeError::Malformed);
            }
            Ok(Some(ByteRange::FromTo(f, l)))
        }
    }
}

impl ByteRange {
    /// The half-open span `[start, end)` this range selects of a body of
    /// `len` bytes, or `None` when it is unsatisfiable (answer 416).
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        let span = match self {
            ByteRange::FromTo(f, l) => (f, l.saturating_add(1).min(len)),
            ByteRange::From(f) => (f, len),
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => (len.saturating_sub(n), len),
        };
        (span.0 < span.1).then_some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(parse_range("bytes=0-9"), Ok(Some(ByteRange::FromTo(0, 9))));
        assert_eq!(parse_range("bytes=100-"), Ok(Some(ByteRange::From(100))));
        assert_eq!(parse_range("bytes=-5"), Ok(Some(ByteRange::Suffix(5))));
        assert_eq!(parse_range("bytes=0-1,5-9"), Ok(None));
        assert_eq!(parse_range("items=0-1"), Ok(None));
        for bad in [
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=99999999999999999999-",
            "bytes=1",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(bad), Err(RangeError::Malformed), "{bad}");
        }
    }

    #[test]
    fn resolves_against_length() {
        assert_eq!(ByteRange::FromTo(0, 9).resolve(100), Some((0, 10)));
        assert_eq!(ByteRange::FromTo(90, 200).resolve(100), Some((90, 100)));
        assert_eq!(ByteRange::From(99).resolve(100), Some((99, 100)));
        assert_eq!(ByteRange::From(100).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some((90, 100)));
        assert_eq!(ByteRange::Suffix(500).resolve(100), Some((0, 100)));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
    }
}
