//! Draws a replay as an SVG chart, written by hand (a few lines of SVG need
//! no plotting library): the top panel shows demand, ceiling, baseline, sent
//! and deferrals in messages per minute on a log scale, the middle one the
//! receiver's view (what the rolling hour and day sent against what the
//! volume rule allowed them), the bottom one the queue depth. The time axis
//! marks days and the hours within them.

use std::fmt::Write;

use super::{Report, Sample};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const RATES_TOP: f64 = 60.0;
const RATES_HEIGHT: f64 = 300.0;
const WINDOWS_TOP: f64 = 400.0;
const WINDOWS_HEIGHT: f64 = 220.0;
const RECEIVERS_HEIGHT: f64 = 200.0;
const QUEUE_HEIGHT: f64 = 130.0;
/// Between panels, room for the next one's legend.
const GAP: f64 = 40.0;
/// Below the last panel: the time axis's labels.
const AXIS: f64 = 50.0;
/// One colour per receiver shown, in the order of the gateway's rules.
const RECEIVER_COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22",
];
/// The log scale's floor, in messages per minute.
const FLOOR: f64 = 0.01;

struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    dashed: bool,
    value: fn(&Sample) -> f64,
}

/// One line of a panel: its legend, style and a value per sample.
struct Line<'a> {
    name: String,
    colour: &'a str,
    dashed: bool,
    values: Vec<f64>,
}

/// The lines of `series` over `samples`.
fn lines<'a>(samples: &[Sample], series: &[Series<'a>]) -> Vec<Line<'a>> {
    series
        .iter()
        .map(|series| Line {
            name: series.name.to_string(),
            colour: series.colour,
            dashed: series.dashed,
            values: samples.iter().map(series.value).collect(),
        })
        .collect()
}

/// Where the panels go: the receivers' (when some budgeted receiver got
/// mail) between the rolling windows and the queue.
struct Layout {
    receivers_top: Option<f64>,
    queue_top: f64,
    height: f64,
}

impl Layout {
    fn new(receivers: bool) -> Layout {
        let after_windows = WINDOWS_TOP + WINDOWS_HEIGHT + GAP;
        let (receivers_top, queue_top) = if receivers {
            (Some(after_windows), after_windows + RECEIVERS_HEIGHT + GAP)
        } else {
            (None, after_windows)
        };
        Layout {
            receivers_top,
            queue_top,
            height: queue_top + QUEUE_HEIGHT + AXIS,
        }
    }

    /// Every panel's (top, height).
    fn panels(&self) -> Vec<(f64, f64)> {
        let mut panels = vec![(RATES_TOP, RATES_HEIGHT), (WINDOWS_TOP, WINDOWS_HEIGHT)];
        panels.extend(self.receivers_top.map(|top| (top, RECEIVERS_HEIGHT)));
        panels.push((self.queue_top, QUEUE_HEIGHT));
        panels
    }
}

const RATE_SERIES: [Series<'static>; 5] = [
    Series {
        name: "demand",
        colour: "#1f77b4",
        dashed: false,
        value: |s| s.arrived as f64 / s.span * 60.0,
    },
    Series {
        name: "ceiling",
        colour: "#d62728",
        dashed: false,
        value: |s| s.ceiling * 60.0,
    },
    Series {
        name: "baseline",
        colour: "#7f7f7f",
        dashed: true,
        value: |s| s.baseline * 60.0,
    },
    Series {
        name: "sent",
        colour: "#2ca02c",
        dashed: false,
        value: |s| s.sent as f64 / s.span * 60.0,
    },
    Series {
        name: "deferred (451)",
        colour: "#ff7f0e",
        dashed: false,
        value: |s| s.deferred as f64 / s.span * 60.0,
    },
];

const WINDOW_SERIES: [Series<'static>; 4] = [
    Series {
        name: "sent in the last 24h",
        colour: "#2ca02c",
        dashed: false,
        value: |s| s.window_sent[1] as f64,
    },
    Series {
        name: "24h allowance",
        colour: "#d62728",
        dashed: true,
        value: |s| s.window_allowed[1] as f64,
    },
    Series {
        name: "sent in the last hour",
        colour: "#17becf",
        dashed: false,
        value: |s| s.window_sent[0] as f64,
    },
    Series {
        name: "1h allowance",
        colour: "#e377c2",
        dashed: true,
        value: |s| s.window_allowed[0] as f64,
    },
];

/// A log-scale panel of `series` from `FLOOR`-ish up: draws its frame, grid,
/// lines and legend (the legend at `legend_y`).
struct LogPanel<'a> {
    top: f64,
    height: f64,
    label: &'a str,
    floor: f64,
    legend_y: f64,
}

