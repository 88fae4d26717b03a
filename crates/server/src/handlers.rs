use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cache::{BlobHit, Body as CacheBody, ManifestHit, Tier};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use oci::{Digest, ErrorCode, Reference, Tag, parse_range};
use url::form_urlencoded;

use crate::AppState;
use crate::error::{ApiError, Subject};
use crate::observe::RequestInfo;
use crate::routing::{Endpoint, Target, parse_path, unsupported};

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Tag lists are read whole from the upstream, so they are bounded.
const MAX_TAGS_LIST_BYTES: u64 = 8 << 20;

/// `GET /v2/`: the API version check every client starts with.
pub async fn base() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "application/json")], "{}").into_response();
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

/// Every `/v2/<name>/...` request.
pub async fn registry(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut info = None;
    let mut response = match handle(&state, &method, &uri, &headers, &mut info).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    if let Some(info) = info {
        if let Ok(ns) = HeaderValue::from_str(&info.upstream) {
            response.headers_mut().insert(OCI_NAMESPACE, ns);
        }
        response.extensions_mut().insert(info);
    }
    response
}

async fn handle(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    info: &mut Option<RequestInfo>,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(unsupported());
    }
    // The raw path, never percent-decoded: an encoded `/` or `..` stays
    // invalid instead of turning into a path separator.
    let rest = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let (raw_name, endpoint) = parse_path(rest)?;
    let ns = query_param(uri, "ns");
    let target = state.routes.select(raw_name, ns.as_deref())?;
    let route = match endpoint {
        Endpoint::Manifest(_) => "manifest",
        Endpoint::Blob(_) => "blob",
        Endpoint::TagsList => "tags_list",
    };
    let request_info = info.insert(RequestInfo {
        route,
        upstream: target.source.upstream.name().to_owned(),
        repo: target.repo.to_string(),
        tier: None,
    });
    let head = method == Method::HEAD;
    match endpoint {
        Endpoint::Manifest(reference) => {
            let reference: Reference = reference
                .parse()
                .map_err(|e| invalid_reference(e, reference.contains(':')))?;
            let accept: Vec<&str> = headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let hit = state
                .cache
                .manifest(&target.source, &target.repo, &reference, &accept)
                .await
                .map_err(|e| ApiError::from_cache(&e, Subject::Manifest))?;
            request_info.tier = Some(hit.tier.as_str());
            Ok(manifest_response(hit, head))
        }
        Endpoint::Blob(digest) => {
            let digest: Digest = digest
                .parse()
                .map_err(|e| ApiError::new(ErrorCode::DigestInvalid, format!("{e}")))?;
            let range = match headers.get(header::RANGE) {
                None => None,
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(|v| parse_range(v).ok())
                    .ok_or_else(|| ApiError::new(ErrorCode::RangeInvalid, "range header is malformed"))?,
            };
            let hit = state
                .cache
                .blob(&target.source, &target.repo, &digest, range)
                .await
                .map_err(|e| ApiError::from_cache(&e, Subject::Blob))?;
            request_info.tier = Some(hit.tier.as_str());
            Ok(blob_response(&digest, hit, head))
        }
        Endpoint::TagsList => tags_list(&target, raw_name, uri, ns.as_deref(), head).await,
    }
}

fn invalid_reference(error: oci::NameError, is_digest: bool) -> ApiError {
    let code = if is_digest {
        ErrorCode::DigestInvalid
    } else {
        ErrorCode::TagInvalid
    };
    ApiError::new(code, format!("invalid reference: {error}"))
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn manifest_response(hit: ManifestHit, head: bool) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(media_type) = HeaderValue::from_str(&hit.media_type) {
        headers.insert(header::CONTENT_TYPE, media_type);
    }
    digest_headers(&mut headers, &hit.digest);
    headers.insert(CACHE_STATUS, cache_status(hit.tier));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(hit.bytes.len()));
    let body = if head {
        Body::empty()
    } else {
        Body::from(hit.bytes)
    };
    (StatusCode::OK, headers, body).into_response()
}

