//! One table of figures per run: a column per server (or setup), a ratio
//! against the anchor measured in the same run, and the target it must meet.
//! Printed for humans, or as JSON for machines.

use serde_json::{Value, json};

/// What a checked figure must be.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// Shown for information: always met.
    Info,
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(limit) => value >= limit,
            Target::AtMost(limit) => value <= limit,
            Target::Info => true,
        }
    }

    fn label(self) -> String {
        match self {
            Target::AtLeast(limit) => format!(">={limit}"),
            Target::AtMost(limit) => format!("<={limit}"),
            Target::Info => "-".to_owned(),
        }
    }
}

/// How a row is checked: a ratio of two of its columns, or one column's
/// value as it is.
#[derive(Clone, Copy, Debug)]
enum Check {
    Ratio {
        of: usize,
        to: usize,
        target: Target,
    },
    Value {
        of: usize,
        target: Target,
    },
    /// Every measured column; the worst one is shown.
    Each {
        target: Target,
    },
}

impl Check {
    fn target(self) -> Target {
        match self {
            Check::Ratio { target, .. } | Check::Value { target, .. } | Check::Each { target } => target,
        }
    }
}

pub struct Row {
    figure: String,
    values: Vec<Option<f64>>,
    check: Option<Check>,
    /// In a summary of several runs: the checked quantity of each run, so
    /// the check is their median (each ratio paired within its own run).
    per_run: Vec<f64>,
}

impl Row {
    /// The figure in column `of` divided by the one in column `to`.
    pub fn ratio(&mut self, of: usize, to: usize, target: Target) {
        self.check = Some(Check::Ratio { of, to, target });
    }

    /// The figure in column `of` itself.
    pub fn limit(&mut self, of: usize, target: Target) {
        self.check = Some(Check::Value { of, target });
    }

    /// Every column's figure (those measured) against `target`.
    pub fn each(&mut self, target: Target) {
        self.check = Some(Check::Each { target });
    }

    /// The lowest and highest checked quantity over the runs of a summary.
    fn range(&self) -> Option<(f64, f64)> {
        let low = self.per_run.iter().copied().reduce(f64::min)?;
        let high = self.per_run.iter().copied().reduce(f64::max)?;
        (self.per_run.len() > 1).then_some((low, high))
    }

    /// The checked quantity, its target, and whether it is met; `None` when
    /// unchecked. A figure that could not be measured misses its target.
    fn verdict(&self) -> Option<(Option<f64>, Target, bool)> {
        if !self.per_run.is_empty() {
            let target = self.check?.target();
            let value = median(&self.per_run);
            return Some((value, target, value.is_some_and(|v| target.met(v))));
        }
        let (value, target) = match self.check? {
            Check::Ratio { of, to, target } => {
                let ratio = match (self.values[of], self.values[to]) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                (ratio, target)
            }
            Check::Value { of, target } => (self.values[of], target),
            Check::Each { target } => {
                let measured = self.values.iter().flatten().copied();
                let worst = match target {
                    Target::AtLeast(_) => measured.reduce(f64::min),
                    Target::AtMost(_) | Target::Info => measured.reduce(f64::max),
                };
                (worst, target)
            }
        };
        Some((value, target, value.is_some_and(|v| target.met(v))))
    }
}