impl LogPanel<'_> {
    fn draw(
        &self,
        svg: &mut String,
        samples: &[Sample],
        series: &[Line<'_>],
        x: &dyn Fn(f64) -> f64,
    ) {
        let top = series
            .iter()
            .flat_map(|series| series.values.iter().copied())
            .fold(1.0, f64::max);
        let decades_top = top.log10().ceil().max(self.floor.log10() + 1.0);
        let decades = decades_top - self.floor.log10();
        let y = |value: f64| {
            let position = (value.max(self.floor).log10() - self.floor.log10()) / decades;
            self.top + self.height * (1.0 - position)
        };
        frame(svg, self.top, self.height, self.label);
        let mut decade = self.floor.log10();
        while decade <= decades_top {
            let value = 10f64.powf(decade);
            grid_line(svg, y(value));
            let label = if value < 1.0 {
                format!("{value}")
            } else {
                format!("{value:.0}")
            };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
                LEFT - 6.0,
                y(value) + 4.0
            );
            decade += 1.0;
        }
        for series in series {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .zip(&series.values)
                .map(|(s, value)| (x(s.start + s.span), y(*value)))
                .collect();
            polyline(svg, &points, series.colour, series.dashed);
        }
        let mut legend_x = LEFT;
        for series in series {
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{legend_x}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2.5"{dash}/><text x="{}" y="{}">{}</text>"#,
                self.legend_y,
                legend_x + 22.0,
                self.legend_y,
                series.colour,
                legend_x + 27.0,
                self.legend_y + 4.0,
                escape(&series.name)
            );
            legend_x += 40.0 + series.name.len() as f64 * 7.0;
        }
    }
}

/// The chart of `report` as an SVG document.
pub fn render_svg(report: &Report, title: &str) -> String {
    let samples = &report.samples;
    let receivers = receiver_lines(report);
    let layout = Layout::new(!receivers.is_empty());
    let mut svg = open_document(title, layout.height);
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        svg.push_str("</svg>\n");
        return svg;
    };
    let t0 = first.start;
    let t1 = last.start + last.span;
    let x = |t: f64| LEFT + (t - t0) / (t1 - t0).max(1.0) * (WIDTH - LEFT - RIGHT);

    // Rates per minute, then the rolling windows, log scales.
    LogPanel {
        top: RATES_TOP,
        height: RATES_HEIGHT,
        label: "messages per minute (log)",
        floor: FLOOR,
        legend_y: 44.0,
    }
    .draw(&mut svg, samples, &lines(samples, &RATE_SERIES), &x);
    LogPanel {
        top: WINDOWS_TOP,
        height: WINDOWS_HEIGHT,
        label: "receiver's view (log)",
        floor: 1.0,
        legend_y: WINDOWS_TOP - 14.0,
    }
    .draw(&mut svg, samples, &lines(samples, &WINDOW_SERIES), &x);
    if let Some(top) = layout.receivers_top {
        LogPanel {
            top,
            height: RECEIVERS_HEIGHT,
            label: "each receiver, 24h (log)",
            floor: 1.0,
            legend_y: top - 14.0,
        }
        .draw(&mut svg, samples, &receivers, &x);
    }
    queue_panel(&mut svg, samples, layout.queue_top, &x);
    time_axis(&mut svg, report.day_origin, (t0, t1), &layout, &x);
    svg.push_str("</svg>\n");
    svg
}

/// Per budgeted receiver that got mail in the replay, what it was sent
/// in the rolling day and its allowance there, in its own colour.
fn receiver_lines(report: &Report) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let shown = report
        .receiver_names
        .iter()
        .enumerate()
        .filter(|(_, name)| {
            report
                .receivers
                .iter()
                .any(|receiver| receiver.budgeted && receiver.sent > 0 && &receiver.name == *name)
        });
    for (index, name) in shown {
        let colour = RECEIVER_COLOURS[index % RECEIVER_COLOURS.len()];
        let day = |pick: fn(&[u64; 2]) -> u64| -> Vec<f64> {
            report
                .samples
                .iter()
                .map(|sample| sample.receivers.get(index).map_or(0, pick) as f64)
                .collect()
        };
        lines.push(Line {
            name: format!("{name}: sent"),
            colour,
            dashed: false,
            values: day(|day| day[0]),
        });
        lines.push(Line {
            name: format!("{name}: allowance"),
            colour,
            dashed: true,
            values: day(|day| day[1]),
        });
    }
    lines
}

/// The document's opening: size, white background and `title`.
fn open_document(title: &str, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    svg
}

