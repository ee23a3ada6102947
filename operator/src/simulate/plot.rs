//! One SVG per trace: pods over time (top) and backlog over time (bottom), one line per
//! contender. Written by hand: polylines, axes, a legend.

use std::fmt::Write as _;

use super::{Comparison, Sample};

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 64.0;
const GAP: f64 = 56.0;
const MAX_POINTS: usize = 1_200;

/// The plot of `comparison` as an SVG document.
pub fn svg(comparison: &Comparison) -> String {
    let trace = &comparison.scenario.trace;
    let end_seconds = comparison
        .outcomes
        .iter()
        .filter_map(|(_, outcome)| outcome.timeline.last())
        .map(|sample| sample.at_seconds)
        .fold(1.0, f64::max);
    let max_pods = nice_ceiling(
        comparison
            .outcomes
            .iter()
            .flat_map(|(_, outcome)| outcome.timeline.iter().map(|sample| f64::from(sample.pods)))
            .fold(1.0, f64::max),
    );
    let max_backlog = comparison
        .outcomes
        .iter()
        .flat_map(|(_, outcome)| outcome.timeline.iter().map(|sample| sample.backlog as f64))
        .fold(1.0, f64::max);
    let backlog_decades = max_backlog.log10().ceil().max(1.0);
    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + 44.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="18" font-size="15" font-weight="bold">{}</text><text x="{LEFT}" y="36">{}</text>"#,
        escape(&trace.name),
        escape(&trace.description)
    );
    let panels = [
        ("pods (starting, running and terminating)", TOP, true),
        (
            "backlog: lag + pending (log scale)",
            TOP + PANEL_HEIGHT + GAP,
            false,
        ),
    ];
    for (title, top, pods_panel) in panels {
        if pods_panel {
            linear_axes(&mut out, title, top, max_pods, end_seconds);
        } else {
            log_axes(&mut out, title, top, backlog_decades, end_seconds);
        }
        for &(start, end) in &trace.outages {
            let x0 = x_of(start as f64 / 1000.0, end_seconds);
            let x1 = x_of(end as f64 / 1000.0, end_seconds);
            let _ = writeln!(
                out,
                r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_HEIGHT}" fill="#fdd49e" opacity="0.5"/>"##,
                (x1 - x0).max(1.0)
            );
        }
        // workpool (first) is drawn last, on top.
        for (kind, outcome) in comparison.outcomes.iter().rev() {
            // Both panels plot a fraction of their height.
            let height_fraction = |sample: &Sample| {
                if pods_panel {
                    f64::from(sample.pods) / max_pods
                } else {
                    (1.0 + sample.backlog as f64).log10() / backlog_decades
                }
            };
            let points = downsample(&outcome.timeline, height_fraction)
                .into_iter()
                .map(|(at, fraction)| {
                    format!(
                        "{:.1},{:.1}",
                        x_of(at, end_seconds),
                        top + PANEL_HEIGHT - fraction.min(1.0) * PANEL_HEIGHT
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.4" points="{points}"/>"#,
                kind.colour()
            );
        }
    }
    let legend_y = height - 12.0;
    let mut legend_x = LEFT;
    for (kind, _) in &comparison.outcomes {
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" y1="{0}" x2="{1}" y2="{0}" stroke="{2}" stroke-width="3"/><text x="{3}" y="{4}">{5}</text>"#,
            legend_y - 4.0,
            legend_x + 24.0,
            kind.colour(),
            legend_x + 30.0,
            legend_y,
            escape(kind.label())
        );
        legend_x += 48.0 + 7.0 * kind.label().len() as f64;
    }
    if !trace.outages.is_empty() {
        let _ = writeln!(
            out,
            r##"<rect x="{legend_x}" y="{}" width="24" height="10" fill="#fdd49e"/><text x="{}" y="{legend_y}">metrics unreadable</text>"##,
            legend_y - 9.0,
            legend_x + 30.0
        );
    }
    out.push_str("</svg>\n");
    out
}

