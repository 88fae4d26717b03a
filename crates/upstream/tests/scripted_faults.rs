//! Transport and response faults, played by `fault_server` (see
//! `common`): 429 with Retry-After, 5xx, redirect loops, oversized and
//! stalled bodies, refused connections; plus path-prefix URL handling.

// Test helpers panic on purpose: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use common::{
    MANIFEST, OCI_MANIFEST, config, digest_of, fault_server, latest, manifest_response, repo, respond,
};
use futures_util::StreamExt;
use upstream::{Upstream, UpstreamError};

#[tokio::test]
async fn redirect_loops_are_cut_off() {
    let addr = fault_server("127.0.0.1", |_| {
        Router::new().fallback(|req: Request| async move {
            let location = req.uri().path().to_owned();
            respond(307, &[("location", &location)], "")
        })
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    let err = upstream.get_blob(&repo(), &digest_of(b"x")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::InvalidResponse(_)), "{err:?}");
}

#[tokio::test]
async fn statuses_map_to_errors_with_retry_after() {
    let addr = fault_server("127.0.0.1", |_| {
        Router::new()
            .route(
                "/v2/lib/app/manifests/limited",
                get(|| async { respond(429, &[("retry-after", "7")], "") }),
            )
            .route(
                "/v2/lib/app/manifests/dated",
                get(|| async { respond(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "") }),
            )
            .route(
                "/v2/lib/app/manifests/down",
                get(|| async { respond(503, &[], "") }),
            )
            .route(
                "/v2/lib/app/manifests/denied",
                get(|| async { respond(403, &[], "") }),
            )
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    let head = |tag: &'static str| {
        let upstream = upstream.clone();
        async move {
            upstream
                .head_manifest(&repo(), &tag.parse().unwrap(), &[])
                .await
                .unwrap_err()
        }
    };
    let err = head("limited").await;
    assert!(
        matches!(err, UpstreamError::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(7))
    );
    assert!(err.is_unavailable());
    assert!(matches!(
        head("dated").await,
        UpstreamError::TooManyRequests { retry_after: None }
    ));
    let err = head("down").await;
    assert!(matches!(err, UpstreamError::Status { status: 503 }) && err.is_unavailable());
    assert!(matches!(head("denied").await, UpstreamError::Denied));
    assert!(matches!(head("missing").await, UpstreamError::NotFound));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let addr = fault_server("127.0.0.1", |_| {
        Router::new()
            .route(
                "/v2/lib/app/manifests/declared",
                get(|| async { respond(200, &[("content-type", OCI_MANIFEST)], vec![b' '; 2048]) }),
            )
            .route(
                "/v2/lib/app/manifests/chunked",
                get(|| async {
                    // No Content-Length: the limit must be enforced while reading.
                    let chunks =
                        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
                    respond(200, &[("content-type", OCI_MANIFEST)], Body::from_stream(chunks))
                }),
            )
            .route(
                "/v2/lib/app/tags/list",
                get(|| async {
                    let chunks =
                        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
                    respond(
                        200,
                        &[("content-type", "application/json")],
                        Body::from_stream(chunks),
                    )
                }),
            )
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    for tag in ["declared", "chunked"] {
        let reference = tag.parse().unwrap();
        let err = upstream
            .get_manifest(&repo(), &reference, &[], 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::TooLarge { limit: 1024 }),
            "{tag}: {err:?}"
        );
        assert!(!err.is_unavailable());
        let exact = upstream
            .get_manifest(&repo(), &reference, &[], 4096)
            .await
            .unwrap();
        assert_eq!(exact.bytes.len(), if tag == "declared" { 2048 } else { 4096 });
    }
    let err = upstream.tags_list(&repo(), None, 4095).await.unwrap_err();
    assert!(matches!(err, UpstreamError::TooLarge { limit: 4095 }), "{err:?}");
    assert_eq!(
        upstream.tags_list(&repo(), None, 4096).await.unwrap().body.len(),
        4096
    );
}

#[tokio::test]
async fn stalled_responses_hit_the_idle_read_timeout() {
    let addr = fault_server("127.0.0.1", |_| {
        Router::new()
            .route(
                "/v2/lib/app/manifests/latest",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    manifest_response()
                }),
            )
            .fallback(|| async {
                // Headers and a first chunk, then silence with the
                // connection open: the worst case for a blob download.
                let first = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![1u8; 100])]);
                let body = Body::from_stream(first.chain(futures_util::stream::pending()));
                respond(200, &[("content-length", "1000")], body)
            })
    })
    .await;
    let mut cfg = config(&format!("http://{addr}"));
    cfg.read_timeout = Duration::from_millis(300);
    let upstream = Upstream::new(cfg).unwrap();

    let started = Instant::now();
    let err = upstream
        .get_manifest(&repo(), &latest(), &[], 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout), "{err:?}");
    assert!(err.is_unavailable());
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut blob = upstream.get_blob(&repo(), &digest_of(b"x")).await.unwrap();
    assert_eq!(blob.size, Some(1000));
    assert_eq!(blob.body.next().await.unwrap().unwrap().len(), 100);
    let err = blob.body.next().await.unwrap().unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout), "{err:?}");
}

