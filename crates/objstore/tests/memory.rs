//! Memory stays flat whatever the object's size: files go up in parts
//! streamed from disk, a writer holds at most `PARTS_IN_FLIGHT + 1` parts,
//! and gets stream. A test binary of its own, so that the peak resident size
//! it reads is this test's alone.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;
use bytes::Bytes;
use objstore::S3Timeouts;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use testkit::S3Server;

const MIB: usize = 1 << 20;
const SIZE: usize = 160 * MIB;

/// Peak resident set size of this process so far, from /proc.
fn peak_rss() -> anyhow::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kib: usize = line.split_whitespace().nth(1).context("empty VmHWM")?.parse()?;
    Ok(kib << 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_keep_memory_flat() -> anyhow::Result<()> {
    let server = S3Server::start()?;
    let (store, _) = server.store("", S3Timeouts::default()).await?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big");
    let mut file = std::fs::File::create(&path)?;
    let mut hash = Sha256::new();
    let mut chunk = vec![0; MIB];
    for _ in 0..SIZE / MIB {
        rand::rng().fill_bytes(&mut chunk);
        hash.update(&chunk);
        file.write_all(&chunk)?;
    }
    drop(file);
    let sha = format!("sha256:{}", hex::encode(hash.finalize()));
    let before = peak_rss()?;

    store.put_file("put", &path, SIZE as u64).await?;
    assert_eq!(testkit::sha256_object(&store, "put", None).await?.0, sha);

    let mut writer = store.multipart("tee")?;
    let mut file = std::fs::File::open(&path)?;
    loop {
        let mut chunk = vec![0; 300_001];
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        writer.write(Bytes::from(chunk)).await?;
    }
    writer.complete().await?;
    assert_eq!(testkit::sha256_object(&store, "tee", None).await?.0, sha);

    let growth = peak_rss()?.saturating_sub(before);
    eprintln!(
        "peak rss grew by {} MiB for {} MiB objects",
        growth / MIB,
        SIZE / MIB
    );
    assert!(growth < 64 * MIB, "peak rss grew by {} MiB", growth / MIB);
    Ok(())
}
