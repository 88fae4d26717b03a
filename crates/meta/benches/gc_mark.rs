//! How long a GC mark takes over a large index (and the cutoff of a byte
//! budget at half its size), and the memory they need:
//! `cargo bench -p meta --bench gc_mark` (add `-- 1000000` for the size the
//! targets are set for: a mark in at most 10 s, at most 512 MiB resident).
//! The smaller index (a tenth) is the baseline the ratio is printed against:
//! a mark that scales linearly prints about 10×.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use meta::Meta;

/// Entries per synthetic image: a manifest, a config, four layers (every
/// tenth image shares its layers, so slightly fewer).
const PER_IMAGE: u64 = 6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let entries: u64 = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(n) => n.parse()?,
        None => 200_000,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut baseline = None;
    for size in [entries / 10, entries] {
        let images = u32::try_from(size / PER_IMAGE)?;
        let dir = tempfile::tempdir()?;
        let built = Instant::now();
        meta::fixtures::synthetic_index(dir.path(), images, now)?;
        let built = built.elapsed();
        let meta = Meta::open_offline(dir.path())?;
        let indexed = meta.stats()?.entries();
        let started = Instant::now();
        let marked = meta.gc_mark(now - 3600)?.len();
        let took = started.elapsed();
        let ratio = baseline.map_or(String::new(), |b: f64| {
            format!(", {:.1}× the baseline", took.as_secs_f64() / b)
        });
        // A budget of half the index: the cutoff that frees the rest.
        let stats = meta.stats()?;
        let budget = (stats.blob_bytes + stats.manifest_bytes) / 2;
        let started = Instant::now();
        let cutoff = meta.gc_budget_cutoff(budget)?;
        let budgeted = started.elapsed();
        println!(
            "mark over {indexed} entries: {took:.2?} ({:.0} entries/s{ratio}), {marked} marked; budget cutoff {cutoff:?} in {budgeted:.2?}; index built in {built:.1?}; peak rss {} MiB",
            indexed as f64 / took.as_secs_f64(),
            peak_rss_mib()?,
        );
        baseline.get_or_insert(took.as_secs_f64());
    }
    Ok(())
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024)
}
