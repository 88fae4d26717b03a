//! `[storage]` and its flags.

use std::path::PathBuf;
use std::time::Duration;

use super::tests::{assert_section_errors, load_str, write};
use super::*;
use crate::config::StorageOverrides;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn s3(
    bucket: &str,
    prefix: &str,
    endpoint: Option<&str>,
    region: &str,
    force_path_style: bool,
) -> StorageKind {
    StorageKind::S3(objstore::S3Config {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        endpoint: endpoint.map(str::to_owned),
        region: region.to_owned(),
        force_path_style,
        timeouts: objstore::S3Timeouts::default(),
    })
}

fn with_storage(storage: StorageOverrides) -> ServeOverrides {
    ServeOverrides {
        storage,
        ..ServeOverrides::default()
    }
}

#[test]
fn storage_defaults_to_the_disk_tier_alone() {
    let default = StorageConfig {
        kind: StorageKind::Fs { path: None },
        abort_uploads_after: DAY,
    };
    assert_eq!(load(None, &ServeOverrides::default()).unwrap().storage, default);
    assert_eq!(load_str("[storage]\n").unwrap().storage, default);
    assert_eq!(load_str("[storage]\nkind = \"fs\"\n").unwrap().storage, default);
    let shared =
        load_str("[storage]\nkind = \"fs\"\npath = \"/mnt/objects\"\nabort_uploads_after = \"2h\"\n")
            .unwrap();
    assert_eq!(
        shared.storage,
        StorageConfig {
            kind: StorageKind::Fs {
                path: Some(PathBuf::from("/mnt/objects"))
            },
            abort_uploads_after: Duration::from_secs(2 * 3600),
        }
    );
}

#[test]
fn s3_storage_with_every_field() {
    let cfg = load_str(
        r#"
        [storage]
        kind = "s3"
        bucket = "my-cache.bucket-1"
        prefix = "regcache/prod"
        endpoint = "http://127.0.0.1:8333"
        region = "eu-west-1"
        force_path_style = true
        abort_uploads_after = "6h"
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg.storage,
        StorageConfig {
            kind: s3(
                "my-cache.bucket-1",
                "regcache/prod",
                Some("http://127.0.0.1:8333"),
                "eu-west-1",
                true
            ),
            abort_uploads_after: Duration::from_secs(6 * 3600),
        }
    );
    // Only what has no default: the rest defaults.
    let cfg = load_str("[storage]\nkind = \"s3\"\nbucket = \"b12\"\nregion = \"us-west-2\"\n").unwrap();
    assert_eq!(
        cfg.storage,
        StorageConfig {
            kind: s3("b12", "", None, "us-west-2", false),
            abort_uploads_after: DAY,
        }
    );
}