#[tokio::test]
async fn refused_connections_are_retried_then_unavailable() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let upstream = Upstream::new(config(&format!("http://127.0.0.1:{port}"))).unwrap();
    let started = Instant::now();
    let err = upstream.get_blob(&repo(), &digest_of(b"x")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Connect(_)), "{err:?}");
    assert!(err.is_unavailable());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "two backoffs: 100ms + 200ms"
    );
    assert_eq!(err.to_string(), err.to_string().to_lowercase());
    assert!(!err.to_string().contains("http://"), "{err}");
}

#[tokio::test]
async fn path_prefix_query_and_link_are_handled() {
    let digest = digest_of(MANIFEST.as_bytes());
    let addr = fault_server("127.0.0.1", |addr| {
        Router::new()
            .route(
                "/prefix/v2/lib/app/tags/list",
                get(move |req: Request| async move {
                    assert_eq!(req.uri().query(), Some("n=1&last=a"));
                    let link =
                        format!(r#"<http://{addr}/prefix/v2/lib/app/tags/list?n=1&last=b>; rel="next""#);
                    respond(
                        200,
                        &[("content-type", "application/json"), ("link", &link)],
                        r#"{"name":"lib/app","tags":["b"]}"#,
                    )
                }),
            )
            .route(
                "/prefix/v2/lib/app/manifests/latest",
                get(|| async { manifest_response() }),
            )
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}/prefix"))).unwrap();
    let page = upstream
        .tags_list(&repo(), Some("n=1&last=a"), 1 << 16)
        .await
        .unwrap();
    assert_eq!(
        page.link.as_deref(),
        Some(r#"</v2/lib/app/tags/list?n=1&last=b>; rel="next""#)
    );
    assert_eq!(page.content_type.as_deref(), Some("application/json"));
    assert!(page.body.starts_with(b"{\"name\""));

    let head = upstream
        .head_manifest(&repo(), &latest(), &[OCI_MANIFEST])
        .await
        .unwrap();
    assert_eq!(head.digest, Some(digest));
    assert_eq!(head.media_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(head.size, Some(MANIFEST.len() as u64));
    assert_eq!(upstream.name(), "scripted.example");
}

/// A registry (or a CDN in front of one) that ignores Range sends the whole
/// blob: the stream still starts at the offset asked for.
#[tokio::test]
async fn a_range_the_registry_ignores_is_skipped_to() {
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let served = blob.clone();
    let addr = fault_server("127.0.0.1", move |_| {
        Router::new().fallback(move |req: Request| {
            let served = served.clone();
            async move {
                assert_eq!(req.headers()["range"], "bytes=70000-");
                // In pieces, so the skip crosses chunk boundaries.
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    served.chunks(30_000).map(|c| Ok(c.to_vec())).collect();
                let length = served.len().to_string();
                respond(
                    200,
                    &[("content-length", &length)],
                    Body::from_stream(futures_util::stream::iter(chunks)),
                )
            }
        })
    })
    .await;
    let upstream = Upstream::new(config(&format!("http://{addr}"))).unwrap();
    let got = upstream
        .get_blob_from(&repo(), &digest_of(&blob), 70_000)
        .await
        .unwrap();
    assert_eq!(got.size, Some(30_000));
    let rest: Vec<u8> = got.body.map(|chunk| chunk.unwrap().to_vec()).concat().await;
    assert_eq!(rest, blob[70_000..]);
}
