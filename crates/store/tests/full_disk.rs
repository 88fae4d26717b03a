//! The disk tier on a filesystem smaller than its capacity (a `disk_bytes`
//! larger than the volume): writes that find no space left evict instead of
//! failing, every file left is whole, and headroom stays free for the
//! metadata beside the tier. Mounts a real tmpfs, so it needs root, as the
//! rest of the suite does.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use oci::Digest;
use rand::RngCore as _;
use store::DiskStore;
use testkit::Tmpfs;

const MIB: u64 = 1 << 20;

/// Bytes the filesystem holding `dir` still has free.
fn available(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .expect("running df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's figure")
}

#[tokio::test]
async fn a_full_filesystem_evicts_instead_of_failing_writes() {
    let fs = Tmpfs::mount(64).expect("a 64 MiB tmpfs");
    let store = DiskStore::open(fs.path(), 1 << 30).expect("opening the tier");
    let mut evicted = 0;
    // 30 blobs of 4 MiB: nearly twice what the filesystem holds.
    for _ in 0..30 {
        let mut body = vec![0u8; (4 * MIB) as usize];
        rand::rng().fill_bytes(&mut body);
        let digest = Digest::sha256_of(&body);
        let mut writer = store.writer(&digest).expect("a writer");
        for chunk in body.chunks(MIB as usize) {
            writer
                .append(Bytes::copy_from_slice(chunk))
                .await
                .expect("a write on a full filesystem makes room");
        }
        let committed = writer.commit().await.expect("the commit");
        evicted += committed.evicted.len();
        assert_eq!(store.size_of(&digest), Some(4 * MIB));
    }
    assert!(evicted >= 10, "the tier evicted to make room: {evicted} blobs");
    assert!(
        available(fs.path()) >= 8 * MIB,
        "headroom stays free for the metadata: {} bytes",
        available(fs.path())
    );
    let files = testkit::verify_disk_tier(fs.path()).expect("every file whole");
    assert_eq!(files, store.digests().len(), "a file per blob the tier holds");
}