/// Queue depth on a linear scale up to a round number.
fn queue_panel(svg: &mut String, samples: &[Sample], top: f64, x: &dyn Fn(f64) -> f64) {
    let most = samples.iter().map(|s| s.queued).max().unwrap_or(0).max(1) as f64;
    let scale = nice_ceiling(most);
    let y_queue = |value: f64| top + QUEUE_HEIGHT * (1.0 - value / scale);
    frame(svg, top, QUEUE_HEIGHT, "messages queued");
    for step in 0..=4 {
        let value = scale * f64::from(step) / 4.0;
        let y = y_queue(value);
        grid_line(svg, y);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{value:.0}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (x(s.start + s.span), y_queue(s.queued as f64)))
        .collect();
    polyline(svg, &points, "#9467bd", false);
}

/// The time axis from `t0` to `t1`: a labelled tick per day (or per hour
/// for a short trace) and lighter ticks for the hours between, counted
/// like the day table from `origin`, the midnight before the trace.
fn time_axis(
    svg: &mut String,
    origin: f64,
    (t0, t1): (f64, f64),
    layout: &Layout,
    x: &dyn Fn(f64) -> f64,
) {
    let days = (t1 - t0) / 86_400.0;
    let (major, minor) = tick_steps(t1 - t0);
    let panels = layout.panels();
    let below = layout.queue_top + QUEUE_HEIGHT;
    let mut tick = ((t0 - origin) / minor).ceil();
    while origin + tick * minor <= t1 {
        let at = tick * minor;
        let tx = x(origin + at);
        let is_major = (at / major).fract().abs() < 1e-9;
        tick_line(svg, tx, is_major, &panels);
        tick_label(svg, (tx, below), at, is_major, days > 2.0);
        tick += 1.0;
    }
}

/// The label under the tick `at` seconds from the origin: the day (or the
/// hour, for a short trace) on a labelled tick, the hour of the day in
/// small print on the others when the axis counts days.
fn tick_label(svg: &mut String, (tx, below): (f64, f64), at: f64, is_major: bool, in_days: bool) {
    if is_major {
        let label = if in_days {
            format!("day {}", (at / 86_400.0).round() + 1.0)
        } else {
            format!("{:.0}h", at / 3_600.0)
        };
        let _ = writeln!(
            svg,
            r#"<text x="{tx}" y="{}" text-anchor="middle">{label}</text>"#,
            below + 18.0
        );
    } else if in_days {
        let _ = writeln!(
            svg,
            r##"<text x="{tx}" y="{}" text-anchor="middle" font-size="9" fill="#888">{:.0}h</text>"##,
            below + 30.0,
            (at % 86_400.0) / 3_600.0
        );
    }
}

/// Seconds between labelled ticks and between all ticks, for a trace of
/// `span` seconds: about 14 labelled ticks, and some 60 ticks in all.
fn tick_steps(span: f64) -> (f64, f64) {
    let days = span / 86_400.0;
    if days > 2.0 {
        let every_day = (days / 14.0).ceil().max(1.0) * 86_400.0;
        let hours = [3.0, 6.0, 12.0, 24.0]
            .into_iter()
            .find(|hours| days * 24.0 / hours <= 60.0)
            .unwrap_or(24.0);
        (every_day, hours * 3_600.0)
    } else {
        let every_hour = ((span / 3_600.0) / 14.0).ceil().max(1.0) * 3_600.0;
        (every_hour, (every_hour / 4.0).max(900.0))
    }
}

/// A tick at `tx` across every panel, darker when it is labelled.
fn tick_line(svg: &mut String, tx: f64, is_major: bool, panels: &[(f64, f64)]) {
    let colour = if is_major { "#ddd" } else { "#f4f4f4" };
    for &(panel_top, panel_height) in panels {
        let _ = writeln!(
            svg,
            r##"<line x1="{tx}" y1="{panel_top}" x2="{tx}" y2="{}" stroke="{colour}"/>"##,
            panel_top + panel_height
        );
    }
}

fn frame(svg: &mut String, top: f64, height: f64, label: &str) {
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{height}" fill="none" stroke="#999"/>"##,
        WIDTH - LEFT - RIGHT
    );
    let middle = top + height / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{middle}" transform="rotate(-90 16 {middle})" text-anchor="middle">{}</text>"#,
        escape(label)
    );
}

fn grid_line(svg: &mut String, y: f64) {
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/>"##,
        WIDTH - RIGHT
    );
}

fn polyline(svg: &mut String, points: &[(f64, f64)], colour: &str, dashed: bool) {
    let mut path = String::new();
    for (x, y) in points {
        let _ = write!(path, "{x:.1},{y:.1} ");
    }
    let dash = if dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>"#,
        path.trim_end()
    );
}

/// 1, 2 or 5 times a power of ten, at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|nice| *nice >= value)
        .unwrap_or(10.0 * power)
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
    fn scales_and_escapes() {
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(5_001.0), 10_000.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(escape("a<b&c"), "a&lt;b&amp;c");
    }
}
