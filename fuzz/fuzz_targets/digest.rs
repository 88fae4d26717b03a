//! Digests: what parses is exactly `sha256:<64 lowercase hex>` or
//! `sha512:<128 lowercase hex>`, prints back to the input, re-parses equal
//! and agrees with its serde form; computed digests always re-parse.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oci::{Algorithm, Digest, DigestHasher};
use regex::Regex;

static DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").expect("digest regex"));

fuzz_target!(|data: &[u8]| {
    check_computed(data);
    if let Ok(s) = std::str::from_utf8(data) {
        check_parsed(s);
    }
});

/// Hashing in two pieces equals hashing at once, and the result re-parses.
fn check_computed(data: &[u8]) {
    let (a, b) = data.split_at(data.len() / 2);
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        let mut whole = DigestHasher::new(algorithm);
        whole.update(data);
        let mut pieces = DigestHasher::new(algorithm);
        pieces.update(a);
        pieces.update(b);
        let digest = whole.finish();
        assert_eq!(pieces.finish(), digest);
        assert_eq!(digest.algorithm(), algorithm);
        assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(&digest));
    }
    assert_eq!(Digest::sha256_of(data).algorithm(), Algorithm::Sha256);
}

fn check_parsed(s: &str) {
    let parsed = s.parse::<Digest>();
    assert_eq!(parsed.is_ok(), DIGEST.is_match(s), "{s:?}: {parsed:?}");
    let json = serde_json::to_string(s).expect("a string serializes");
    let from_json = serde_json::from_str::<Digest>(&json);
    assert_eq!(
        from_json.ok(),
        parsed.clone().ok(),
        "serde and FromStr disagree on {s:?}"
    );
    let Ok(digest) = parsed else {
        return;
    };
    assert_eq!(digest.to_string(), s);
    assert_eq!(format!("{}:{}", digest.algorithm().as_str(), digest.hex()), s);
    assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(&digest));
    assert_eq!(serde_json::to_string(&digest).expect("serializing"), json);
    // The hasher matches the digest's own algorithm.
    assert_eq!(digest.hasher().finish().algorithm(), digest.algorithm());
}
