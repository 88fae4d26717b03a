//! `fault_server`: a tiny scripted HTTP server on loopback for fault
//! injection. It plays the parts a real registry cannot be made to play on
//! demand (a token endpoint that rotates or rejects tokens, Basic
//! challenges, redirects to a second storage host, 429s, oversized bodies,
//! bodies that stall mid-way). Normal registry behaviour is tested against
//! a real `docker-registry` in `real_registry.rs` and in testkit.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use upstream::UpstreamConfig;

pub const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Binds `ip:0`, builds the script with the bound address (so it can name
/// itself in realms and redirects) and serves it in the background.
pub async fn fault_server(ip: &str, script: impl FnOnce(SocketAddr) -> Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = script(addr);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub fn config(remote: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: "scripted.example".into(),
        remote_url: remote.parse().unwrap(),
        username: None,
        password: None,
        http_proxy: None,
        https_proxy: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
    }
}

pub fn repo() -> oci::RepoName {
    "lib/app".parse().unwrap()
}

pub fn latest() -> oci::Reference {
    "latest".parse().unwrap()
}

pub fn digest_of(bytes: &[u8]) -> oci::Digest {
    oci::Digest::sha256_of(bytes)
}

pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).unwrap()
}

pub fn manifest_response() -> Response {
    let digest = digest_of(MANIFEST.as_bytes()).to_string();
    respond(
        200,
        &[("content-type", OCI_MANIFEST), ("docker-content-digest", &digest)],
        MANIFEST,
    )
}
