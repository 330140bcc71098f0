//! Per-day bar charts stacked by model, user or key: the top groups by cost in the range, then
//! "other" for the rest (SPEC §11.6). Server-rendered SVG; each segment carries its exact value in
//! `data-value` and its title, so what is drawn can be checked against the daily summaries.

use std::collections::HashMap;

use crate::billing::money::Usd;
use crate::http::admin::format;
use crate::http::admin::view::{nice_ceiling, GridLine, Tick};
use crate::store::views::DayGroupTotal;

/// How many groups (models, users, keys) get a series of their own; the rest are "other".
pub const TOP_MODELS: usize = 5;
/// The key of the series summing the groups outside the top.
pub const OTHER: &str = "other";

const LEFT: f64 = 72.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;
const HEIGHT: u32 = 240;

/// What a chart stacks: a day's requests or its cost.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Requests,
    Cost,
}

impl Measure {
    fn of(self, t: &DayGroupTotal) -> i64 {
        match self {
            Measure::Requests => t.requests,
            Measure::Cost => t.cost,
        }
    }
    /// Exact: an integer count, or USD as a decimal string.
    fn exact(self, v: i64) -> String {
        match self {
            Measure::Requests => v.to_string(),
            Measure::Cost => Usd(v).to_string(),
        }
    }
    fn shown(self, v: i64) -> String {
        match self {
            Measure::Requests => format::count(v),
            Measure::Cost => format::usd(Usd(v)),
        }
    }
}

pub struct Legend {
    /// The series key (`data-series`).
    pub series: String,
    pub name: String,
    /// CSS class of its colour (`s0`…`s5`).
    pub class: String,
    /// Its total over the range, as shown.
    pub total: String,
}

pub struct Segment {
    pub series: String,
    pub class: String,
    pub day: String,
    /// The exact value (`data-value`).
    pub value: String,
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    /// Tooltip: `2026-01-31 · gpt-4o: $1.25`.
    pub tip: String,
}

pub struct StackedChart {
    pub id: &'static str,
    pub title: String,
    /// The translation key naming "other" (other models, users or keys).
    pub other_label: &'static str,
    pub width: u32,
    pub height: u32,
    pub legend: Vec<Legend>,
    pub segments: Vec<Segment>,
    pub grid: Vec<GridLine>,
    pub ticks: Vec<Tick>,
    pub empty: bool,
}

/// One series: its key (a model, or a user or key id) and the name shown for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub key: String,
    pub name: String,
}

/// The series: the `top` groups (largest cost first, as (key, name)), then "other" when any
/// usage falls outside them.
pub fn series(top: &[(String, String)], rows: &[DayGroupTotal]) -> Vec<Series> {
    let mut all: Vec<Series> = top
        .iter()
        .take(TOP_MODELS)
        .map(|(key, name)| Series {
            key: key.clone(),
            name: name.clone(),
        })
        .collect();
    if rows.iter().any(|r| !all.iter().any(|s| s.key == r.key())) {
        all.push(Series {
            key: OTHER.to_string(),
            name: OTHER.to_string(),
        });
    }
    all
}

