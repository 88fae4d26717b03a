//! Pure parsing of the response headers this client relies on.

use std::time::Duration;

use http::HeaderMap;
use http::header::{AsHeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use url::Url;

pub(crate) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// A header's value when present and visible ASCII; anything else is treated
/// as absent rather than guessed at.
pub(crate) fn header_str<K: AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Content-Length from the header itself: for HEAD the body is empty, so the
/// response's own length hint would say 0.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// The media type without parameters (`; charset=utf-8`), or `None` if the
/// header is missing or empty.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, CONTENT_TYPE)?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    (!essence.is_empty()).then(|| essence.to_owned())
}

/// `Docker-Content-Digest`; a malformed value counts as absent because the
/// caller verifies content against its own digest anyway.
pub(crate) fn digest(headers: &HeaderMap) -> Option<oci::Digest> {
    header_str(headers, DOCKER_CONTENT_DIGEST).and_then(|v| v.trim().parse().ok())
}

/// `Retry-After` in its delta-seconds form. The HTTP-date form is not
/// supported (registries send seconds) and yields `None`, as does garbage.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_secs)
}

/// Rewrites a `Link: <url>; rel="next"` value so its URL is only a path and
/// query rooted at the registry's `/v2/`: the upstream's scheme, host and
/// base-path prefix are removed, so the server can hand it to its clients.
/// `None` when the value has no parseable `<url>`.
pub(crate) fn rewrite_link(value: &str, response_url: &Url, base: &Url) -> Option<String> {
    let start = value.find('<')?;
    let end = start + value[start..].find('>')?;
    let target = response_url.join(value[start + 1..end].trim()).ok()?;
    let prefix = base.path().trim_end_matches('/');
    let path = target.path();
    let path = match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let query = target.query().map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!("{}<{path}{query}>{}", &value[..start], &value[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("7", Some(7)),
            (" 120 ", Some(120)),
            ("3600", Some(3600)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("   ", None),
            ("-1", None),
            ("+5", None),
            ("1.5", None),
            ("5s", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_retry_after(input),
                want.map(Duration::from_secs),
                "{input:?}"
            );
        }
    }

    #[test]
    fn link_rewrite_table() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                r#"<https://reg.example/v2/a/b/tags/list?n=2&last=x>; rel="next""#,
                "https://reg.example/v2/a/b/tags/list?n=2",
                "https://reg.example/",
                Some(r#"</v2/a/b/tags/list?n=2&last=x>; rel="next""#),
            ),
            (
                r#"</v2/a/tags/list?last=y&n=1>; rel="next""#,
                "https://reg.example/v2/a/tags/list",
                "https://reg.example",
                Some(r#"</v2/a/tags/list?last=y&n=1>; rel="next""#),
            ),
            (
                r#"<http://127.0.0.1:5001/prefix/v2/a/tags/list?n=1>; rel="next""#,
                "http://127.0.0.1:5001/prefix/v2/a/tags/list",
                "http://127.0.0.1:5001/prefix",
                Some(r#"</v2/a/tags/list?n=1>; rel="next""#),
            ),
            (
                r#"</prefixed/v2/a/tags/list>; rel="next""#,
                "http://h/prefix/v2/a/tags/list",
                "http://h/prefix/",
                Some(r#"</prefixed/v2/a/tags/list>; rel="next""#),
            ),
            ("no brackets", "http://h/v2/a/tags/list", "http://h/", None),
            ("<unterminated", "http://h/v2/a/tags/list", "http://h/", None),
        ];
        for (value, response, base, want) in cases {
            let got = rewrite_link(value, &response.parse().unwrap(), &base.parse().unwrap());
            assert_eq!(got.as_deref(), *want, "{value:?}");
        }
    }

    #[test]
    fn reads_typed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/vnd.oci.image.index.v1+json; charset=utf-8"
                .parse()
                .unwrap(),
        );
        h.insert(CONTENT_LENGTH, "42".parse().unwrap());
        h.insert(DOCKER_CONTENT_DIGEST, "sha256:nothex".parse().unwrap());
        assert_eq!(
            media_type(&h).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(content_length(&h), Some(42));
        assert_eq!(digest(&h), None);
        let good = format!("sha256:{}", "a".repeat(64));
        h.insert(DOCKER_CONTENT_DIGEST, good.parse().unwrap());
        assert_eq!(digest(&h).map(|d| d.to_string()), Some(good));
    }
}
