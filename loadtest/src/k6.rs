//! Runs a k6 scenario of `loadtest/k6/` and reads back its summary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// k6 exits with this when thresholds were crossed; the summary is written.
const THRESHOLDS_CROSSED: i32 = 99;

/// Where the scenarios live: next to this crate's sources.
fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("k6")
        .join(format!("{name}.js"))
}

/// One k6 run's end-of-test data (`handleSummary`'s `data`).
pub struct Summary {
    data: Value,
    scenario: String,
}

impl Summary {
    /// `stat` of `metric` (e.g. `count`, `p(99)`, `passes`) in the measured
    /// scenario only: the scripts keep a sub-metric per scenario so that a
    /// `setup()` warm-up stays out of the figures.
    pub fn value(&self, metric: &str, stat: &str) -> Option<f64> {
        self.tagged(metric, "", stat)
    }

    /// [`Summary::value`] of the sub-metric with one more tag, e.g.
    /// `cache:hit` (the scripts keep those for `ttfb`).
    pub fn tagged(&self, metric: &str, tag: &str, stat: &str) -> Option<f64> {
        let more = if tag.is_empty() {
            String::new()
        } else {
            format!(",{tag}")
        };
        let key = format!("{metric}{{scenario:{}{more}}}", self.scenario);
        let values = &self.data["metrics"][key]["values"];
        // A trend the scripts declared but nothing fed has zeros for stats.
        if values["count"].as_f64() == Some(0.0) {
            return None;
        }
        values[stat].as_f64()
    }

    /// A counter's count over the whole run, warm-up included, 0 when
    /// nothing was counted (k6 then omits it): for what must never happen.
    pub fn total(&self, metric: &str) -> f64 {
        self.data["metrics"][metric]["values"]["count"]
            .as_f64()
            .unwrap_or(0.0)
    }

    /// `metric`'s count per second of the measured phase.
    pub fn per_second(&self, metric: &str) -> Option<f64> {
        let run_ms = self.data["state"]["testRunDurationMs"].as_f64()?;
        let warm_ms = self.data["setup_data"]["warmMs"].as_f64().unwrap_or(0.0);
        let seconds = (run_ms - warm_ms) / 1000.0;
        Some(self.value(metric, "count")? / seconds.max(0.001))
    }

    /// `metric{threshold}` for every threshold that failed.
    pub fn crossed_thresholds(&self) -> Vec<String> {
        let Some(metrics) = self.data["metrics"].as_object() else {
            return Vec::new();
        };
        let mut crossed = Vec::new();
        for (name, metric) in metrics {
            if let Some(thresholds) = metric["thresholds"].as_object() {
                for (expr, state) in thresholds {
                    if state["ok"] == false {
                        crossed.push(format!("{name}: {expr}"));
                    }
                }
            }
        }
        crossed
    }
}

/// Runs scenario `name` against `targets` with `plan` and extra `-e`
/// variables; k6's own output goes to the terminal. Crossed thresholds are
/// in the summary, for the caller to judge; anything else k6 fails on is
/// an error.
pub fn run(
    name: &str,
    targets: &[String],
    plan: &Path,
    vars: &[(&str, String)],
    work: &Path,
) -> anyhow::Result<Summary> {
    start(name, targets, plan, vars, work)?.wait()
}

/// A k6 run under way, while the caller does something to the servers.
pub struct Running {
    child: Child,
    name: String,
    summary_path: PathBuf,
}

/// [`run`] without waiting for it.
pub fn start(
    name: &str,
    targets: &[String],
    plan: &Path,
    vars: &[(&str, String)],
    work: &Path,
) -> anyhow::Result<Running> {
    let summary_path = work.join(format!("{name}-summary.json"));
    let _ = std::fs::remove_file(&summary_path);
    let mut cmd = Command::new("k6");
    cmd.args(["run", "--quiet", "--no-usage-report", "--no-color"])
        .args(["-e", &format!("TARGETS={}", targets.join(","))])
        .args(["-e", &format!("PLAN={}", plan.display())])
        .args(["-e", &format!("SUMMARY={}", summary_path.display())]);
    for (key, value) in vars {
        cmd.args(["-e", &format!("{key}={value}")]);
    }
    cmd.arg(scenario_path(name));
    let child = cmd
        .spawn()
        .context("running k6 (installed by scripts/install-test-deps.sh)")?;
    Ok(Running {
        child,
        name: name.to_owned(),
        summary_path,
    })
}

impl Running {
    pub fn wait(mut self) -> anyhow::Result<Summary> {
        let status = self.child.wait()?;
        if !status.success() && status.code() != Some(THRESHOLDS_CROSSED) {
            bail!("k6 {} failed: {status}", self.name);
        }
        let text = std::fs::read(&self.summary_path).with_context(|| {
            format!(
                "k6 {} wrote no summary at {}",
                self.name,
                self.summary_path.display()
            )
        })?;
        let data = serde_json::from_slice(&text).context("parsing k6's summary")?;
        Ok(Summary {
            data,
            scenario: self.name,
        })
    }
}