pub struct Report {
    title: String,
    columns: Vec<String>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Report {
        Report {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row; `values` has one entry per column (`None`: not measured
    /// or not applicable). Returns it to attach a check.
    pub fn row(&mut self, figure: impl Into<String>, values: Vec<Option<f64>>) -> &mut Row {
        debug_assert_eq!(values.len(), self.columns.len(), "one value per column");
        self.rows.push(Row {
            figure: figure.into(),
            values,
            check: None,
            per_run: Vec::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Several runs of the same measurement as one table: each figure's
    /// median, and each check's median with its range over the runs.
    pub fn median_of(runs: Vec<Report>) -> Report {
        let Some(first) = runs.first() else {
            return Report::new("no runs", &[]);
        };
        let mut summary = Report::new(
            format!("{}; median of {} runs", first.title, runs.len()),
            &first.columns.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        for (index, row) in first.rows.iter().enumerate() {
            let same: Vec<&Row> = runs.iter().filter_map(|r| r.rows.get(index)).collect();
            debug_assert!(same.iter().all(|r| r.figure == row.figure), "runs differ in rows");
            let values = (0..row.values.len())
                .map(|c| median(&same.iter().filter_map(|r| r.values[c]).collect::<Vec<_>>()))
                .collect();
            let summarized = summary.row(row.figure.clone(), values);
            summarized.check = row.check;
            summarized.per_run = same.iter().filter_map(|r| r.verdict()?.0).collect();
        }
        for run in &runs {
            for note in &run.notes {
                if !summary.notes.contains(note) {
                    summary.notes.push(note.clone());
                }
            }
        }
        summary
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Figures whose target was missed.
    pub fn misses(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.verdict().is_some_and(|(_, _, met)| !met))
            .map(|r| r.figure.as_str())
            .collect()
    }

    pub fn print(&self) {
        let width = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(6).max(6);
        println!("\n{}", self.title);
        print!("{:<width$}", "figure");
        for column in &self.columns {
            print!(" {:>14}", column);
        }
        let ranges = self.rows.iter().any(|r| r.per_run.len() > 1);
        print!(" {:>8}", "check");
        if ranges {
            print!(" {:>11}", "range");
        }
        println!(" {:>8}  result", "target");
        for row in &self.rows {
            print!("{:<width$}", row.figure);
            for value in &row.values {
                print!(" {:>14}", value.map_or("-".to_owned(), format_figure));
            }
            match row.verdict() {
                Some((value, target, met)) => println!(
                    " {:>8}{} {:>8}  {}",
                    value.map_or("-".to_owned(), |v| format!("{v:.2}")),
                    match row.range() {
                        Some((low, high)) => format!(" {:>11}", format!("{low:.2}-{high:.2}")),
                        None if ranges => format!(" {:>11}", ""),
                        None => String::new(),
                    },
                    target.label(),
                    match (target, met) {
                        (Target::Info, _) => "",
                        (_, true) => "PASS",
                        (_, false) => "FAIL",
                    }
                ),
                None => println!(),
            }
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let values: serde_json::Map<String, Value> = self
                    .columns
                    .iter()
                    .zip(&row.values)
                    .map(|(column, value)| (column.clone(), json!(value)))
                    .collect();
                let mut out = json!({ "figure": row.figure, "values": values });
                if let Some((checked, target, met)) = row.verdict() {
                    out["checked"] = json!(checked);
                    out["target"] = json!(target.label());
                    out["pass"] = json!(met);
                }
                if let Some((low, high)) = row.range() {
                    out["runs"] = json!(row.per_run);
                    out["range"] = json!([low, high]);
                }
                out
            })
            .collect();
        json!({ "title": self.title, "columns": self.columns, "rows": rows, "notes": self.notes })
    }
}

/// The middle value (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// Three significant digits or whole numbers, whichever reads better.
fn format_figure(value: f64) -> String {
    let value = value + 0.0; // -0.0 (an empty sum) reads as 0
    if value.abs() >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_limits_are_checked() {
        let mut report = Report::new("t", &["a", "b"]);
        report
            .row("fast", vec![Some(30.0), Some(10.0)])
            .ratio(0, 1, Target::AtLeast(2.5));
        report
            .row("slow", vec![Some(20.0), Some(10.0)])
            .ratio(0, 1, Target::AtLeast(2.5));
        report
            .row("rss", vec![Some(120.0), None])
            .limit(0, Target::AtMost(150.0));
        report
            .row("lost", vec![None, Some(1.0)])
            .ratio(0, 1, Target::AtLeast(1.0));
        report.row("info", vec![Some(1.0), Some(2.0)]);
        report
            .row("worst", vec![Some(0.0), Some(2.0)])
            .each(Target::AtMost(1.0));
        report
            .row("all", vec![Some(5.0), None])
            .each(Target::AtLeast(1.0));
        assert_eq!(report.misses(), ["slow", "lost", "worst"]);
        let json = report.to_json();
        assert_eq!(json["rows"][0]["checked"], 3.0);
        assert_eq!(json["rows"][0]["pass"], true);
        assert_eq!(json["rows"][2]["values"]["b"], Value::Null);
        assert!(json["rows"][4].get("pass").is_none());
    }

    #[test]
    fn several_runs_give_medians_and_ranges() {
        let run = |a: f64, b: f64| {
            let mut report = Report::new("t", &["a", "b"]);
            report
                .row("fast", vec![Some(a), Some(b)])
                .ratio(0, 1, Target::AtLeast(0.8));
            report.note("same note");
            report
        };
        // Ratios 0.5, 1.0 and 0.9: the median is the middle ratio, not the
        // ratio of the medians (1.1 / 1.0).
        let summary = Report::median_of(vec![run(1.0, 2.0), run(1.1, 1.1), run(0.9, 1.0)]);
        assert_eq!(summary.rows[0].values, vec![Some(1.0), Some(1.1)]);
        let json = summary.to_json();
        assert_eq!(json["rows"][0]["checked"], 0.9);
        assert_eq!(json["rows"][0]["range"], json!([0.5, 1.0]));
        assert_eq!(json["rows"][0]["pass"], true);
        assert_eq!(json["notes"], json!(["same note"]));
        assert_eq!(median(&[3.0, 1.0, 2.0, 4.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(format_figure(1234.56), "1235");
        assert_eq!(format_figure(12.345), "12.3");
        assert_eq!(format_figure(1.2345), "1.23");
        assert_eq!(format_figure(3.0), "3");
        assert_eq!(format_figure(-0.0), "0");
    }
}
