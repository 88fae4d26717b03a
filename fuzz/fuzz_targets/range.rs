//! Range headers. Input: a blob length on the first line, the header after
//! it. A parsed range prints back canonically to itself, and resolves to
//! exactly RFC 9110's span, which lies inside the blob and is never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::{ByteRange, parse_range};

fuzz_target!(|data: &[u8]| {
    let Some((len, header)) = std::str::from_utf8(data).ok().and_then(|t| t.split_once('\n')) else {
        return;
    };
    let Ok(len) = len.parse::<u64>() else {
        return;
    };
    let parsed = parse_range(header);
    if !header.trim().starts_with("bytes=") {
        assert_eq!(parsed, Ok(None), "{header:?}: other units are ignored");
    }
    let Ok(Some(range)) = parsed else {
        return;
    };
    assert!(!header.contains(','), "{header:?}: several ranges are never one");
    let canonical = match range {
        ByteRange::FromTo(first, last) => {
            assert!(first <= last, "{header:?}");
            format!("bytes={first}-{last}")
        }
        ByteRange::From(first) => format!("bytes={first}-"),
        ByteRange::Suffix(n) => format!("bytes=-{n}"),
    };
    assert_eq!(parse_range(&canonical), Ok(Some(range)));
    let want = match range {
        ByteRange::FromTo(first, last) => (first < len).then(|| (first, last.saturating_add(1).min(len))),
        ByteRange::From(first) => (first < len).then_some((first, len)),
        ByteRange::Suffix(n) => (n > 0 && len > 0).then(|| (len - n.min(len), len)),
    };
    let resolved = range.resolve(len);
    assert_eq!(resolved, want, "{header:?} of {len} bytes");
    if let Some((start, end)) = resolved {
        assert!(
            start < end && end <= len,
            "{header:?} of {len} bytes: {start}..{end}"
        );
    }
});
