//! The report and training charts: each drawn, written as PNG and decoded again, then checked
//! for what lets it read on its own: a title, axis labels and numbers, legend text, the
//! histogram's two colours and its threshold line at the threshold's value.

use std::ops::Range;
use std::path::Path;

use image::RgbImage;
use vigil_pipeline::chart::{self, Chart, Marker, PlotArea};
use vigil_pipeline::run::{EpochLog, loss_chart};

/// Writes the chart as PNG into `dir` and reads it back as a viewer would.
fn png(chart: &Chart, dir: &Path, name: &str) -> RgbImage {
    let path = dir.join(name);
    chart.image.save(&path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (chart::WIDTH, chart::HEIGHT), "{name}");
    img
}

/// Pixels in the rectangle of exactly `color`.
fn exactly(img: &RgbImage, cols: Range<u32>, rows: Range<u32>, color: [u8; 3]) -> usize {
    count(img, cols, rows, |p| p == color)
}

fn count(img: &RgbImage, cols: Range<u32>, rows: Range<u32>, keep: impl Fn([u8; 3]) -> bool) -> usize {
    rows.flat_map(|y| cols.clone().map(move |x| (x, y))).filter(|(x, y)| keep(img.get_pixel(*x, *y).0)).count()
}

/// Dark text pixels (glyph cores) in the rectangle.
fn text(img: &RgbImage, cols: Range<u32>, rows: Range<u32>) -> usize {
    count(img, cols, rows, |p| p.iter().all(|c| *c < 0x70))
}

/// A title above the plot area, tick numbers and an axis label below it, a rotated axis label
/// and tick numbers left of it.
fn assert_titled_and_labelled(img: &RgbImage, plot: &PlotArea, name: &str) {
    assert!(plot.left > 40 && plot.top > 20 && plot.bottom + 40 < chart::HEIGHT, "{name}: {plot:?}");
    let title = text(img, plot.left..plot.right, 0..plot.top - 2);
    assert!(title > 60, "{name}: {title} text pixels above the plot area");
    let below = text(img, plot.left..plot.right, plot.bottom + 2..chart::HEIGHT);
    assert!(below > 100, "{name}: {below} text pixels below the plot area");
    // The rotated y label sits in the outer strip, the tick numbers nearer the axis.
    let label = text(img, 0..chart::MARGIN_PX + chart::AXIS_LABEL_PX * 2, plot.top..plot.bottom);
    assert!(label > 40, "{name}: {label} text pixels in the y label's strip");
    let ticks = text(img, plot.left - chart::TICK_PX * 3..plot.left - 2, plot.top..plot.bottom);
    assert!(ticks > 15, "{name}: {ticks} text pixels of y tick numbers");
}

/// Columns in the rectangle holding any pixel of `color`.
fn columns_of(img: &RgbImage, cols: Range<u32>, rows: Range<u32>, color: [u8; 3]) -> Vec<u32> {
    cols.filter(|x| rows.clone().any(|y| img.get_pixel(*x, y).0 == color)).collect()
}

fn curve() -> Vec<(f64, f64)> {
    (0..=20).map(|i| i as f64 / 20.0).map(|x| (x, x.powf(0.3))).collect()
}

