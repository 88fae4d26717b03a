//! A follower cut off from the other two members (relays on the cluster
//! ports: fault injection) while clients still reach it: it keeps serving
//! what it has, says read-only in `/readyz`, and records nothing the
//! majority did not; after the heal every member answers a tag moved
//! meanwhile with the majority's digest.

use std::time::{Duration, Instant};

use anyhow::ensure;
use testkit::{Cluster, manifest_digest, raw_request, wait_until};

use super::{Recovery, Scale, bucket};
use crate::seed::{Image, Upstream};

/// A tag every member has recorded, which the test moves during the cut.
pub struct Moving {
    image: Image,
    layers: Vec<u64>,
}

impl Moving {
    /// Pushes `library/moving:v1` and pulls it through every member.
    pub fn start(upstream: &mut Upstream, cluster: &Cluster, scale: &Scale) -> anyhow::Result<Moving> {
        let image = upstream.push_image("library/moving", "v1", &scale.layers)?;
        for id in 1..=3 {
            bucket::pull_checked(&cluster.member(id).url(""), &image)?;
        }
        Ok(Moving {
            image,
            layers: scale.layers.clone(),
        })
    }
}

/// Cuts `isolated` off, checks it, waits for `outage`, heals, and measures
/// how soon the group agrees again.
pub fn run(
    cluster: &Cluster,
    isolated: u64,
    leader: u64,
    moving: &Moving,
    upstream: &mut Upstream,
    recovery: &mut Recovery,
    outage: impl FnOnce(),
) -> anyhow::Result<()> {
    let cut = Instant::now();
    cluster.isolate(isolated);
    wait_until(
        Duration::from_secs(30),
        "the isolated member says read-only",
        || {
            let (_, body) = raw_request(&cluster.member(isolated).host(), "GET", "/readyz");
            String::from_utf8_lossy(&body).contains("read-only")
        },
    );
    recovery.read_only = Some(cut.elapsed().as_secs_f64());
    // What it has cached it still serves, without a retry.
    bucket::pull_checked(&cluster.member(isolated).url(""), &moving.image)?;

    let (repo, tag) = (&moving.image.repo, &moving.image.tag);
    let moved = upstream.push_image(repo, tag, &moving.layers)?;
    ensure!(moved.digest != moving.image.digest, "the tag did not move");
    wait_until(Duration::from_secs(30), "the majority sees the moved tag", || {
        manifest_digest(cluster.member(leader), repo, tag) == moved.digest
    });
    outage();

    let healed = Instant::now();
    cluster.heal();
    wait_until(
        Duration::from_secs(60),
        "every member answers the moved tag",
        || (1..=3).all(|id| manifest_digest(cluster.member(id), repo, tag) == moved.digest),
    );
    recovery.tags_agree = Some(healed.elapsed().as_secs_f64());
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(30));
    cluster.caught_up(isolated, leader, Duration::from_secs(60));
    recovery.caught_up = Some(healed.elapsed().as_secs_f64());
    Ok(())
}
