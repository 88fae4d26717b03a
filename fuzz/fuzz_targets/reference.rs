//! Repository names, tags and references: what parses is exactly what the
//! distribution spec's grammar (its own regular expressions) admits, prints
//! back to the input and re-parses to itself.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oci::{Reference, RepoName, Tag};
use regex::Regex;

/// The spec's `<name>` grammar; regcache also bounds it to 255 bytes.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
    Regex::new(&format!("^{component}(?:/{component})*$")).expect("name regex")
});
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("tag regex"));
static DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").expect("digest regex"));

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_name(s);
    check_tag(s);
    check_reference(s);
});

fn check_name(s: &str) {
    let parsed = s.parse::<RepoName>();
    assert_eq!(
        parsed.is_ok(),
        s.len() <= 255 && NAME.is_match(s),
        "{s:?}: {parsed:?}"
    );
    let Ok(name) = parsed else {
        return;
    };
    assert_eq!(name.to_string(), s);
    assert_eq!(name.to_string().parse::<RepoName>().as_ref(), Ok(&name));
    assert_eq!(name.components(), s.split('/').count());
    assert!(
        !s.split('/').any(|c| c == "." || c == ".."),
        "{s:?} escapes a directory"
    );
    match name.prefixed("library") {
        Ok(prefixed) => assert_eq!(prefixed.as_str(), format!("library/{s}")),
        Err(e) => assert!(s.len() + "library/".len() > 255, "{s:?}: {e}"),
    }
}

fn check_tag(s: &str) {
    let parsed = s.parse::<Tag>();
    assert_eq!(parsed.is_ok(), TAG.is_match(s), "{s:?}: {parsed:?}");
    if let Ok(tag) = parsed {
        assert_eq!(tag.to_string(), s);
        assert_eq!(tag.to_string().parse::<Tag>().as_ref(), Ok(&tag));
    }
}

fn check_reference(s: &str) {
    let parsed = s.parse::<Reference>();
    let grammar = if s.contains(':') { &DIGEST } else { &TAG };
    assert_eq!(parsed.is_ok(), grammar.is_match(s), "{s:?}: {parsed:?}");
    let Ok(reference) = parsed else {
        return;
    };
    assert_eq!(matches!(reference, Reference::Digest(_)), s.contains(':'));
    assert_eq!(reference.to_string(), s);
    assert_eq!(
        reference.to_string().parse::<Reference>().as_ref(),
        Ok(&reference)
    );
}
