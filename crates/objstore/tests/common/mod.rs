//! Helpers shared by the object store tests.

use anyhow::Context as _;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use futures_util::TryStreamExt as _;
use objstore::{ObjectStore, S3Config, S3Store, S3Timeouts};
use sha2::{Digest as _, Sha256};
use testkit::S3Server;

/// A store on `server` with its credentials given directly (tests cannot
/// set environment variables), plus a raw client of the same bucket.
pub async fn s3_store(
    server: &S3Server,
    prefix: &str,
    timeouts: S3Timeouts,
) -> anyhow::Result<(ObjectStore, aws_sdk_s3::Client)> {
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(server.region().to_owned()))
        .credentials_provider(Credentials::new(
            server.access_key(),
            server.secret_key(),
            None,
            None,
            "test",
        ))
        .load()
        .await;
    let cfg = S3Config {
        bucket: server.bucket().to_owned(),
        prefix: prefix.to_owned(),
        endpoint: Some(server.endpoint()),
        region: server.region().to_owned(),
        force_path_style: true,
        timeouts,
    };
    let store = S3Store::with_sdk_config(cfg, &shared)?;
    let raw = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .endpoint_url(server.endpoint())
            .force_path_style(true)
            .build(),
    );
    Ok((ObjectStore::S3(store), raw))
}

/// sha256 and length of an object, hashed as it streams.
pub async fn sha256_of(
    store: &ObjectStore,
    key: &str,
    range: Option<(u64, u64)>,
) -> anyhow::Result<(String, u64)> {
    let body = store
        .get(key, range)
        .await?
        .with_context(|| format!("{key} is missing"))?;
    let announced = body.len();
    let mut hash = Sha256::new();
    let mut len = 0;
    let mut body = body;
    while let Some(chunk) = body.try_next().await? {
        hash.update(&chunk);
        len += chunk.len() as u64;
    }
    anyhow::ensure!(len == announced, "body of {len} bytes announced {announced}");
    Ok((hex::encode(hash.finalize()), len))
}
