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

pub struct Row {
    figure: String,
    values: Vec<Option<f64>>,
    check: Option<Check>,
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

    /// The checked quantity, its target, and whether it is met; `None` when
    /// unchecked. A figure that could not be measured misses its target.
    fn verdict(&self) -> Option<(Option<f64>, Target, bool)> {
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
        });
        self.rows.last_mut().expect("just pushed")
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
        println!(" {:>8} {:>8}  result", "check", "target");
        for row in &self.rows {
            print!("{:<width$}", row.figure);
            for value in &row.values {
                print!(" {:>14}", value.map_or("-".to_owned(), format_figure));
            }
            match row.verdict() {
                Some((value, target, met)) => println!(
                    " {:>8} {:>8}  {}",
                    value.map_or("-".to_owned(), |v| format!("{v:.2}")),
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
                out
            })
            .collect();
        json!({ "title": self.title, "columns": self.columns, "rows": rows, "notes": self.notes })
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
    fn figures_read_well() {
        assert_eq!(format_figure(1234.56), "1235");
        assert_eq!(format_figure(12.345), "12.3");
        assert_eq!(format_figure(1.2345), "1.23");
        assert_eq!(format_figure(3.0), "3");
        assert_eq!(format_figure(-0.0), "0");
    }
}
