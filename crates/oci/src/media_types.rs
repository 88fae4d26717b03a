//! Manifest media types and Accept-header negotiation.

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// Everything this cache asks the upstream for, so one stored manifest per
/// tag can serve every client (a registry answers 404 for an index unless the
/// index type is accepted).
pub const ALL_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_ARTIFACT,
];

/// Whether a client's Accept header values admit `media_type`. No Accept at
/// all admits everything, as registries do.
pub fn accepts<'a>(accept_values: impl IntoIterator<Item = &'a str>, media_type: &str) -> bool {
    let mut any = false;
    for value in accept_values {
        for item in value.split(',') {
            let range = item.split(';').next().unwrap_or("").trim();
            if range.is_empty() {
                continue;
            }
            any = true;
            if range == "*/*" || range.eq_ignore_ascii_case(media_type) {
                return true;
            }
            if let Some(top) = range.strip_suffix("/*")
                && media_type
                    .split('/')
                    .next()
                    .is_some_and(|t| t.eq_ignore_ascii_case(top))
            {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_accept_lists() {
        assert!(accepts([], OCI_INDEX));
        assert!(accepts([""], OCI_INDEX));
        assert!(accepts([DOCKER_MANIFEST, OCI_INDEX], OCI_INDEX));
        assert!(accepts(
            ["application/json, application/vnd.oci.image.index.v1+json;q=0.5"],
            OCI_INDEX
        ));
        assert!(accepts(["*/*"], OCI_INDEX));
        assert!(accepts(["application/*"], OCI_INDEX));
        assert!(!accepts([DOCKER_MANIFEST], OCI_INDEX));
        assert!(!accepts(["text/*"], OCI_INDEX));
    }
}