/// Each bad `[storage]` body and the text its error must contain.
fn bad_storage() -> Vec<(String, String)> {
    let mut bad: Vec<(String, String)> = [
        (
            "kind = \"s3\"\nregion = \"eu-west-1\"",
            "storage.bucket: is required for kind = \"s3\"",
        ),
        ("kind = \"gcs\"", "storage.kind: unknown kind \"gcs\""),
        ("kind = \"S3\"", "storage.kind: unknown kind \"S3\""),
        (
            "kind = \"s3\"\nbucket = \"b12\"\npath = \"/x\"",
            "storage.path: only applies to kind = \"fs\"",
        ),
        ("kind = \"fs\"\npath = \"\"", "storage.path: must not be empty"),
        (
            "abort_uploads_after = \"10s\"",
            "storage.abort_uploads_after: must be at least 1m",
        ),
        (
            "kind = \"s3\"\nbucket = \"b12\"\nabort_uploads_after = \"59s\"",
            "storage.abort_uploads_after: must be at least 1m",
        ),
        (
            "abort_uploads_after = \"soon\"",
            "storage.abort_uploads_after: invalid duration",
        ),
    ]
    .iter()
    .map(|(text, want)| (text.to_string(), want.to_string()))
    .collect();
    // Fields of the s3 kind under the fs kind, stated or by default.
    for field in [
        "bucket = \"b12\"",
        "prefix = \"p\"",
        "endpoint = \"http://127.0.0.1:8333\"",
        "region = \"eu-west-1\"",
        "force_path_style = false",
    ] {
        let name = field.split(' ').next().unwrap();
        let want = format!("storage.{name}: only applies to kind = \"s3\"");
        bad.push((field.to_owned(), want.clone()));
        bad.push((format!("kind = \"fs\"\n{field}"), want));
    }
    let s3 = |line: String| format!("kind = \"s3\"\nregion = \"eu-west-1\"\n{line}");
    for bucket in [
        "ab",
        "Bucket1",
        "my_bucket",
        "-bucket",
        "bucket-",
        ".bucket",
        "buck et",
        "b\u{e4}cket",
        &"b".repeat(64),
    ] {
        bad.push((
            s3(format!("bucket = \"{bucket}\"")),
            "storage.bucket: invalid bucket name".into(),
        ));
    }
    for prefix in ["../x", "x/../y", "./x", "a//b", "a b", "x/\u{e4}", "a:b"] {
        bad.push((
            s3(format!("bucket = \"b12\"\nprefix = \"{prefix}\"")),
            "storage.prefix: invalid prefix".into(),
        ));
    }
    for (endpoint, want) in [
        ("http://user:pw@host", "must not contain credentials"),
        ("https://key@s3.example", "must not contain credentials"),
        ("ftp://host", "scheme must be http or https"),
        ("minio:9000", "scheme must be http or https"),
        ("not a url", "invalid url"),
    ] {
        bad.push((
            s3(format!("bucket = \"b12\"\nendpoint = \"{endpoint}\"")),
            format!("storage.endpoint: {want}"),
        ));
    }
    bad
}

#[test]
fn bad_storage_values_name_their_field() {
    assert_section_errors("storage", bad_storage());
}

#[test]
fn valid_bucket_names_and_prefixes_load() {
    for (bucket, prefix) in [
        ("abc", ""),
        ("a.b-c.1", "/regcache/"),
        (&*"b".repeat(63), "a/b.c/d-e_f"),
        ("123", "v1"),
    ] {
        let text = format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nregion = \"r\"\n"
        );
        let cfg = load_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(cfg.storage.kind, s3(bucket, prefix, None, "r", false));
    }
}