#[test]
fn the_roc_chart_has_title_axes_curve_chance_line_and_auroc_in_its_legend() {
    let dir = tempfile::tempdir().unwrap();
    let mark = Marker { at: (0.25, 0.66), name: "at threshold 0.5: TPR 0.660, FPR 0.250".into() };
    let c = chart::roc(&curve(), Some(0.871), Some(&mark)).unwrap();
    let img = png(&c, dir.path(), "roc.png");
    let p = c.plot;
    assert_titled_and_labelled(&img, &p, "roc");
    let inside = (p.left + 1..p.right, p.top + 1..p.bottom);
    assert!(exactly(&img, inside.0.clone(), inside.1.clone(), chart::SERIES[0]) > 300, "the curve");
    assert!(exactly(&img, inside.0.clone(), inside.1.clone(), chart::REFERENCE) > 150, "the chance diagonal");
    let at = p.column(0.25);
    let dot = exactly(&img, at - 4..at + 5, inside.1.clone(), chart::THRESHOLD);
    assert!(dot >= 20, "the operating point at x {at}: {dot} pixels");
    // The legend (lower right) says the AUROC: without it, that corner differs and nothing else.
    let bare = png(&chart::roc(&curve(), None, Some(&mark)).unwrap(), dir.path(), "bare.png");
    let (mid_x, mid_y) = ((p.left + p.right) / 2, (p.top + p.bottom) / 2);
    let differs = |cols: Range<u32>, rows: Range<u32>| {
        rows.flat_map(|y| cols.clone().map(move |x| (x, y))).any(|(x, y)| img.get_pixel(x, y) != bare.get_pixel(x, y))
    };
    assert!(differs(mid_x..p.right, mid_y..p.bottom), "the AUROC in the legend");
    assert!(!differs(0..chart::WIDTH, 0..p.top) && !differs(0..p.left, 0..chart::HEIGHT), "only the legend changed");
}

#[test]
fn the_pr_chart_marks_the_share_of_defects_and_names_ap_and_f1() {
    let dir = tempfile::tempdir().unwrap();
    let pr: Vec<(f64, f64)> = curve().iter().map(|(x, y)| (*x, 1.0 - 0.6 * x * y)).collect();
    let mark = Marker { at: (0.8, 0.52), name: "at threshold 0.5: F1 0.630".into() };
    let c = chart::precision_recall(&pr, Some(0.734), 0.3, Some(&mark)).unwrap();
    let img = png(&c, dir.path(), "pr.png");
    let p = c.plot;
    assert_titled_and_labelled(&img, &p, "pr");
    let rows = p.top + 1..p.bottom;
    assert!(exactly(&img, p.left + 1..p.right, rows.clone(), chart::SERIES[0]) > 300, "the curve");
    // The share of defects is a horizontal dashed line: grey on many columns of a few rows.
    let grey_rows: Vec<u32> =
        rows.clone().filter(|y| exactly(&img, p.left + 1..p.right, *y..*y + 1, chart::REFERENCE) > 100).collect();
    assert!(!grey_rows.is_empty() && grey_rows.len() <= 4, "the share of defects: rows {grey_rows:?}");
    let at = p.column(0.8);
    assert!(exactly(&img, at - 4..at + 5, rows, chart::THRESHOLD) >= 20, "the operating point");
    let no_ap = png(&chart::precision_recall(&pr, None, 0.3, Some(&mark)).unwrap(), dir.path(), "no_ap.png");
    let legend_changed = (p.top..p.bottom)
        .flat_map(|y| (p.left..(p.left + p.right) / 2).map(move |x| (x, y)))
        .any(|(x, y)| img.get_pixel(x, y) != no_ap.get_pixel(x, y));
    assert!(legend_changed, "the AP in the legend (lower left)");
}

