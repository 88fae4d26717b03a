//! `regcache gc …`: garbage collection on request, and its record, over
//! any member's cluster port (the request finds the leader by itself).

use std::fmt::Write as _;

use meta::admin;
use meta::{GcPlan, GcReport, GcRunOutcome};

use crate::cli::GcCommand;

pub async fn execute(command: &GcCommand) -> anyhow::Result<String> {
    match command {
        GcCommand::Run {
            cluster,
            dry_run,
            json,
        } => {
            let outcome = admin::gc_run(cluster, *dry_run).await?;
            if *json {
                return Ok(serde_json::to_string_pretty(&outcome)? + "\n");
            }
            Ok(match outcome {
                GcRunOutcome::Planned(plan) => render_plan(&plan),
                GcRunOutcome::Started => {
                    "gc round started on the leader; see `regcache gc status`\n".to_owned()
                }
                GcRunOutcome::Busy => {
                    "a gc round is under way already; see `regcache gc status`\n".to_owned()
                }
            })
        }
        GcCommand::Status { cluster, json } => {
            let report = admin::gc_status(cluster).await?;
            if *json {
                return Ok(serde_json::to_string_pretty(&report)? + "\n");
            }
            Ok(render_report(&report))
        }
    }
}

fn render_plan(plan: &GcPlan) -> String {
    let Some(cutoff) = plan.cutoff else {
        return format!(
            "nothing to collect (no ttl, within the budget); {} idle tags\n",
            plan.tags
        );
    };
    format!(
        "a pass now would condemn {} entries ({} bytes) last served before {} (unix), and drop {} tags\n",
        plan.entries, plan.bytes, cutoff, plan.tags
    )
}

fn render_report(report: &GcReport) -> String {
    let mut out = match report.open_cutoff {
        Some(cutoff) => format!(
            "pass {} open (cutoff {cutoff}): {} entries condemned; {} object keys to sweep\n",
            report.epoch, report.condemned, report.to_sweep
        ),
        None => format!(
            "last pass {}, closed; {} object keys to sweep\n",
            report.epoch, report.to_sweep
        ),
    };
    if report.rounds.is_empty() {
        out.push_str("no round led by this leader yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>11}  {:>8}  {:<9}  {:>5}  {:>9}  {:>7}  {:>12}  {:>6}  {:>7}  {:>4}  errors",
        "started", "seconds", "outcome", "epoch", "condemned", "removed", "bytes", "swept", "orphans", "tags"
    );
    for round in &report.rounds {
        let epoch = round.epoch.map_or_else(|| "-".to_owned(), |e| e.to_string());
        let _ = writeln!(
            out,
            "{:>11}  {:>8.1}  {:<9}  {:>5}  {:>9}  {:>7}  {:>12}  {:>6}  {:>7}  {:>4}  {}",
            round.started_at,
            round.seconds,
            round.outcome,
            epoch,
            round.condemned,
            round.removed,
            round.removed_bytes,
            round.swept,
            round.orphans,
            round.tags_dropped,
            round.errors.join("; ")
        );
    }
    out
}
