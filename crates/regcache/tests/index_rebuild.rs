//! `regcache index rebuild`: the content index comes back from the object
//! tier after the metadata volume is lost.

mod common;

use std::process::Command;

use common::{assert_dir_blobs_verified, metric, metrics, s3_args, skopeo_pull, start_s3_replica};
use testkit::{S3Server, SeededRegistry};

fn rebuild(data_dir: &std::path::Path, flags: &[String], env: &[(&str, String)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["index", "rebuild", "--data-dir"])
        .arg(data_dir)
        .args(flags)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("running regcache index rebuild")
}

#[test]
fn rebuild_restores_the_index_from_the_bucket() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[200_000, 9_000_000, 5_000], "library/app:v1")
            .expect("a registry with an image");
    let s3 = S3Server::start().unwrap();
    let mut expected: Vec<String> = image.layer_digests.iter().map(|(d, _)| d.clone()).collect();
    expected.push(image.config_digest.clone());

    let data = tempfile::tempdir().unwrap();
    let flags = s3_args(&s3);
    let mut cache = start_s3_replica(&registry.url(), &s3, data.path());
    skopeo_pull(&cache, "app:v1", tempfile::tempdir().unwrap().path());
    cache.process.stop();

    // Every metadata volume lost: the data dir is gone with the disk tier.
    std::fs::remove_dir_all(data.path()).unwrap();
    let out = rebuild(data.path(), &flags, &s3.env());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("blobs=4 ") && stdout.contains("manifests=1 "),
        "{stdout}"
    );
    assert!(stdout.contains("unreadable=0"), "{stdout}");

    let cache = start_s3_replica(&registry.url(), &s3, data.path());
    let text = metrics(&cache);
    assert_eq!(
        metric(&text, "regcache_index_entries", r#"kind="blob""#),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "regcache_index_entries", r#"kind="manifest""#),
        1.0,
        "{text}"
    );

    registry.clear_log();
    let pulled = tempfile::tempdir().unwrap();
    skopeo_pull(&cache, &format!("app@{}", image.manifest_digest), pulled.path());
    assert_dir_blobs_verified(pulled.path(), &expected);
    let gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(gets.is_empty(), "the rebuilt replica went upstream: {gets:?}");
}

#[test]
fn rebuild_without_an_object_tier_says_why() {
    let data = tempfile::tempdir().unwrap();
    let out = rebuild(data.path(), &[], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no object tier to rebuild from"), "{stderr}");
}
