//! One benchmark figure: its value, the baseline measured beside it in the same run, the
//! project's goal for it, and a one-line reading. Written to `target/bench/summary.json` and
//! rendered as `BENCHMARKS.md`.

use serde::{Deserialize, Serialize};

/// What a figure should be, relative to its baseline or absolutely.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// value / baseline ≤ this.
    RatioAtMost(f64),
    /// value / baseline ≥ this.
    RatioAtLeast(f64),
    /// value ≤ this (in the figure's unit).
    AtMost(f64),
    /// value ≥ this.
    AtLeast(f64),
    /// value − baseline ≤ this (in the figure's unit): what the work adds to the same-run
    /// baseline, for a baseline that is itself little more than the measuring loop.
    AboveAtMost(f64),
}

impl Goal {
    fn describe(self, unit: &str) -> String {
        match self {
            Goal::RatioAtMost(r) => format!("≤ {r}× baseline"),
            Goal::RatioAtLeast(r) => format!("≥ {r}× baseline"),
            Goal::AtMost(v) => format!("≤ {} {unit}", number(v)),
            Goal::AtLeast(v) => format!("≥ {} {unit}", number(v)),
            Goal::AboveAtMost(v) => format!("≤ baseline + {} {unit}", number(v)),
        }
    }
}

/// The baseline a figure is compared with, measured in the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable identifier, `section.name`.
    pub id: String,
    pub section: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<Baseline>,
    /// value / baseline.
    pub ratio: Option<f64>,
    pub goal: Option<Goal>,
    /// Whether the goal is met (absent without a goal).
    pub met: Option<bool>,
    /// One line: what the figure says.
    pub reading: String,
}

impl Figure {
    pub fn new(section: &str, id: &str, name: &str, value: f64, unit: &str) -> Figure {
        Figure {
            id: format!("{section}.{id}"),
            section: section.to_owned(),
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            ratio: None,
            goal: None,
            met: None,
            reading: String::new(),
        }
    }

    pub fn against(mut self, name: &str, value: f64) -> Figure {
        self.ratio = Some(self.value / value);
        self.baseline = Some(Baseline {
            name: name.to_owned(),
            value,
        });
        self
    }

    pub fn goal(mut self, goal: Goal) -> Figure {
        let ratio = self.ratio.unwrap_or(f64::NAN);
        self.met = Some(match goal {
            Goal::RatioAtMost(r) => ratio <= r,
            Goal::RatioAtLeast(r) => ratio >= r,
            Goal::AtMost(v) => self.value <= v,
            Goal::AtLeast(v) => self.value >= v,
            Goal::AboveAtMost(v) => {
                self.value - self.baseline.as_ref().map_or(f64::NAN, |b| b.value) <= v
            }
        });
        self.goal = Some(goal);
        self
    }

    /// The reading; `if_missed` is added when the goal is missed (why).
    pub fn reading(mut self, reading: &str, if_missed: &str) -> Figure {
        self.reading = reading.to_owned();
        if self.met == Some(false) && !if_missed.is_empty() {
            self.reading = format!("{reading} Misses its goal: {if_missed}");
        }
        self
    }

    /// A produced figure is a finite number (and so is its ratio).
    pub fn is_valid(&self) -> bool {
        self.value.is_finite() && self.ratio.is_none_or(f64::is_finite)
    }
}

/// A number for the table: three significant digits, thousands kept whole.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The Markdown table of one section.
pub fn table(figures: &[&Figure]) -> String {
    let mut out = String::from(
        "| figure | value | baseline (same run) | ratio | goal | met | reading |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for f in figures {
        let baseline = f.baseline.as_ref().map_or("—".to_owned(), |b| {
            format!("{}: {} {}", b.name, number(b.value), f.unit)
        });
        let ratio = f
            .ratio
            .map_or("—".to_owned(), |r| format!("{}×", number(r)));
        let goal = f.goal.map_or("—".to_owned(), |g| g.describe(&f.unit));
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        out.push_str(&format!(
            "| {} | {} {} | {baseline} | {ratio} | {goal} | {met} | {} |\n",
            f.name,
            number(f.value),
            f.unit,
            f.reading
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_judged_on_the_ratio_or_the_value() {
        let f = Figure::new("kernel", "arp", "ARP", 14.0, "ns")
            .against("empty", 10.0)
            .goal(Goal::RatioAtMost(1.3));
        assert_eq!(f.met, Some(false));
        let f = f.reading("Cheap.", "the parser runs first.");
        assert_eq!(f.reading, "Cheap. Misses its goal: the parser runs first.");
        let f = Figure::new("policy", "rate", "rate", 2e6, "validations/s")
            .goal(Goal::AtLeast(1e6))
            .reading("Fast.", "never shown");
        assert_eq!((f.met, f.reading.as_str()), (Some(true), "Fast."));
        assert!(!Figure::new("a", "b", "c", f64::NAN, "ns").is_valid());
    }

    #[test]
    fn the_table_shows_every_column() {
        let f = Figure::new("kernel", "arp", "ARP", 40.0, "ns")
            .against("empty XDP program", 10.0)
            .goal(Goal::RatioAtMost(1.3))
            .reading("Parsed first.", "");
        let t = table(&[&f]);
        assert!(
            t.contains("| ARP | 40.00 ns | empty XDP program: 10.00 ns | 4.00× | ≤ 1.3× baseline | **no** | Parsed first. |"),
            "{t}"
        );
    }
}
