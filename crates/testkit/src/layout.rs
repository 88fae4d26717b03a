//! OCI image layouts with random content, generated on disk, pushed to a
//! registry with the real skopeo. Every digest and size is computed from the
//! exact bytes written, so tests can compare what a registry or cache serves
//! against what was built.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::layer::{LayerCompression, write_blob, write_layer};
use crate::registry::Registry;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Any fixed time: reproducible configs.
const CREATED: &str = "2023-11-14T22:13:20Z";

/// What one single-platform image consists of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Approximate uncompressed size in bytes of each layer, bottom first.
    pub layers: Vec<u64>,
    pub arch: String,
    pub os: String,
}

impl ImageSpec {
    /// A linux/amd64 image with layers of these approximate sizes; change the
    /// platform with struct update syntax: `ImageSpec { arch: "arm64".into(), ..ImageSpec::new(&[1000]) }`.
    pub fn new(layers: &[u64]) -> ImageSpec {
        ImageSpec {
            layers: layers.to_vec(),
            arch: "amd64".into(),
            os: "linux".into(),
        }
    }
}

/// A manifest that was written into a layout, with its blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub manifest_digest: String,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: String,
    /// Digest and size of each layer blob as stored (compressed), bottom first.
    pub layer_digests: Vec<(String, u64)>,
    /// The manifest's media type.
    pub media_type: String,
}

impl BuiltImage {
    /// Every blob the manifest references: the config, then the layers.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(self.config_digest.clone())
            .chain(self.layer_digests.iter().map(|(d, _)| d.clone()))
            .collect()
    }
}

/// A multi-platform index that was written into a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltIndex {
    pub index_digest: String,
    pub index_bytes: Vec<u8>,
    /// The platform images, in the order of the specs.
    pub images: Vec<BuiltImage>,
}

/// A temp dir holding an OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/…`), removed on drop.
pub struct OciLayout {
    dir: TempDir,
    blobs: PathBuf,
    /// Tagged top-level descriptors, in the order they were added.
    tags: Vec<(String, Value)>,
    compression: LayerCompression,
    rng: SmallRng,
}

impl OciLayout {
    pub fn new() -> anyhow::Result<OciLayout> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-oci-")
            .tempdir()
            .context("creating a layout dir")?;
        let blobs = dir.path().join("blobs").join("sha256");
        fs::create_dir_all(&blobs).context("creating blobs/sha256")?;
        fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .context("writing oci-layout")?;
        let layout = OciLayout {
            dir,
            blobs,
            tags: Vec::new(),
            compression: LayerCompression::default(),
            rng: SmallRng::from_os_rng(),
        };
        layout.write_index()?;
        Ok(layout)
    }

    /// How layers added from now on are stored (gzip unless told otherwise).
    pub fn with_layer_compression(mut self, compression: LayerCompression) -> OciLayout {
        self.compression = compression;
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of a blob in this layout, e.g. to read a layer back.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs.join(digest.trim_start_matches("sha256:"))
    }

    /// Adds a single-platform OCI image manifest of random layers under `tag`
    /// (replacing an earlier one of that tag).
    pub fn add_image(&mut self, tag: &str, spec: &ImageSpec) -> anyhow::Result<BuiltImage> {
        let image = self.build_image(spec)?;
        self.tag(
            tag,
            descriptor(&image.media_type, &image.manifest_bytes, &image.manifest_digest),
        );
        self.write_index()?;
        Ok(image)
    }

    /// Adds an OCI image index with one image per spec, listing each with its
    /// platform, under `tag`.
    pub fn add_index(&mut self, tag: &str, specs: &[ImageSpec]) -> anyhow::Result<BuiltIndex> {
        let mut images = Vec::with_capacity(specs.len());
        let mut manifests = Vec::with_capacity(specs.len());
        for spec in specs {
            let image = self.build_image(spec)?;
            let mut entry = descriptor(&image.media_type, &image.manifest_bytes, &image.manifest_digest);
            entry["platform"] = json!({ "architecture": spec.arch, "os": spec.os });
            manifests.push(entry);
            images.push(image);
        }
        let index_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))?;
        let (index_digest, _) = write_blob(&self.blobs, &index_bytes)?;
        self.tag(tag, descriptor(OCI_INDEX, &index_bytes, &index_digest));
        self.write_index()?;
        Ok(BuiltIndex {
            index_digest,
            index_bytes,
            images,
        })
    }

    /// Adds a non-image artifact with one layer of the given bytes, shaped as
    /// Helm pushes charts (config `application/vnd.cncf.helm.config.v1+json`,
    /// layer `application/vnd.cncf.helm.chart.content.v1.tar+gzip`). The
    /// config blob is `{}`.
    pub fn add_artifact(
        &mut self,
        tag: &str,
        config_media_type: &str,
        layer_media_type: &str,
        layer: &[u8],
    ) -> anyhow::Result<BuiltImage> {
        let (config_digest, config_size) = write_blob(&self.blobs, b"{}")?;
        let (layer_digest, layer_size) = write_blob(&self.blobs, layer)?;
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": config_media_type, "digest": config_digest, "size": config_size },
            "layers": [{ "mediaType": layer_media_type, "digest": layer_digest, "size": layer_size }],
        }))?;
        let (manifest_digest, _) = write_blob(&self.blobs, &manifest_bytes)?;
        self.tag(tag, descriptor(OCI_MANIFEST, &manifest_bytes, &manifest_digest));
        self.write_index()?;
        Ok(BuiltImage {
            manifest_digest,
            manifest_bytes,
            config_digest,
            layer_digests: vec![(layer_digest, layer_size)],
            media_type: OCI_MANIFEST.into(),
        })
    }

    /// Pushes what `tag` names (every platform of an index) to
    /// `registry` as `dest_repo_and_tag`, e.g. `library/app:v1`. Digests are
    /// preserved or the push fails.
    pub fn push(&self, tag: &str, registry: &Registry, dest_repo_and_tag: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.tags.iter().any(|(t, _)| t == tag),
            "no tag {tag} in this layout"
        );
        let src = format!("oci:{}:{tag}", self.path().display());
        let dest = format!("docker://{}/{dest_repo_and_tag}", registry.host());
        crate::skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src,
            &dest,
        ])
        .with_context(|| format!("pushing {tag} to {dest}"))?;
        Ok(())
    }

    fn build_image(&mut self, spec: &ImageSpec) -> anyhow::Result<BuiltImage> {
        let mut layers = Vec::with_capacity(spec.layers.len());
        for &size in &spec.layers {
            layers.push(write_layer(&self.blobs, size, self.compression, &mut self.rng)?);
        }
        let config = serde_json::to_vec(&json!({
            "created": CREATED,
            "architecture": spec.arch,
            "os": spec.os,
            "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": spec.layers.iter().map(|size| json!({
                "created": CREATED,
                "created_by": format!("testkit: random layer of about {size} bytes"),
            })).collect::<Vec<_>>(),
        }))?;
        let (config_digest, config_size) = write_blob(&self.blobs, &config)?;
        let media_type = self.compression.media_type();
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size },
            "layers": layers.iter().map(|l| json!({
                "mediaType": media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        }))?;
        let (manifest_digest, _) = write_blob(&self.blobs, &manifest_bytes)?;
        Ok(BuiltImage {
            manifest_digest,
            manifest_bytes,
            config_digest,
            layer_digests: layers.into_iter().map(|l| (l.digest, l.size)).collect(),
            media_type: OCI_MANIFEST.into(),
        })
    }

    fn tag(&mut self, tag: &str, mut descriptor: Value) {
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        self.tags.retain(|(t, _)| t != tag);
        self.tags.push((tag.to_string(), descriptor));
    }

    /// Rewrites `index.json`, the layout's table of tags.
    fn write_index(&self) -> anyhow::Result<()> {
        let manifests: Vec<&Value> = self.tags.iter().map(|(_, d)| d).collect();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))?;
        fs::write(self.path().join("index.json"), index).context("writing index.json")
    }
}

