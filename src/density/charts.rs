//! The report's charts as inline SVG (plotters): one series per input.

use super::metrics::Metrics;
use plotters::prelude::*;

/// Series colours, one per input (cycled).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

const SIZE: (u32, u32) = (720, 420);

type Series = (String, Vec<(f64, f64)>);

/// Axis scales of a chart.
#[derive(Clone, Copy, PartialEq)]
enum Axes {
    /// Linear from 0.
    Linear,
    /// Logarithmic x and y.
    LogLog,
    /// Logarithmic x (1 to 1500), y a percentage; points marked.
    LogPercent,
}

fn chart(title: &str, x: &str, y: &str, series: &[Series], axes: Axes, marker: Option<f64>) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| format!("chart {title:?}: {e}");
    let (mut x_max, mut y_max) = (1.0f64, if axes == Axes::LogLog { 1.0f64 } else { 1e-3 });
    for (px, py) in series.iter().flat_map(|s| s.1.iter()) {
        x_max = x_max.max(*px);
        y_max = y_max.max(*py);
    }
    if let Some(m) = marker {
        x_max = x_max.max(m * 1.05);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(42).y_label_area_size(70);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut c = $chart;
                c.configure_mesh().x_desc(x).y_desc(y).draw().map_err(|e| err(&e))?;
                for (i, (name, pts)) in series.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    // Earlier series drawn wider, so a series that coincides with a later one shows
                    // around it instead of vanishing under it.
                    let width = 2 + 3 * (series.len() - 1 - i).min(3) as u32;
                    c.draw_series(LineSeries::new(pts.iter().copied(), color.mix(0.85).stroke_width(width)))
                        .map_err(|e| err(&e))?
                        .label(name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width)));
                    if axes == Axes::LogPercent {
                        c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
                    }
                }
                if let Some(m) = marker {
                    c.draw_series(LineSeries::new(vec![(m, 0.0), (m, y_max * 1.05)], BLACK.mix(0.5)))
                        .map_err(|e| err(&e))?
                        .label(format!("limit {m}"))
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
                }
                c.configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .draw()
                    .map_err(|e| err(&e))?;
            }};
        }
        match axes {
            Axes::LogLog => draw!(b
                .build_cartesian_2d((1.0..x_max * 1.2).log_scale(), (0.8..y_max * 1.5).log_scale())
                .map_err(|e| err(&e))?),
            Axes::LogPercent => {
                draw!(b.build_cartesian_2d((1.0..1500.0f64).log_scale(), 0.0..100.0f64).map_err(|e| err(&e))?)
            }
            Axes::Linear => draw!(b.build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.05).map_err(|e| err(&e))?),
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// Shares (0..1) of a histogram's counts, as points.
fn shares(h: &[u64]) -> Vec<(f64, f64)> {
    let n: u64 = h.iter().sum::<u64>().max(1);
    h.iter().enumerate().map(|(v, &c)| (v as f64, c as f64 / n as f64)).collect()
}

/// The charts of a report: (title, SVG).
pub fn charts(inputs: &[Metrics]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let rank: Vec<Series> = inputs
        .iter()
        .map(|m| (m.name.clone(), m.rank_frequency.iter().map(|&(r, f)| (r as f64, f as f64)).collect()))
        .collect();
    let t = "Noun rank–frequency (log–log)";
    out.push((t.into(), chart(t, "rank", "occurrences", &rank, Axes::LogLog, None)?));
    let per: Vec<Series> = inputs.iter().map(|m| (m.name.clone(), shares(&m.nouns_histogram))).collect();
    let t = "Nouns per caption";
    out.push((t.into(), chart(t, "nouns in the caption", "share of captions", &per, Axes::Linear, None)?));
    let validity: Vec<Series> = inputs
        .iter()
        .map(|m| (m.name.clone(), m.validity.iter().map(|v| ((v.threshold as f64) + 1.0, v.share * 100.0)).collect()))
        .collect();
    let t = "VN/DN against the validity threshold (x = threshold + 1, log)";
    out.push((t.into(), chart(t, "threshold + 1", "VN/DN, %", &validity, Axes::LogPercent, None)?));
    let t5: Vec<Series> =
        inputs.iter().filter_map(|m| m.t5.as_ref().map(|t| (m.name.clone(), shares(&t.histogram)))).collect();
    if !t5.is_empty() {
        let limit = inputs.iter().find_map(|m| m.t5.as_ref().map(|t| t.max_tokens)).unwrap_or(120) as f64;
        let t = "T5 tokens per caption";
        out.push((t.into(), chart(t, "T5 tokens (with </s>)", "share of captions", &t5, Axes::Linear, Some(limit))?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two inputs with the same captions draw the same points: the earlier series is drawn wider, so
    /// both stay visible (nested lines) instead of the later one hiding the earlier.
    #[test]
    fn coinciding_series_stay_visible() {
        let points = vec![(1.0, 2.0), (2.0, 3.0), (3.0, 1.0)];
        let series = [("a".to_string(), points.clone()), ("b".to_string(), points)];
        let svg = chart("t", "x", "y", &series, Axes::Linear, None).unwrap();
        // The width of each line drawn in a series' colour (its line and its legend entry).
        let widths = |colour: &RGBColor| -> Vec<u32> {
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", colour.0, colour.1, colour.2);
            svg.split("<polyline")
                .skip(1)
                .filter(|p| p.split('>').next().is_some_and(|tag| tag.contains(&stroke)))
                .filter_map(|p| p.split("stroke-width=\"").nth(1)?.split('"').next()?.parse().ok())
                .collect()
        };
        let (a, b) = (widths(&COLORS[0]), widths(&COLORS[1]));
        assert!(!a.is_empty() && !b.is_empty(), "{svg}");
        assert!(a.iter().min() > b.iter().max(), "the earlier series is wider: {a:?} against {b:?}");
    }
}
