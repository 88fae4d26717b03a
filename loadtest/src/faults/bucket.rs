//! What an S3 outage must leave behind: cold pulls served meanwhile, and
//! storing that resumes.

use std::time::{Duration, Instant};

use anyhow::ensure;
use testkit::{ACCEPT_ALL, Bucket, Cluster, S3Server};

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
    let bucket = Bucket::connect(s3);
    let mut round = 0;
    loop {
        round += 1;
        ensure!(
            back.elapsed() < Duration::from_secs(120),
            "nothing was stored in the 2 minutes after S3 came back"
        );
        let image = upstream.push_image(&format!("library/after-s3-down{round}"), "v1", &scale.layers)?;
        pull_checked(&cluster.member(2).url(""), &image)?;
        // Uploads complete after the client got its bytes.
        let stored = image
            .blobs
            .iter()
            .all(|(digest, _)| !bucket.wait_for_blob(digest, Duration::from_secs(3)).is_empty());
        if stored {
            return Ok(back.elapsed().as_secs_f64());
        }
    }
}
