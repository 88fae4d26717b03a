//! Authentication and redirect scripts, played by `fault_server` (see
//! `common`): token rotation and rejection, Basic challenges, credentials
//! that must not follow a redirect to a storage host.

// Test helpers panic on purpose: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Query, Request};
use axum::routing::get;
use common::{
    MANIFEST, OCI_MANIFEST, config, digest_of, fault_server, latest, manifest_response, repo, respond,
};
use futures_util::StreamExt;
use upstream::{Secret, Upstream, UpstreamConfig, UpstreamError};

fn with_credentials(mut cfg: UpstreamConfig) -> UpstreamConfig {
    cfg.username = Some("alice".into());
    cfg.password = Some(Secret::new("s3cret"));
    cfg
}

fn authorization(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A token endpoint that checks service and scope, counts its calls and
/// issues `tok-<n>`; with `basic` it insists on those credentials.
fn token_route(hits: Arc<AtomicUsize>, basic: Option<&'static str>) -> Router {
    Router::new().route(
        "/token",
        get(
            move |Query(q): Query<HashMap<String, String>>, req: Request| async move {
                assert_eq!(q.get("service").map(String::as_str), Some("scripted"));
                assert_eq!(
                    q.get("scope").map(String::as_str),
                    Some("repository:lib/app:pull,push")
                );
                assert_eq!(authorization(&req).as_deref(), basic);
                let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                respond(
                    200,
                    &[("content-type", "application/json")],
                    format!(r#"{{"token":"tok-{n}","expires_in":300}}"#),
                )
            },
        ),
    )
}

fn bearer_challenge(addr: SocketAddr) -> String {
    format!(r#"Bearer realm="http://{addr}/token",service="scripted",scope="repository:lib/app:pull,push""#)
}

#[tokio::test]
async fn bearer_flow_fetches_one_token_and_reuses_it() {
    let token_hits = Arc::new(AtomicUsize::new(0));
    let registry_hits = Arc::new(AtomicUsize::new(0));
    let (th, rh) = (token_hits.clone(), registry_hits.clone());
    let addr = fault_server("127.0.0.1", move |addr| {
        token_route(th, Some("Basic YWxpY2U6czNjcmV0")).route(
            "/v2/lib/app/manifests/latest",
            get(move |req: Request| async move {
                rh.fetch_add(1, Ordering::SeqCst);
                match authorization(&req).as_deref() {
                    Some("Bearer tok-1") => manifest_response(),
                    _ => respond(401, &[("www-authenticate", &bearer_challenge(addr))], ""),
                }
            }),
        )
    })
    .await;
    let upstream = Upstream::new(with_credentials(config(&format!("http://{addr}")))).unwrap();
    for _ in 0..2 {
        let got = upstream
            .get_manifest(&repo(), &latest(), &[], 1 << 20)
            .await
            .unwrap();
        assert_eq!(got.bytes, MANIFEST.as_bytes());
        assert_eq!(got.media_type, OCI_MANIFEST);
        assert_eq!(got.digest_header, Some(digest_of(MANIFEST.as_bytes())));
    }
    assert_eq!(token_hits.load(Ordering::SeqCst), 1, "token cached for the scope");
    assert_eq!(
        registry_hits.load(Ordering::SeqCst),
        3,
        "one 401, then two authorized gets"
    );
    assert!(!format!("{upstream:?}").contains("s3cret"));
}

#[tokio::test]
async fn refused_cached_token_is_renewed_once_then_unauthorized() {
    let token_hits = Arc::new(AtomicUsize::new(0));
    // The token number the registry currently accepts.
    let accepted = Arc::new(AtomicUsize::new(1));
    let (th, acc) = (token_hits.clone(), accepted.clone());
    let addr = fault_server("127.0.0.1", move |addr| {
        token_route(th, None).route(
            "/v2/lib/app/manifests/latest",
            get(move |req: Request| async move {
                let want = format!("Bearer tok-{}", acc.load(Ordering::SeqCst));
                if authorization(&req) == Some(want) {
                    manifest_response()
                } else {
                    respond(401, &[("www-authenticate", &bearer_challenge(addr))], "")
                }
            }),
        )
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    upstream.head_manifest(&repo(), &latest(), &[]).await.unwrap();
    assert_eq!(token_hits.load(Ordering::SeqCst), 1);

    accepted.store(2, Ordering::SeqCst);
    upstream.head_manifest(&repo(), &latest(), &[]).await.unwrap();
    assert_eq!(
        token_hits.load(Ordering::SeqCst),
        2,
        "rejected token dropped and renewed"
    );

    accepted.store(99, Ordering::SeqCst);
    let err = upstream.head_manifest(&repo(), &latest(), &[]).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized), "{err:?}");
    assert_eq!(
        token_hits.load(Ordering::SeqCst),
        3,
        "renewed exactly once, no loop"
    );
    assert!(!err.to_string().contains("tok-"));
}

#[tokio::test]
async fn token_endpoint_failures_are_reported_without_secrets() {
    let addr = fault_server("127.0.0.1", |addr| {
        Router::new()
            .route(
                "/token",
                get(|| async { respond(200, &[], r#"{"token": 12345678}"#) }),
            )
            .route("/broken/token", get(|| async { respond(503, &[], "") }))
            .route(
                "/v2/lib/app/manifests/latest",
                get(
                    move || async move { respond(401, &[("www-authenticate", &bearer_challenge(addr))], "") },
                ),
            )
            .route(
                "/v2/lib/other/manifests/latest",
                get(move || async move {
                    respond(
                        401,
                        &[(
                            "www-authenticate",
                            &format!(r#"Bearer realm="http://{addr}/broken/token""#),
                        )],
                        "",
                    )
                }),
            )
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    let err = upstream.head_manifest(&repo(), &latest(), &[]).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Auth(_)), "{err:?}");
    assert!(!err.to_string().contains("12345678"), "{err}");

    let other: oci::RepoName = "lib/other".parse().unwrap();
    let err = upstream.head_manifest(&other, &latest(), &[]).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Status { status: 503 }), "{err:?}");
    assert!(
        err.is_unavailable(),
        "a down token service is an unavailable upstream"
    );
}

#[tokio::test]
async fn basic_challenge_is_answered_and_then_sent_up_front() {
    let challenges = Arc::new(AtomicUsize::new(0));
    let ch = challenges.clone();
    let addr = fault_server("127.0.0.1", move |_| {
        Router::new().route(
            "/v2/lib/app/manifests/latest",
            get(move |req: Request| async move {
                if authorization(&req).as_deref() == Some("Basic YWxpY2U6czNjcmV0") {
                    manifest_response()
                } else {
                    ch.fetch_add(1, Ordering::SeqCst);
                    respond(
                        401,
                        &[("www-authenticate", r#"Basic realm="Registry Realm""#)],
                        "",
                    )
                }
            }),
        )
    })
    .await;
    let remote = format!("http://{addr}");
    let upstream = Upstream::new(with_credentials(config(&remote))).unwrap();
    for _ in 0..3 {
        upstream
            .get_manifest(&repo(), &latest(), &[], 1 << 20)
            .await
            .unwrap();
    }
    assert_eq!(challenges.load(Ordering::SeqCst), 1);

    let anonymous = Upstream::new(config(&remote)).unwrap();
    let err = anonymous
        .get_manifest(&repo(), &latest(), &[], 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized), "{err:?}");
    assert!(!err.is_unavailable());
}

#[tokio::test]
async fn redirect_to_storage_host_carries_no_authorization() {
    let blob = b"layer bytes from storage".to_vec();
    let digest = digest_of(&blob);
    let alias = digest_of(b"alias");
    let storage_auth = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = storage_auth.clone();
    // A second host (127.0.0.2 is loopback too on Linux), as S3 would be.
    let body = blob.clone();
    let storage = fault_server("127.0.0.2", move |_| {
        Router::new().route(
            "/bucket/blob",
            get(move |req: Request| async move {
                seen.lock().unwrap().push(authorization(&req));
                assert_eq!(req.uri().query(), Some("sig=presigned"));
                respond(200, &[], body)
            }),
        )
    })
    .await;
    let token_hits = Arc::new(AtomicUsize::new(0));
    let th = token_hits.clone();
    let (d, a) = (digest.to_string(), alias.to_string());
    let addr = fault_server("127.0.0.1", move |addr| {
        token_route(th, None).fallback(move |req: Request| async move {
            if authorization(&req).as_deref() != Some("Bearer tok-1") {
                return respond(401, &[("www-authenticate", &bearer_challenge(addr))], "");
            }
            match req.uri().path() {
                // Same origin, relative Location: credentials still go along.
                p if p == format!("/v2/lib/app/blobs/{a}") => {
                    respond(302, &[("location", &format!("/v2/lib/app/blobs/{d}"))], "")
                }
                p if p == format!("/v2/lib/app/blobs/{d}") => respond(
                    307,
                    &[("location", &format!("http://{storage}/bucket/blob?sig=presigned"))],
                    "",
                ),
                _ => respond(404, &[], ""),
            }
        })
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    for requested in [&digest, &alias] {
        let got = upstream.get_blob(&repo(), requested).await.unwrap();
        let chunks: Vec<_> = got.body.collect().await;
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, blob);
    }
    assert_eq!(
        *storage_auth.lock().unwrap(),
        vec![None, None],
        "no authorization on the storage host"
    );
    assert_eq!(token_hits.load(Ordering::SeqCst), 1);
}