impl StackedChart {
    /// `days`: every day of the range in order; `rows`: that range's totals per day and group;
    /// `series` from [`series`]; `other_label`: the translation key naming "other".
    pub fn new(
        id: &'static str,
        title: String,
        other_label: &'static str,
        measure: Measure,
        days: &[String],
        series: &[Series],
        rows: &[DayGroupTotal],
    ) -> StackedChart {
        let width = 720u32;
        let index: HashMap<&str, usize> = series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i))
            .collect();
        let other = index.get(OTHER).copied();
        // values[day][series]
        let day_index: HashMap<&str, usize> = days
            .iter()
            .enumerate()
            .map(|(i, d)| (d.as_str(), i))
            .collect();
        let mut values = vec![vec![0i64; series.len()]; days.len()];
        for r in rows {
            let (Some(&d), Some(s)) = (
                day_index.get(r.day.as_str()),
                index.get(r.key().as_str()).copied().or(other),
            ) else {
                continue;
            };
            values[d][s] += measure.of(r);
        }
        let max = values
            .iter()
            .map(|v| v.iter().sum::<i64>())
            .max()
            .unwrap_or(0);
        let min_step = match measure {
            Measure::Requests => 1.0,
            Measure::Cost => 0.0,
        };
        let scale = |v: i64| match measure {
            Measure::Requests => v as f64,
            Measure::Cost => v as f64 / 1e9,
        };
        let top = 4.0 * nice_ceiling(scale(max) / 4.0).max(min_step);
        let plot_w = width as f64 - LEFT - 8.0;
        let plot_h = HEIGHT as f64 - TOP - BOTTOM;
        let slot = plot_w / days.len().max(1) as f64;
        let bar_w = (slot * 0.7).max(1.0);
        let mut segments = Vec::new();
        for (d, day) in days.iter().enumerate() {
            let mut base = 0.0;
            for (s, ser) in series.iter().enumerate() {
                let v = values[d][s];
                if v == 0 {
                    continue;
                }
                let h = scale(v) / top * plot_h;
                segments.push(Segment {
                    series: ser.key.clone(),
                    class: class_of(s, &ser.key),
                    day: day.clone(),
                    value: measure.exact(v),
                    x: format!("{:.1}", LEFT + d as f64 * slot + (slot - bar_w) / 2.0),
                    y: format!("{:.1}", TOP + plot_h - base - h),
                    w: format!("{bar_w:.1}"),
                    h: format!("{h:.1}"),
                    tip: format!("{day} · {}: {}", ser.name, measure.shown(v)),
                });
                base += h;
            }
        }
        let legend = series
            .iter()
            .enumerate()
            .map(|(s, ser)| Legend {
                series: ser.key.clone(),
                name: ser.name.clone(),
                class: class_of(s, &ser.key),
                total: measure.shown(values.iter().map(|v| v[s]).sum()),
            })
            .collect();
        let grid = (0..=4)
            .map(|k| {
                let v = top * k as f64 / 4.0;
                GridLine {
                    y: format!("{:.1}", TOP + plot_h - plot_h * k as f64 / 4.0),
                    label: match measure {
                        Measure::Requests => format::count(v.round() as i64),
                        Measure::Cost => format::usd(Usd((v * 1e9).round() as i64)),
                    },
                }
            })
            .collect();
        let every = (days.len() / 6).max(1);
        let ticks = days
            .iter()
            .enumerate()
            .filter(|(i, _)| i % every == 0)
            .map(|(i, day)| Tick {
                x: format!("{:.1}", LEFT + i as f64 * slot + slot / 2.0),
                label: day.get(5..).unwrap_or(day).to_string(),
            })
            .collect();
        StackedChart {
            id,
            title,
            other_label,
            width,
            height: HEIGHT,
            legend,
            segments,
            grid,
            ticks,
            empty: max <= 0,
        }
    }

    pub fn axis_x(&self) -> String {
        format!("{LEFT:.1}")
    }
    pub fn axis_right(&self) -> String {
        format!("{:.1}", self.width as f64 - 8.0)
    }
    pub fn baseline(&self) -> String {
        format!("{:.1}", self.height as f64 - BOTTOM)
    }
    pub fn label_y(&self) -> String {
        format!("{:.1}", self.height as f64 - 6.0)
    }
}

/// The colour class of series `i`: "other" is always the last colour (grey).
fn class_of(i: usize, name: &str) -> String {
    if name == OTHER {
        format!("s{TOP_MODELS}")
    } else {
        format!("s{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, model: &str, requests: i64, cost: i64) -> DayGroupTotal {
        DayGroupTotal {
            day: day.into(),
            label: model.into(),
            id: 0,
            requests,
            cost,
        }
    }

    #[test]
    fn models_outside_the_top_are_summed_as_other() {
        let days = vec!["2026-01-01".to_string(), "2026-01-02".to_string()];
        let rows = vec![
            row("2026-01-01", "a", 2, 1_500_000_000),
            row("2026-01-01", "x", 1, 1),
            row("2026-01-01", "y", 4, 2),
            row("2026-01-02", "a", 1, 5),
        ];
        let names = series(&[("a".to_string(), "a".to_string())], &rows);
        let keys: Vec<&str> = names.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a", "other"]);
        let c = StackedChart::new("c", "t".into(), "o", Measure::Cost, &days, &names, &rows);
        let segs: Vec<(&str, &str, &str)> = c
            .segments
            .iter()
            .map(|s| (s.day.as_str(), s.series.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            segs,
            [
                ("2026-01-01", "a", "1.500000000"),
                ("2026-01-01", "other", "0.000000003"),
                ("2026-01-02", "a", "0.000000005"),
            ]
        );
        let r = StackedChart::new(
            "r",
            "t".into(),
            "o",
            Measure::Requests,
            &days,
            &names,
            &rows,
        );
        let other: Vec<&str> = r
            .segments
            .iter()
            .filter(|s| s.series == OTHER)
            .map(|s| s.value.as_str())
            .collect();
        assert_eq!(other, ["5"]);
        assert!(!r.empty);
    }
}
