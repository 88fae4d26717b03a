use serde::Deserialize;

use crate::digest::Digest;
use crate::media_types;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest has no media type")]
    NoMediaType,
}

/// What the cache needs to know of a manifest: its effective media type and
/// the digests it references (children of an index, config and layers of an
/// image), which garbage collection must keep alive.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestInfo {
    pub media_type: String,
    pub references: Vec<Digest>,
}

impl ManifestInfo {
    /// An index or manifest list: its references are other manifests.
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            media_types::OCI_INDEX | media_types::DOCKER_MANIFEST_LIST
        )
    }
}

#[derive(Deserialize)]
struct Descriptor {
    digest: Digest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
    subject: Option<Descriptor>,
}

/// Parses a manifest's JSON. `content_type` is what the upstream said; the
/// document's own `mediaType` is the fallback when the header is missing or
/// generic. Digests that do not parse make the whole manifest invalid: the
/// cache never stores something it cannot account for.
pub fn parse_manifest(content_type: Option<&str>, bytes: &[u8]) -> Result<ManifestInfo, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes)?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = header
        .map(str::to_owned)
        .or(raw.media_type)
        .ok_or(ManifestError::NoMediaType)?;
    let references = raw
        .config
        .into_iter()
        .chain(raw.layers)
        .chain(raw.manifests)
        .chain(raw.blobs)
        .chain(raw.subject)
        .map(|d| d.digest)
        .collect();
    Ok(ManifestInfo {
        media_type,
        references,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_references_config_and_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"{}","size":1}},
            "layers":[{{"mediaType":"y","digest":"{}","size":2}},{{"mediaType":"y","digest":"{}","size":3}}]}}"#,
            media_types::OCI_MANIFEST,
            d('a'),
            d('b'),
            d('c')
        );
        let info = parse_manifest(None, json.as_bytes()).unwrap();
        assert_eq!(info.media_type, media_types::OCI_MANIFEST);
        assert_eq!(info.references.len(), 3);
        assert!(!info.is_index());
    }

    #[test]
    fn index_references_children_and_header_wins() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":1,"platform":{{"os":"linux"}}}}]}}"#,
            d('e')
        );
        let info = parse_manifest(
            Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
            json.as_bytes(),
        )
        .unwrap();
        assert!(info.is_index());
        assert_eq!(info.references[0].to_string(), d('e'));
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(parse_manifest(None, b"not json").is_err());
        assert!(matches!(
            parse_manifest(None, b"{}"),
            Err(ManifestError::NoMediaType)
        ));
        let bad_digest = r#"{"mediaType":"x","layers":[{"digest":"sha256:zz"}]}"#;
        assert!(parse_manifest(None, bad_digest.as_bytes()).is_err());
    }
}
