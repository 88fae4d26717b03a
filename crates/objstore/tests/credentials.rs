//! `S3Store::new` takes its credentials from the standard AWS chain. A test
//! cannot set its own environment (`set_var` is unsafe), so this one runs
//! again as a child process with `S3Server::env()` set.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use objstore::{ObjectStore, S3Config, S3Store, S3Timeouts};
use testkit::S3Server;

const TEST: &str = "credentials_come_from_the_environment";
const ENDPOINT_VAR: &str = "OBJSTORE_TEST_S3_ENDPOINT";

#[test]
fn credentials_come_from_the_environment() -> anyhow::Result<()> {
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR) {
        return tokio::runtime::Runtime::new()?.block_on(in_child(endpoint));
    }
    let server = S3Server::start()?;
    let run = |secret: &str| -> anyhow::Result<std::process::Output> {
        let mut child = Command::new(std::env::current_exe()?);
        child
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .envs(server.env())
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env(ENDPOINT_VAR, server.endpoint())
            // Nothing from this machine's own AWS setup.
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE");
        Ok(child.output()?)
    };
    let out = run(server.secret_key())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");

    let wrong = "0123456789abcdef0123456789abcdef";
    let out = run(wrong)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong secret worked:\n{text}");
    assert!(
        text.contains("object store put_object failed: status 403"),
        "{text}"
    );
    assert!(!text.contains(wrong), "the secret shows in the error:\n{text}");
    Ok(())
}

/// Stores and reads back one object with credentials from the environment.
async fn in_child(endpoint: String) -> anyhow::Result<()> {
    let store = ObjectStore::S3(
        S3Store::new(S3Config {
            bucket: S3Server::BUCKET.to_owned(),
            prefix: String::new(),
            endpoint: Some(endpoint),
            region: "us-east-1".to_owned(),
            force_path_style: true,
            timeouts: S3Timeouts {
                attempt: Duration::from_secs(10),
                ..S3Timeouts::default()
            },
        })
        .await?,
    );
    let mut writer = store.multipart("from-env")?;
    writer.write(Bytes::from_static(b"hello")).await?;
    let completed = writer.complete().await;
    if let Err(e) = &completed {
        eprintln!("{e}");
        assert!(!e.is_unavailable(), "refused credentials are not an outage: {e}");
    }
    completed?;
    assert_eq!(store.head("from-env").await?.context("the object is missing")?, 5);
    Ok(())
}
