//! What an S3 outage must leave behind: cold pulls served meanwhile, storing
//! that resumes, and nothing half-written in the bucket.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use testkit::{ACCEPT_ALL, Cluster, S3Server};

use super::Scale;
use crate::fetch::get_checked;
use crate::seed::{Image, Upstream};

/// Pulls `image` as a client does, every body checked against its digest.
pub(super) fn pull_checked(base: &str, image: &Image) -> anyhow::Result<()> {
    let accept = format!("Accept: {ACCEPT_ALL}");
    let manifest = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    get_checked(base, &manifest, &[&accept], &image.digest)?;
    for (digest, _) in &image.blobs {
        get_checked(base, &format!("/v2/{}/blobs/{digest}", image.repo), &[], digest)?;
    }
    Ok(())
}

/// Seconds from the S3 server's return until a new image pulled through a
/// member lands in the bucket. A member that found the store unreachable
/// steps around it for a few seconds (misses go unstored meanwhile), so a
/// new cold image is pulled every round until one is stored.
pub(super) fn storing_resumed(
    s3: &S3Server,
    cluster: &Cluster,
    upstream: &mut Upstream,
    scale: &Scale,
) -> anyhow::Result<f64> {
    let back = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (store, _) = runtime.block_on(s3.store("", objstore::S3Timeouts::default()))?;
    let mut round = 0;
    loop {
        round += 1;
        ensure!(
            back.elapsed() < Duration::from_secs(120),
            "nothing was stored in the 2 minutes after S3 came back"
        );
        let image = upstream.push_image(&format!("library/after-s3-down{round}"), "v1", &scale.layers)?;
        pull_checked(&cluster.member(2).url(""), &image)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut stored = true;
            for (digest, _) in &image.blobs {
                let prefix = format!("blobs/sha256/{}/", digest.trim_start_matches("sha256:"));
                stored &= !runtime.block_on(store.list(&prefix))?.is_empty();
            }
            if stored {
                return Ok(back.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Hashes every blob and manifest object against the digest its key names:
/// nothing half-written may be left. Returns how many there are.
pub(super) fn verify_bucket(s3: &S3Server) -> anyhow::Result<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (store, _) = runtime.block_on(s3.store("", objstore::S3Timeouts::default()))?;
    let mut checked = 0;
    for prefix in ["blobs/", "manifests/"] {
        for object in runtime.block_on(store.list(prefix))? {
            let (_, digest, _) = objstore::parse_object_key(&object.key)
                .with_context(|| format!("a foreign key {} in the bucket", object.key))?;
            let (actual, _) = runtime.block_on(testkit::sha256_object(&store, &object.key, None))?;
            ensure!(actual == digest.to_string(), "{} holds {actual}", object.key);
            checked += 1;
        }
    }
    Ok(checked)
}
