//! The upstream registry every setup caches, seeded with random images, and
//! the plan files that tell a k6 scenario what to pull.

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use testkit::{BuiltImage, ImageSpec, LayerCompression, OciLayout, Registry};

pub const MIB: u64 = 1 << 20;

/// One pushed image as a client pulls it.
#[derive(Clone, Debug)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    /// What the tag names: the image manifest, or the index.
    pub digest: String,
    /// Config and layers of the platform a client picks (linux/amd64).
    pub blobs: Vec<(String, u64)>,
}

/// A real `docker-registry` and the layout its images come from.
pub struct Upstream {
    pub registry: Registry,
    layout: OciLayout,
    pushed: usize,
}

impl Upstream {
    /// Layers are plain tar: seeding a 400 MiB layer should not wait on
    /// gzip, and no client unpacks them.
    pub fn start() -> anyhow::Result<Upstream> {
        Ok(Upstream {
            registry: Registry::start().context("starting the upstream registry")?,
            layout: OciLayout::new()?.with_layer_compression(LayerCompression::None),
            pushed: 0,
        })
    }

    pub fn url(&self) -> String {
        self.registry.url()
    }

    /// Pushes a single-platform image of random layers of about these sizes.
    pub fn push_image(&mut self, repo: &str, tag: &str, layers: &[u64]) -> anyhow::Result<Image> {
        let own_tag = self.next_tag();
        let image = self.layout.add_image(&own_tag, &ImageSpec::new(layers))?;
        self.layout
            .push(&own_tag, &self.registry, &format!("{repo}:{tag}"))?;
        self.pulled(repo, tag, &image.manifest_digest, &image)
    }

    /// Pushes an index of a linux/amd64 and a linux/arm64 image, each of
    /// random layers of about these sizes, as multi-platform images are.
    pub fn push_index(&mut self, repo: &str, tag: &str, layers: &[u64]) -> anyhow::Result<Image> {
        let own_tag = self.next_tag();
        let specs = ["amd64", "arm64"].map(|arch| ImageSpec {
            layers: layers.to_vec(),
            arch: arch.into(),
            os: "linux".into(),
        });
        let index = self.layout.add_index(&own_tag, &specs)?;
        self.layout
            .push(&own_tag, &self.registry, &format!("{repo}:{tag}"))?;
        self.pulled(repo, tag, &index.index_digest, &index.images[0])
    }

    /// Path of a pushed blob in the layout (for nginx to serve the same file).
    pub fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        self.layout.blob_path(digest)
    }

    /// GETs of these blobs the upstream has answered since its log was
    /// last cleared.
    pub fn blob_gets(&self, blobs: &[(String, u64)]) -> usize {
        blobs
            .iter()
            .map(|(digest, _)| self.registry.count("GET", &format!("/blobs/{digest}")))
            .sum()
    }

    fn pulled(&self, repo: &str, tag: &str, digest: &str, image: &BuiltImage) -> anyhow::Result<Image> {
        let config_size = std::fs::metadata(self.blob_path(&image.config_digest))?.len();
        let mut blobs = vec![(image.config_digest.clone(), config_size)];
        blobs.extend(image.layer_digests.iter().cloned());
        Ok(Image {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            digest: digest.to_owned(),
            blobs,
        })
    }

    fn next_tag(&mut self) -> String {
        self.pushed += 1;
        format!("seed-{}", self.pushed)
    }
}

/// Writes what a scenario pulls: `images` by tag and, for `ranges`, the
/// layers of `range_images` as blobs. Repositories keep their `library/`
/// prefix: distribution's proxy does not add it as Docker Hub does.
pub fn write_plan(path: &Path, images: &[Image], range_images: &[Image]) -> anyhow::Result<()> {
    let images: Vec<_> = images
        .iter()
        .map(|i| json!({ "repo": i.repo, "tag": i.tag }))
        .collect();
    let blobs: Vec<_> = range_images
        .iter()
        .flat_map(|i| {
            i.blobs
                .iter()
                .skip(1)
                .map(|(digest, size)| json!({ "repo": i.repo, "digest": digest, "size": size }))
        })
        .collect();
    let plan = json!({ "images": images, "blobs": blobs });
    std::fs::write(path, serde_json::to_vec_pretty(&plan)?)
        .with_context(|| format!("writing {}", path.display()))
}
