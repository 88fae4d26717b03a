//! The object tier against a real SeaweedFS (testkit::S3Server) and against
//! a local directory: every test body runs on both kinds of store.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use objstore::{FsStore, MultipartWriter, ObjStoreError, ObjectStore, S3Config, S3Store, S3Timeouts};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use testkit::S3Server;

const MIB: usize = 1 << 20;
/// Keys in the bucket live under this prefix, to cover the prefix handling.
const PREFIX: &str = "cache-a";

/// One store under test and what keeps it alive.
struct Fixture {
    name: &'static str,
    store: ObjectStore,
    /// The bucket seen directly, to check what the store does not show.
    raw: Option<(aws_sdk_s3::Client, String)>,
    fs_root: Option<TempDir>,
    _server: Option<S3Server>,
}

async fn fixtures() -> anyhow::Result<Vec<Fixture>> {
    let root = tempfile::tempdir()?;
    let fs = Fixture {
        name: "fs",
        store: ObjectStore::Fs(FsStore::new(root.path())?),
        raw: None,
        fs_root: Some(root),
        _server: None,
    };
    let server = S3Server::start()?;
    let (store, raw) = server.store(PREFIX, S3Timeouts::default()).await?;
    let s3 = Fixture {
        name: "s3",
        store,
        raw: Some((raw, server.bucket().to_owned())),
        fs_root: None,
        _server: Some(server),
    };
    Ok(vec![fs, s3])
}

/// Runs `body` on every kind of store, naming the kind in a failure.
macro_rules! on_each_store {
    ($body:expr) => {{
        for f in fixtures().await? {
            let started = Instant::now();
            $body(&f)
                .await
                .with_context(|| format!("on the {} store", f.name))?;
            eprintln!("{}: {:?}", f.name, started.elapsed());
        }
        Ok(())
    }};
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Writes `len` random bytes to a file, 1 MiB at a time; returns its sha256.
fn random_file(path: &Path, len: usize) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let mut hash = Sha256::new();
    let mut left = len;
    while left > 0 {
        let chunk = random_bytes(left.min(MIB));
        hash.update(&chunk);
        file.write_all(&chunk)?;
        left -= chunk.len();
    }
    Ok(format!("sha256:{}", hex::encode(hash.finalize())))
}

async fn read_all(store: &ObjectStore, key: &str, range: Option<(u64, u64)>) -> anyhow::Result<Vec<u8>> {
    let body = store
        .get(key, range)
        .await?
        .with_context(|| format!("{key} is missing"))?;
    let chunks: Vec<Bytes> = body.try_collect().await?;
    Ok(chunks.concat())
}

/// Uploads not completed nor aborted, seen behind the store's back.
async fn open_uploads(f: &Fixture) -> anyhow::Result<usize> {
    if let Some((raw, bucket)) = &f.raw {
        let out = raw.list_multipart_uploads().bucket(bucket).send().await?;
        return Ok(out.uploads().len());
    }
    let root = f.fs_root.as_ref().context("an fs fixture has a root")?;
    let mut temps = 0;
    let mut dirs = vec![root.path().to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                temps += 1;
            }
        }
    }
    Ok(temps)
}