fn descriptor(media_type: &str, bytes: &[u8], digest: &str) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_json(path: &Path) -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&fs::read(path)?)?)
    }

    #[test]
    fn image_blobs_are_stored_under_their_digests() -> anyhow::Result<()> {
        let mut layout = OciLayout::new()?;
        let image = layout.add_image("v1", &ImageSpec::new(&[2000, 50_000]))?;
        assert_eq!(image.blob_digests().len(), 3);
        for digest in image.blob_digests() {
            assert_eq!(crate::sha256_file(&layout.blob_path(&digest))?, digest);
        }
        for (digest, size) in &image.layer_digests {
            assert_eq!(fs::metadata(layout.blob_path(digest))?.len(), *size);
        }
        assert_eq!(crate::sha256_bytes(&image.manifest_bytes), image.manifest_digest);

        let manifest: Value = serde_json::from_slice(&image.manifest_bytes)?;
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(
            manifest["layers"][1]["mediaType"],
            LayerCompression::Gzip.media_type()
        );
        assert_eq!(manifest["layers"][1]["size"], image.layer_digests[1].1);
        let config = read_json(&layout.blob_path(&image.config_digest))?;
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            manifest["config"]["size"],
            fs::metadata(layout.blob_path(&image.config_digest))?.len()
        );
        Ok(())
    }

    #[test]
    fn index_json_lists_tags_once() -> anyhow::Result<()> {
        let mut layout = OciLayout::new()?.with_layer_compression(LayerCompression::None);
        layout.add_image("a", &ImageSpec::new(&[100]))?;
        let second = layout.add_image("a", &ImageSpec::new(&[100]))?;
        let index = layout.add_index(
            "multi",
            &[
                ImageSpec::new(&[100]),
                ImageSpec {
                    arch: "arm64".into(),
                    ..ImageSpec::new(&[100, 200])
                },
            ],
        )?;
        let top = read_json(&layout.path().join("index.json"))?;
        let tags = top["manifests"].as_array().context("manifests")?;
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0]["digest"], second.manifest_digest.as_str());
        assert_eq!(tags[1]["digest"], index.index_digest.as_str());
        assert_eq!(
            tags[1]["annotations"]["org.opencontainers.image.ref.name"],
            "multi"
        );

        let listed: Value = serde_json::from_slice(&index.index_bytes)?;
        assert_eq!(listed["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(
            listed["manifests"][1]["digest"],
            index.images[1].manifest_digest.as_str()
        );
        assert_eq!(
            listed["manifests"][1]["size"],
            index.images[1].manifest_bytes.len()
        );
        let manifest: Value = serde_json::from_slice(&index.images[0].manifest_bytes)?;
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            LayerCompression::None.media_type()
        );
        Ok(())
    }
}