fn blob_response(digest: &Digest, hit: BlobHit, head: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    digest_headers(&mut headers, digest);
    headers.insert(CACHE_STATUS, cache_status(hit.tier));
    let (status, length) = match hit.span {
        Some((start, end)) => {
            debug_assert!(start < end && end <= hit.size);
            let range = format!("bytes {start}-{}/{}", end - 1, hit.size);
            if let Ok(range) = HeaderValue::from_str(&range) {
                headers.insert(header::CONTENT_RANGE, range);
            }
            (StatusCode::PARTIAL_CONTENT, end - start)
        }
        None => (StatusCode::OK, hit.size),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let body = match (head, hit.body) {
        (true, _) => Body::empty(),
        (false, CacheBody::Full(bytes)) => Body::from(bytes),
        (false, CacheBody::Stream(stream)) => Body::from_stream(stream),
    };
    (status, headers, body).into_response()
}

/// RFC 9211's `Cache-Status`: whether this replica answered from its own
/// tiers (`hit`) or went forward to the upstream or the owner (`fwd=miss`),
/// with the tier as detail, so clients and load tests can tell them apart.
fn cache_status(tier: Tier) -> HeaderValue {
    HeaderValue::from_static(match tier {
        Tier::Memory => "regcache; hit; detail=memory",
        Tier::Disk => "regcache; hit; detail=disk",
        Tier::Object => "regcache; hit; detail=object",
        Tier::Stale => "regcache; hit; detail=stale",
        Tier::Inflight => "regcache; fwd=miss; detail=inflight",
        Tier::Peer => "regcache; fwd=miss; detail=peer",
        Tier::Upstream => "regcache; fwd=miss; detail=upstream",
    })
}

fn digest_headers(headers: &mut HeaderMap, digest: &Digest) {
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert(CONTENT_DIGEST, value);
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, etag);
    }
}

/// Passes the tag list through, with `n` and `last` validated and the
/// pagination link rewritten to this cache's path for the same repository.
async fn tags_list(
    target: &Target,
    raw_name: &str,
    uri: &Uri,
    ns: Option<&str>,
    head: bool,
) -> Result<Response, ApiError> {
    let n = query_param(uri, "n");
    if let Some(n) = &n {
        n.parse::<u32>().map_err(|_| {
            ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                "query parameter n must be a number",
            )
        })?;
    }
    let last = query_param(uri, "last");
    if let Some(last) = &last {
        last.parse::<Tag>()
            .map_err(|e| ApiError::new(ErrorCode::TagInvalid, format!("query parameter last: {e}")))?;
    }
    let query = pagination_query(n.as_deref(), last.as_deref(), None);
    let page = target
        .source
        .upstream
        .tags_list(
            &target.repo,
            (!query.is_empty()).then_some(query.as_str()),
            MAX_TAGS_LIST_BYTES,
        )
        .await
        .map_err(|e| ApiError::from_upstream(&e, ErrorCode::NameUnknown))?;
    let mut headers = HeaderMap::new();
    let content_type = page.content_type.as_deref().unwrap_or("application/json");
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(link) = page.link.as_deref().and_then(|l| rewrite_link(l, raw_name, ns)) {
        headers.insert(header::LINK, link);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(page.body.len()));
    let body = if head {
        Body::empty()
    } else {
        Body::from(page.body)
    };
    Ok((StatusCode::OK, headers, body).into_response())
}

fn pagination_query(n: Option<&str>, last: Option<&str>, ns: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("n", n), ("last", last), ("ns", ns)] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    query.finish()
}

/// Turns the upstream's `</v2/NAME/tags/list?n=2&last=b>; rel="next"` into
/// the same page of this cache, keeping only the pagination parameters.
fn rewrite_link(link: &str, raw_name: &str, ns: Option<&str>) -> Option<HeaderValue> {
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let last = get("last")?;
    last.parse::<Tag>().ok()?;
    let query = pagination_query(get("n"), Some(last), ns);
    HeaderValue::from_str(&format!("</v2/{raw_name}/tags/list?{query}>; rel=\"next\"")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_pagination_links() {
        let link = "</v2/library/alpine/tags/list?last=3.19&n=2>; rel=\"next\"";
        let rewritten = rewrite_link(link, "alpine", Some("docker.io")).unwrap();
        assert_eq!(
            rewritten,
            "</v2/alpine/tags/list?n=2&last=3.19&ns=docker.io>; rel=\"next\""
        );
        assert!(rewrite_link("<https://evil/x?last=../..>; rel=\"next\"", "a", None).is_none());
        assert!(rewrite_link("garbage", "a", None).is_none());
    }
}