/// Feeds `data` in chunks of awkward sizes.
async fn write_odd_chunks(writer: &mut MultipartWriter, data: &[u8]) -> anyhow::Result<()> {
    let sizes = [1, 7919, 65_537, MIB + 3, 3 * MIB - 1];
    let mut offset = 0;
    for size in sizes.iter().cycle() {
        if offset == data.len() {
            break;
        }
        let end = (offset + size).min(data.len());
        writer.write(Bytes::copy_from_slice(&data[offset..end])).await?;
        offset = end;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_file_small_and_large() -> anyhow::Result<()> {
    on_each_store!(async |f: &Fixture| -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        for (name, len, parts) in [
            ("small", 1000, None),
            ("exact", 8 * MIB, None),
            ("large", 20 * MIB + 123, Some(3)),
        ] {
            let path = dir.path().join(name);
            let sha = random_file(&path, len)?;
            let key = format!("put/{name}");
            f.store.put_file(&key, &path, len as u64).await?;
            assert_eq!(f.store.head(&key).await?, Some(len as u64));
            assert_eq!(
                testkit::sha256_object(&f.store, &key, None).await?,
                (sha, len as u64)
            );
            if let (Some((raw, bucket)), Some(parts)) = (&f.raw, parts) {
                let head = raw
                    .head_object()
                    .bucket(bucket)
                    .key(format!("{PREFIX}/{key}"))
                    .send()
                    .await?;
                let etag = head.e_tag().unwrap_or_default();
                assert!(
                    etag.trim_matches('"').ends_with(&format!("-{parts}")),
                    "etag {etag}: not {parts} parts"
                );
            }
        }
        // A file of another size than announced is refused and leaves nothing.
        let path = dir.path().join("short");
        random_file(&path, 100)?;
        assert!(f.store.put_file("put/short", &path, 101).await.is_err());
        assert_eq!(f.store.head("put/short").await?, None);
        assert_eq!(open_uploads(f).await?, 0);
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_writer_in_odd_chunks() -> anyhow::Result<()> {
    on_each_store!(async |f: &Fixture| -> anyhow::Result<()> {
        for (name, len) in [("empty", 0), ("small", 100_000), ("large", 17 * MIB + 5)] {
            let data = random_bytes(len);
            let key = format!("mp/{name}");
            let mut writer = f.store.multipart(&key)?;
            write_odd_chunks(&mut writer, &data).await?;
            assert_eq!(f.store.head(&key).await?, None, "visible before complete");
            writer.complete().await?;
            assert_eq!(f.store.head(&key).await?, Some(len as u64));
            assert_eq!(read_all(&f.store, &key, None).await?, data);
        }
        assert_eq!(open_uploads(f).await?, 0);
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_and_dropped_uploads_leave_nothing() -> anyhow::Result<()> {
    on_each_store!(async |f: &Fixture| -> anyhow::Result<()> {
        let data = random_bytes(9 * MIB);
        let mut writer = f.store.multipart("abort/explicit")?;
        write_odd_chunks(&mut writer, &data).await?;
        assert_eq!(open_uploads(f).await?, 1);
        writer.abort().await?;
        assert_eq!(f.store.head("abort/explicit").await?, None);
        assert_eq!(open_uploads(f).await?, 0);

        let mut writer = f.store.multipart("abort/dropped")?;
        write_odd_chunks(&mut writer, &data).await?;
        drop(writer);
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_uploads(f).await? > 0 {
            anyhow::ensure!(Instant::now() < deadline, "the dropped upload was not aborted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(f.store.head("abort/dropped").await?, None);
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_uploads_are_aborted() -> anyhow::Result<()> {
    on_each_store!(async |f: &Fixture| -> anyhow::Result<()> {
        let mut writer = f.store.multipart("stale/upload")?;
        write_odd_chunks(&mut writer, &random_bytes(9 * MIB)).await?;
        assert_eq!(f.store.abort_stale_uploads(Duration::from_secs(3600)).await?, 0);
        assert_eq!(open_uploads(f).await?, 1);
        assert_eq!(f.store.abort_stale_uploads(Duration::ZERO).await?, 1);
        assert_eq!(open_uploads(f).await?, 0);
        // Its writer finds the upload gone.
        assert!(writer.complete().await.is_err());
        assert_eq!(f.store.head("stale/upload").await?, None);
        assert_eq!(f.store.abort_stale_uploads(Duration::ZERO).await?, 0);
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_gets_head_and_missing_keys() -> anyhow::Result<()> {
    on_each_store!(async |f: &Fixture| -> anyhow::Result<()> {
        let data = random_bytes(MIB + 1);
        let size = data.len() as u64;
        let mut writer = f.store.multipart("range/obj")?;
        writer.write(Bytes::from(data.clone())).await?;
        writer.complete().await?;
        assert_eq!(f.store.head("range/obj").await?, Some(size));
        for (start, end) in [
            (0, 10),
            (500_000, 500_100),
            (size - 10, size),
            (0, size),
            (size - 5, size + 100),
        ] {
            let got = read_all(&f.store, "range/obj", Some((start, end))).await?;
            let end = end.min(size);
            assert_eq!(got, &data[start as usize..end as usize], "range {start}..{end}");
        }
        for bad in [(size, size + 1), (7, 7)] {
            let err = f.store.get("range/obj", Some(bad)).await.err();
            assert!(
                matches!(err, Some(ObjStoreError::InvalidRange { .. })),
                "{bad:?}: {err:?}"
            );
        }
        assert!(f.store.get("range/missing", None).await?.is_none());
        assert!(f.store.get("range/missing", Some((0, 1))).await?.is_none());
        assert_eq!(f.store.head("range/missing").await?, None);
        assert!(matches!(
            f.store.head("../escape").await,
            Err(ObjStoreError::InvalidKey(_))
        ));
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paginates_and_delete_batches() -> anyhow::Result<()> {
    on_each_store!(async |f: &Fixture| -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tiny");
        std::fs::write(&path, b"tiny")?;
        // More than one page of ListObjectsV2 and one DeleteObjects batch.
        let mut keys: Vec<String> = (0..1003).map(|i| format!("list/{:02}/k{i:04}", i % 7)).collect();
        let started = Instant::now();
        futures_util::stream::iter(&keys)
            .map(|key| f.store.put_file(key, &path, 4))
            .buffer_unordered(32)
            .try_collect::<()>()
            .await?;
        eprintln!("{}: 1003 puts in {:?}", f.name, started.elapsed());
        f.store.put_file("lisx/a", &path, 4).await?;
        f.store.put_file("other/b", &path, 4).await?;
        keys.sort();

        if let Some((raw, bucket)) = &f.raw {
            let page = raw
                .list_objects_v2()
                .bucket(bucket)
                .prefix(format!("{PREFIX}/list/"))
                .send()
                .await?;
            assert_eq!(
                page.is_truncated(),
                Some(true),
                "one page holds every key: pagination untested"
            );
        }
        let listed = f.store.list("list/").await?;
        assert_eq!(listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(), keys);
        assert!(listed.iter().all(|o| o.size == 4));
        let now = std::time::SystemTime::now();
        assert!(
            listed
                .iter()
                .all(|o| now.duration_since(o.last_modified).unwrap_or_default() < Duration::from_secs(600))
        );
        for prefix in ["list/03/", "list/03/k00", "list/03/k000"] {
            let expected = keys.iter().filter(|k| k.starts_with(prefix)).count();
            assert_eq!(f.store.list(prefix).await?.len(), expected, "{prefix}");
        }
        assert_eq!(f.store.list("lis").await?.len(), 1004);
        assert_eq!(f.store.list("list/03/k0003").await?.len(), 1);
        assert!(f.store.list("nothing/").await?.is_empty());

        let mut doomed = keys.clone();
        doomed.push("list/never-written".into());
        f.store.delete(&doomed).await?;
        assert!(f.store.list("list/").await?.is_empty());
        let rest: Vec<String> = f.store.list("").await?.into_iter().map(|o| o.key).collect();
        assert_eq!(rest, ["lisx/a", "other/b"]);
        Ok(())
    })
}

/// With the server gone, every operation fails within a bounded time and
/// says the store is unavailable; once it is back, the same store works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable() -> anyhow::Result<()> {
    let mut server = S3Server::start()?;
    let timeouts = S3Timeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_secs(2),
        max_attempts: 2,
    };
    let (store, _) = server.store(PREFIX, timeouts).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("file");
    random_file(&path, 10 * MIB)?;
    store.put_file("before", &path, 10 * MIB as u64).await?;
    let small = dir.path().join("small");
    random_file(&small, 1000)?;
    let mut writer = store.multipart("during")?;
    writer.write(Bytes::from(random_bytes(9 * MIB))).await?;

    server.stop();
    let started = Instant::now();
    let results: Vec<(&str, Result<(), ObjStoreError>)> = vec![
        ("put small", store.put_file("k", &small, 1000).await),
        ("put large", store.put_file("k", &path, 10 * MIB as u64).await),
        ("get", store.get("before", None).await.map(drop)),
        ("head", store.head("before").await.map(drop)),
        ("list", store.list("").await.map(drop)),
        ("delete", store.delete(&["before".into()]).await),
        (
            "abort stale",
            store.abort_stale_uploads(Duration::ZERO).await.map(drop),
        ),
        ("complete", writer.complete().await),
    ];
    let elapsed = started.elapsed();
    for (op, result) in &results {
        let err = result.as_ref().err().with_context(|| format!("{op} succeeded"))?;
        assert!(err.is_unavailable(), "{op}: {err}");
        let text = err.to_string();
        assert!(!text.contains(server.secret_key()), "{op}: {text}");
        eprintln!("{op}: {text}");
    }
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");

    server.restart()?;
    assert_eq!(store.head("before").await?, Some(10 * MIB as u64));
    Ok(())
}

/// A server that accepts connections and never answers: requests end with
/// the attempt timeout, as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "not-a-secret", None, None, "test"))
        .load()
        .await;
    let cfg = S3Config {
        bucket: "bucket".to_owned(),
        prefix: String::new(),
        endpoint: Some(format!("http://{}", listener.local_addr()?)),
        region: "us-east-1".to_owned(),
        force_path_style: true,
        timeouts: S3Timeouts {
            connect: Duration::from_millis(500),
            attempt: Duration::from_millis(700),
            max_attempts: 2,
        },
    };
    let store = ObjectStore::S3(S3Store::with_sdk_config(cfg, &shared)?);
    let started = Instant::now();
    let err = store
        .head("key")
        .await
        .err()
        .context("a silent server answered")?;
    let elapsed = started.elapsed();
    assert!(err.is_unavailable(), "{err}");
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    eprintln!("{err} after {elapsed:?}");
    drop(listener);
    Ok(())
}
