//! The prologue of most tests: a real registry with an image pushed to it.

use crate::{BuiltImage, ImageSpec, OciLayout, Registry};

/// A running registry, the layout its images came from, and the first
/// image pushed.
pub struct SeededRegistry {
    pub registry: Registry,
    pub layout: OciLayout,
    pub image: BuiltImage,
    pushed: usize,
}

impl SeededRegistry {
    /// Starts a registry and pushes an image of random layers of these
    /// sizes as `dest`, e.g. `library/app:v1`.
    pub fn start(layers: &[u64], dest: &str) -> anyhow::Result<SeededRegistry> {
        Self::start_with(OciLayout::new()?, &ImageSpec::new(layers), dest)
    }

    /// [`SeededRegistry::start`] from a prepared layout (e.g. uncompressed
    /// layers) and a full image spec.
    pub fn start_with(layout: OciLayout, spec: &ImageSpec, dest: &str) -> anyhow::Result<SeededRegistry> {
        let registry = Registry::start()?;
        let mut layout = layout;
        let image = push(&mut layout, 0, &registry, spec, dest)?;
        Ok(SeededRegistry {
            registry,
            layout,
            image,
            pushed: 1,
        })
    }

    /// Pushes another image as `dest`; returns it.
    pub fn push(&mut self, spec: &ImageSpec, dest: &str) -> anyhow::Result<BuiltImage> {
        let image = push(&mut self.layout, self.pushed, &self.registry, spec, dest)?;
        self.pushed += 1;
        Ok(image)
    }

    /// The registry's URL, for the cache's `--upstream`.
    pub fn url(&self) -> String {
        self.registry.url()
    }
}

/// Adds the `n`th image to `layout` and pushes it as `dest`; the layout's
/// own tag only has to be unique within it.
fn push(
    layout: &mut OciLayout,
    n: usize,
    registry: &Registry,
    spec: &ImageSpec,
    dest: &str,
) -> anyhow::Result<BuiltImage> {
    let tag = format!("seed-{n}");
    let image = layout.add_image(&tag, spec)?;
    layout.push(&tag, registry, dest)?;
    Ok(image)
}
