//! Manifests. Input: the Content-Type on the first line (empty for none),
//! the document after it. A parsed manifest's references are valid digests,
//! exactly the document's descriptors in order, and its media type is the
//! header's unless that is missing or generic, else the document's own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::{Digest, media_types, parse_manifest};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let content_type = (!content_type.is_empty()).then_some(content_type);
    let document = &data[split + 1..];
    let Ok(info) = parse_manifest(content_type, document) else {
        return;
    };
    for digest in &info.references {
        assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(digest));
    }
    // Like Go registries, the parser skips fields it does not read without
    // validating them (invalid UTF-8, lone surrogates): only documents that
    // are strict JSON throughout can be compared with a full parse.
    let Ok(doc) = serde_json::from_slice::<Value>(document) else {
        return;
    };
    let got: Vec<String> = info.references.iter().map(ToString::to_string).collect();
    assert_eq!(got, descriptor_digests(&doc));

    let essence = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    match essence {
        Some(essence) => assert_eq!(info.media_type, essence),
        None => assert_eq!(Some(info.media_type.as_str()), doc["mediaType"].as_str()),
    }
    let index = [media_types::OCI_INDEX, media_types::DOCKER_MANIFEST_LIST];
    assert_eq!(info.is_index(), index.contains(&info.media_type.as_str()));
});

/// The digests of config, layers, manifests, blobs and subject, in that order.
/// A descriptor is an object, or serde's sequence form of one (`[digest]`).
fn descriptor_digests(doc: &Value) -> Vec<String> {
    let single = |key| doc.get(key).filter(|d| !d.is_null()).into_iter();
    let many = |key| doc.get(key).and_then(Value::as_array).into_iter().flatten();
    single("config")
        .chain(many("layers"))
        .chain(many("manifests"))
        .chain(many("blobs"))
        .chain(single("subject"))
        .map(|d| {
            let digest = if d.is_array() { &d[0] } else { &d["digest"] };
            digest
                .as_str()
                .expect("a descriptor has a string digest")
                .to_owned()
        })
        .collect()
}