fn x_of(seconds: f64, end_seconds: f64) -> f64 {
    LEFT + seconds / end_seconds * (WIDTH - LEFT - RIGHT)
}

/// The smallest of 5, 10, 20, 50, 100, 200, ... at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let mut nice = 5.0;
    while nice < value {
        nice = match (nice / 10f64.powf(nice.log10().floor())).round() as u32 {
            1 => nice * 2.0,
            2 => nice * 2.5,
            _ => nice * 2.0,
        };
    }
    nice
}

fn frame(out: &mut String, title: &str, top: f64, end_seconds: f64) {
    let bottom = top + PANEL_HEIGHT;
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##,
        right - LEFT
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        top - 6.0,
        escape(title)
    );
    let minutes = end_seconds / 60.0;
    let tick_minutes = if minutes > 90.0 { 20.0 } else { 10.0 };
    let mut minute = 0.0;
    while minute <= minutes {
        let x = x_of(minute * 60.0, end_seconds);
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{minute:.0} min</text>"#,
            bottom + 16.0
        );
        minute += tick_minutes;
    }
}

fn horizontal_rule(out: &mut String, fraction: f64, top: f64, label: &str) {
    let y = top + PANEL_HEIGHT - fraction * PANEL_HEIGHT;
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
        WIDTH - RIGHT,
        LEFT - 6.0,
        y + 4.0
    );
}

fn linear_axes(out: &mut String, title: &str, top: f64, max_value: f64, end_seconds: f64) {
    frame(out, title, top, end_seconds);
    for step in 0..=5 {
        let fraction = f64::from(step) / 5.0;
        horizontal_rule(out, fraction, top, &format!("{:.0}", max_value * fraction));
    }
}

fn log_axes(out: &mut String, title: &str, top: f64, decades: f64, end_seconds: f64) {
    frame(out, title, top, end_seconds);
    horizontal_rule(out, 0.0, top, "0");
    let mut decade = 0.0;
    while decade <= decades {
        let value = 10f64.powf(decade);
        horizontal_rule(
            out,
            (1.0 + value).log10() / decades,
            top,
            &format!("{value:.0}"),
        );
        decade += 1.0;
    }
}

/// At most [`MAX_POINTS`] points: each bucket contributes its first and its highest
/// sample, so short spikes stay visible.
fn downsample(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    let bucket = samples.len().div_ceil(MAX_POINTS / 2).max(1);
    let mut points = Vec::new();
    for chunk in samples.chunks(bucket) {
        let Some(first) = chunk.first() else {
            continue;
        };
        points.push((first.at_seconds, value(first)));
        if let Some(peak) = chunk.iter().max_by(|a, b| value(a).total_cmp(&value(b)))
            && peak.at_seconds != first.at_seconds
        {
            points.push((peak.at_seconds, value(peak)));
        }
    }
    if let Some(last) = samples.last() {
        points.push((last.at_seconds, value(last)));
    }
    without_flat_interiors(points)
}

/// Drops the points in the middle of runs of equal values (the line is the same).
fn without_flat_interiors(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for (index, &point) in points.iter().enumerate() {
        let same_as_previous = index > 0 && points[index - 1].1 == point.1;
        let same_as_next = points.get(index + 1).is_some_and(|next| next.1 == point.1);
        if !(same_as_previous && same_as_next) {
            kept.push(point);
        }
    }
    kept
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_are_one_two_five_steps() {
        let ceilings: Vec<f64> = [0.0, 3.0, 5.0, 6.0, 11.0, 35.0, 50.0, 51.0, 150.0]
            .into_iter()
            .map(nice_ceiling)
            .collect();
        assert_eq!(
            ceilings,
            vec![5.0, 5.0, 5.0, 10.0, 20.0, 50.0, 50.0, 100.0, 200.0]
        );
    }
}