#[test]
fn the_score_histogram_shows_both_classes_in_their_colours_and_the_threshold_at_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let normal: Vec<f32> = (0..200).map(|i| 0.010 + 0.004 * (i % 20) as f32 / 20.0).collect();
    let defect: Vec<f32> = (0..60).map(|i| 0.030 + 0.010 * (i % 10) as f32 / 10.0).collect();
    let threshold = 0.0215;
    let c = chart::score_histogram(&normal, &defect, threshold).unwrap();
    let img = png(&c, dir.path(), "histogram.png");
    let p = c.plot;
    assert_titled_and_labelled(&img, &p, "histogram");
    let line = p.column(threshold as f64);
    // The bars: the lowest rows of the plot hold no legend, only bars.
    let base = p.bottom - 8..p.bottom - 1;
    let blue = columns_of(&img, p.left + 1..p.right, base.clone(), chart::NORMAL);
    let red = columns_of(&img, p.left + 1..p.right, base.clone(), chart::DEFECT);
    assert!(blue.len() > 20 && red.len() > 20, "both classes drawn: {} blue, {} red columns", blue.len(), red.len());
    assert!(blue.iter().all(|x| *x < line) && red.iter().all(|x| *x > line), "normal left, defective right of {line}");
    // The threshold: a black line the plot's height at the threshold's column, and nowhere else.
    let rows = p.top + 1..p.bottom;
    let tall: Vec<u32> = (p.left + 1..p.right)
        .filter(|x| exactly(&img, *x..*x + 1, rows.clone(), chart::THRESHOLD) as u32 > (p.bottom - p.top) * 9 / 10)
        .collect();
    assert!(!tall.is_empty() && tall.iter().all(|x| x.abs_diff(line) <= 2), "threshold at {line}: {tall:?}");
    // Its value written beside it, near the top.
    let near = line.saturating_sub(130)..(line + 130).min(p.right);
    assert!(text(&img, near, p.top + 2..p.top + 30) > 60, "the threshold's value beside the line");
    assert_eq!(chart::number(threshold as f64), "0.0215");

    // Normal images only: one colour, still the line.
    let c = chart::score_histogram(&normal, &[], 0.013).unwrap();
    let img = png(&c, dir.path(), "normal_only.png");
    let all = (0..chart::WIDTH, 0..chart::HEIGHT);
    assert!(exactly(&img, all.0.clone(), all.1.clone(), chart::NORMAL) > 500);
    assert_eq!(exactly(&img, all.0, all.1, chart::DEFECT), 0);
    let line = c.plot.column(0.013);
    assert!(exactly(&img, line - 2..line + 3, c.plot.top + 1..c.plot.bottom, chart::THRESHOLD) > 200);
}

#[test]
fn numbers_read_with_four_significant_digits() {
    for (v, s) in [(0.0123, "0.0123"), (0.5, "0.5"), (1.0, "1"), (12.3456, "12.35"), (1234.6, "1235"), (-0.25, "-0.25")]
    {
        assert_eq!(chart::number(v), s);
    }
    assert_eq!(chart::number(0.00001234), "1.234e-5");
}

#[test]
fn the_loss_chart_draws_one_named_series_per_loss_and_phase() {
    let dir = tempfile::tempdir().unwrap();
    let log = |phase: &str, epoch: u32, losses: &[(&str, f64)]| EpochLog {
        phase: phase.into(),
        epoch,
        losses: losses.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        samples_per_s: 100.0,
    };
    // Two losses two orders of magnitude apart, then an encoder phase: three series.
    let mut history: Vec<EpochLog> =
        (1..=12).map(|e| log("train", e, &[("recon", 1.0 / e as f64), ("kl", 0.004 + 0.001 * e as f64)])).collect();
    history.extend((1..=5).map(|e| log("encoder", e, &[("loss", 0.5 - 0.05 * e as f64)])));
    let c = loss_chart(&history).unwrap();
    let img = png(&c, dir.path(), "losses.png");
    let p = c.plot;
    assert_titled_and_labelled(&img, &p, "losses");
    assert_eq!(p.x_range, (1.0, 12.0));
    for color in &chart::SERIES[..3] {
        let n = exactly(&img, p.left + 1..p.right, p.top + 1..p.bottom, *color);
        assert!(n > 100, "series colour {color:?}: {n} pixels");
    }
    assert_eq!(exactly(&img, 0..chart::WIDTH, 0..chart::HEIGHT, chart::SERIES[3]), 0);

    // One epoch: a point, not an empty chart.
    let c = loss_chart(&history[..1]).unwrap();
    let img = png(&c, dir.path(), "one.png");
    assert!(exactly(&img, c.plot.left..c.plot.right, c.plot.top..c.plot.bottom, chart::SERIES[0]) > 10);
}