#[test]
fn s3_flags_switch_the_kind_and_win_over_the_file() {
    // --s3-bucket on a shared-directory file: s3, the directory dropped,
    // the file's other [storage] values kept.
    let file = write("[storage]\nkind = \"fs\"\npath = \"/mnt/objects\"\nabort_uploads_after = \"3h\"\n");
    let overrides = with_storage(StorageOverrides {
        s3_bucket: Some("flag-bucket".into()),
        s3_region: Some("ap-south-1".into()),
        ..StorageOverrides::default()
    });
    let cfg = load(Some(file.path()), &overrides).unwrap();
    assert_eq!(
        cfg.storage,
        StorageConfig {
            kind: s3("flag-bucket", "", None, "ap-south-1", false),
            abort_uploads_after: Duration::from_secs(3 * 3600),
        }
    );
    // The same on top of the embedded default.
    assert_eq!(load(None, &overrides).unwrap().storage.kind, cfg.storage.kind);

    // On an s3 file every flag wins, and a field without a flag keeps the
    // file's value.
    let file = write(
        r#"
        [storage]
        kind = "s3"
        bucket = "file-bucket"
        prefix = "from-file"
        endpoint = "https://s3.file.example"
        region = "eu-west-1"
        "#,
    );
    let all = with_storage(StorageOverrides {
        s3_bucket: Some("flag-bucket".into()),
        s3_prefix: Some("from/flag".into()),
        s3_endpoint: Some("http://127.0.0.1:8333".into()),
        s3_region: Some("us-west-2".into()),
        s3_force_path_style: true,
    });
    assert_eq!(
        load(Some(file.path()), &all).unwrap().storage.kind,
        s3(
            "flag-bucket",
            "from/flag",
            Some("http://127.0.0.1:8333"),
            "us-west-2",
            true
        )
    );
    let some = with_storage(StorageOverrides {
        s3_prefix: Some("from/flag".into()),
        ..StorageOverrides::default()
    });
    assert_eq!(
        load(Some(file.path()), &some).unwrap().storage.kind,
        s3(
            "file-bucket",
            "from/flag",
            Some("https://s3.file.example"),
            "eu-west-1",
            false
        )
    );

    // Flags are checked by the file's rules, under the field's name.
    for (storage, expected) in [
        (
            StorageOverrides {
                s3_bucket: Some("Bad_Bucket".into()),
                ..StorageOverrides::default()
            },
            "storage.bucket: invalid bucket name",
        ),
        (
            StorageOverrides {
                s3_bucket: Some("b12".into()),
                s3_endpoint: Some("http://user:pw@host".into()),
                ..StorageOverrides::default()
            },
            "storage.endpoint: must not contain credentials",
        ),
        (
            StorageOverrides {
                s3_bucket: Some("b12".into()),
                s3_prefix: Some("../x".into()),
                ..StorageOverrides::default()
            },
            "storage.prefix: invalid prefix",
        ),
        // Without --s3-bucket the kind stays fs, which has no prefix.
        (
            StorageOverrides {
                s3_prefix: Some("p".into()),
                ..StorageOverrides::default()
            },
            "storage.prefix: only applies to kind = \"s3\"",
        ),
    ] {
        let err = load(None, &with_storage(storage)).unwrap_err().to_string();
        assert!(err.contains(expected), "gave: {err}\nwant: {expected}");
        assert!(err.starts_with("embedded default: "), "{err}");
    }
}

#[test]
fn rendered_storage_loads_back_to_the_same_config() {
    for (storage, shown) in [
        (
            "kind = \"s3\"\nbucket = \"my-cache\"\nprefix = \"regcache/prod\"\n\
             endpoint = \"http://127.0.0.1:8333\"\nregion = \"eu-west-1\"\n\
             force_path_style = true\nabort_uploads_after = \"6h\"",
            &[
                "kind = \"s3\"",
                "bucket = \"my-cache\"",
                "prefix = \"regcache/prod\"",
                "endpoint = \"http://127.0.0.1:8333\"",
                "region = \"eu-west-1\"",
                "force_path_style = true",
                "abort_uploads_after = \"6h\"",
            ][..],
        ),
        (
            "kind = \"s3\"\nbucket = \"b12\"\nregion = \"us-east-2\"",
            &["kind = \"s3\"", "prefix = \"\"", "force_path_style = false"],
        ),
        (
            "kind = \"fs\"\npath = \"/mnt/objects\"",
            &[
                "kind = \"fs\"",
                "path = \"/mnt/objects\"",
                "abort_uploads_after = \"1day\"",
            ],
        ),
    ] {
        let cfg = load_str(&format!("[storage]\n{storage}\n")).unwrap();
        let rendered = render_redacted(&cfg);
        for line in shown {
            assert!(rendered.contains(line), "no {line} in\n{rendered}");
        }
        assert_eq!(load_str(&rendered).unwrap(), cfg, "{rendered}");
    }
    // The fs kind without a path shows no s3 fields.
    let rendered = render_redacted(&load(None, &ServeOverrides::default()).unwrap());
    assert!(rendered.contains("[storage]\nkind = \"fs\"\n"), "{rendered}");
    for field in [
        "path",
        "bucket",
        "prefix",
        "endpoint",
        "region",
        "force_path_style",
    ] {
        assert!(
            !rendered.contains(&format!("\n{field} = ")),
            "{field} in\n{rendered}"
        );
    }
}
