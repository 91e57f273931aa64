//! The report and training charts (ROC, precision–recall, score histogram, loss curves),
//! drawn with plotters into images that read on their own: a title, labelled axes with
//! numbers, a legend, the threshold's value. The look (palette, text sizes, line widths) is
//! the constants below, so other renderings of the same charts can match it.
//!
//! Text comes from Noto Sans Regular compiled into the binary (the `ttf-noto-sans` crate),
//! never from the machine's fonts, so a chart looks the same wherever it is drawn.

use std::error::Error as StdError;
use std::ops::Range;
use std::sync::OnceLock;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of every chart, pixels.
pub const WIDTH: u32 = 640;
/// Height of every chart, pixels.
pub const HEIGHT: u32 = 440;
/// The family name the embedded font is registered under.
pub const FONT_FAMILY: &str = "sans-serif";
/// The font every text is drawn in (regular weight, from the `ttf-noto-sans` crate).
pub const FONT_NAME: &str = "Noto Sans";
/// Title text height, pixels.
pub const TITLE_PX: u32 = 20;
/// Axis label text height ("False positive rate"), pixels.
pub const AXIS_LABEL_PX: u32 = 15;
/// Tick number text height, pixels.
pub const TICK_PX: u32 = 12;
/// Legend text height, pixels.
pub const LEGEND_PX: u32 = 13;
/// Stroke width of curves and of the threshold line, pixels.
pub const LINE_WIDTH: u32 = 2;
/// Space around the chart, pixels.
pub const MARGIN_PX: u32 = 12;

/// The background.
pub const BACKGROUND: [u8; 3] = [0xff, 0xff, 0xff];
/// Titles, axis labels, tick numbers and legend text.
pub const TEXT: [u8; 3] = [0x22, 0x22, 0x22];
/// The axes and tick marks.
pub const AXIS: [u8; 3] = [0x55, 0x55, 0x55];
/// Grid lines at the ticks.
pub const GRID: [u8; 3] = [0xe3, 0xe3, 0xe3];
/// The series colours in order (the first is also "normal", the second "defective").
pub const SERIES: [[u8; 3]; 6] = [
    [0x1f, 0x77, 0xb4],
    [0xd6, 0x27, 0x28],
    [0x2c, 0xa0, 0x2c],
    [0xff, 0x7f, 0x0e],
    [0x94, 0x67, 0xbd],
    [0x17, 0xbe, 0xcf],
];
/// Normal images in the score histogram.
pub const NORMAL: [u8; 3] = SERIES[0];
/// Defective images in the score histogram.
pub const DEFECT: [u8; 3] = SERIES[1];
/// The threshold line and the operating point at the threshold.
pub const THRESHOLD: [u8; 3] = [0x00, 0x00, 0x00];
/// Reference lines: chance on the ROC curve, the share of defects on the PR curve (dashed).
pub const REFERENCE: [u8; 3] = [0x88, 0x88, 0x88];
/// Bins of the score histogram.
pub const HISTOGRAM_BINS: usize = 30;

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The font compiled into the binary did not parse: the build is broken, not the data.
    #[error("the charts' embedded font ({FONT_NAME}) did not load; rebuild vigil-train")]
    Font,
    /// plotters failed while drawing.
    #[error("drawing the chart {title:?}: {message}")]
    Draw {
        /// The chart's title.
        title: String,
        /// plotters' error.
        message: String,
    },
}

/// A drawn chart and where its plot area lies in the image.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The picture, [`WIDTH`] × [`HEIGHT`].
    pub image: RgbImage,
    /// The plot area inside it.
    pub plot: PlotArea,
}

/// The plot area (inside the axes) of a chart, in pixels, and the x values at its edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotArea {
    /// First column inside the plot area.
    pub left: u32,
    /// Last column inside the plot area.
    pub right: u32,
    /// First row inside the plot area; the title lies above.
    pub top: u32,
    /// Last row inside the plot area; tick numbers and the x axis label lie below.
    pub bottom: u32,
    /// The x values at `left` and `right`.
    pub x_range: (f64, f64),
}

impl PlotArea {
    /// The column where the value `x` is drawn.
    pub fn column(&self, x: f64) -> u32 {
        let f = (x - self.x_range.0) / (self.x_range.1 - self.x_range.0);
        (self.left as f64 + f * (self.right - self.left) as f64).round() as u32
    }
}

/// One named line of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The name in the legend.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A point of a curve at the bundle's threshold, marked and named in the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Where it lies.
    pub at: (f64, f64),
    /// Its legend text.
    pub name: String,
}

/// A number as a person reads it: four significant digits without trailing zeros, and
/// scientific notation for very small or large magnitudes.
pub fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// The ROC curve (false against true positive rate) with its AUROC, the chance diagonal and,
/// when given, the operating point at the threshold.
pub fn roc(curve: &[(f64, f64)], auroc: Option<f64>, at_threshold: Option<&Marker>) -> Result<Chart, ChartError> {
    let name = match auroc {
        Some(a) => format!("ROC curve (AUROC {a:.3})"),
        None => "ROC curve".to_string(),
    };
    let chance = Series { name: "chance (AUROC 0.5)".to_string(), points: vec![(0.0, 0.0), (1.0, 1.0)] };
    let curve = Series { name, points: curve.to_vec() };
    let axes = Axes { title: "ROC curve", x: "False positive rate", y: "True positive rate" };
    unit_square(&axes, &curve, &chance, at_threshold, SeriesLabelPosition::LowerRight)
}

/// The precision–recall curve with its average precision, the share of defects (what
/// flagging everything would reach) and, when given, the operating point at the threshold.
pub fn precision_recall(
    curve: &[(f64, f64)],
    average_precision: Option<f64>,
    defect_share: f64,
    at_threshold: Option<&Marker>,
) -> Result<Chart, ChartError> {
    let name = match average_precision {
        Some(ap) => format!("precision-recall (AP {ap:.3})"),
        None => "precision-recall".to_string(),
    };
    let base = Series {
        name: format!("share of defects ({})", number(defect_share)),
        points: vec![(0.0, defect_share), (1.0, defect_share)],
    };
    let curve = Series { name, points: curve.to_vec() };
    let axes = Axes { title: "Precision-recall curve", x: "Recall", y: "Precision" };
    unit_square(&axes, &curve, &base, at_threshold, SeriesLabelPosition::LowerLeft)
}

/// The scores of normal and defective images as side-by-side bars per bin, the threshold as
/// a vertical line labelled with its value.
pub fn score_histogram(normal: &[f32], defect: &[f32], threshold: f32) -> Result<Chart, ChartError> {
    let title = "Anomaly scores";
    let (lo, hi) = score_range(normal, defect, threshold);
    let width = (hi - lo) / HISTOGRAM_BINS as f64;
    let count = |v: &[f32]| {
        let mut c = vec![0u32; HISTOGRAM_BINS];
        for x in v {
            let i = ((*x as f64 - lo) / width).floor().max(0.0) as usize;
            c[i.min(HISTOGRAM_BINS - 1)] += 1;
        }
        c
    };
    let (cn, cd) = (count(normal), count(defect));
    let top = cn.iter().chain(&cd).copied().max().unwrap_or(0).max(1);
    // Headroom above the tallest bar for the legend and the threshold's label.
    let y_top = (top as f64 * 1.4).ceil() as u32 + 1;
    let t = threshold as f64;
    render(title, |root| {
        let mut chart = builder(root, title).build_cartesian_2d(lo..hi, 0u32..y_top)?;
        mesh(&mut chart, "Anomaly score", "Images", &|v: &f64| number(*v), &|v: &u32| v.to_string())?;
        let both = !normal.is_empty() && !defect.is_empty();
        let classes = [("normal", normal.len(), &cn, NORMAL, 0.0), ("defective", defect.len(), &cd, DEFECT, 0.5)];
        for (name, n, counts, color, offset) in classes {
            if n == 0 {
                continue;
            }
            let (shift, span) = if both { (offset * width, width / 2.0) } else { (0.0, width) };
            let fill = rgb(color).filled();
            chart
                .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| {
                    let x0 = lo + i as f64 * width + shift;
                    Rectangle::new([(x0, 0), (x0 + span, *c)], fill)
                }))?
                .label(format!("{name} ({n} images)"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], fill));
        }
        let line = rgb(THRESHOLD).stroke_width(LINE_WIDTH);
        let label = format!("threshold {}", number(t));
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(t, 0), (t, y_top)], line)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], line));
        // The legend in the upper corner away from the line, the value beside the line on the
        // side away from the legend, or below the legend where that side has no room.
        let legend_left = t > (lo + hi) / 2.0;
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        let (tx, _) = chart.backend_coord(&(t, 0));
        let style = text(LEGEND_PX);
        let (w, _) = root.estimate_text_size(&label, &style)?;
        let gap = 6;
        let away = if legend_left { tx + gap + w as i32 <= xs.end } else { tx - gap - w as i32 >= xs.start };
        let right_of_line = legend_left == away;
        let y = if away { ys.start + gap } else { ys.start + LEGEND_PX as i32 * 7 };
        let (x, h) = if right_of_line { (tx + gap, HPos::Left) } else { (tx - gap, HPos::Right) };
        root.draw(&Text::new(label, (x, y), style.pos(Pos::new(h, VPos::Top))))?;
        let corner = if legend_left { SeriesLabelPosition::UpperLeft } else { SeriesLabelPosition::UpperRight };
        legend(&mut chart, corner)?;
        Ok(plot_area(chart.plotting_area().get_pixel_range(), (lo, hi)))
    })
}

/// Loss curves over epochs, one series per loss; the y axis turns logarithmic when every value
/// is positive and they span more than a factor of ten, so small losses stay visible beside
/// large ones.
pub fn loss_curves(series: &[Series]) -> Result<Chart, ChartError> {
    let title = "Training losses";
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y_lo, y_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x_lo, x_hi) = if x_lo.is_finite() { (x_lo, x_hi.max(x_lo + 1.0)) } else { (1.0, 2.0) };
    let log = y_lo > 0.0 && y_hi / y_lo > 10.0;
    render(title, |root| {
        let area = if log {
            let (lo, hi) = (y_lo / 1.25, y_hi * 1.25);
            let mut chart = builder(root, title).build_cartesian_2d(x_lo..x_hi, (lo..hi).log_scale())?;
            lines(&mut chart, series, "Loss (log scale)")?;
            chart.plotting_area().get_pixel_range()
        } else {
            let (lo, hi) = padded(if y_lo.is_finite() { (y_lo.min(0.0), y_hi) } else { (0.0, 1.0) });
            let mut chart = builder(root, title).build_cartesian_2d(x_lo..x_hi, lo..hi)?;
            lines(&mut chart, series, "Loss")?;
            chart.plotting_area().get_pixel_range()
        };
        Ok(plot_area(area, (x_lo, x_hi)))
    })
}

/// What a chart's title and axes say.
struct Axes<'a> {
    title: &'a str,
    x: &'a str,
    y: &'a str,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult<T> = Result<T, Box<dyn StdError>>;

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

fn text(px: u32) -> TextStyle<'static> {
    (FONT_FAMILY, px).into_font().color(&rgb(TEXT))
}

/// Registers the embedded font with plotters once per process.
fn font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, ttf_noto_sans::REGULAR).is_ok());
    if ok { Ok(()) } else { Err(ChartError::Font) }
}

/// Draws into a fresh [`WIDTH`] × [`HEIGHT`] picture; `draw` returns the plot area.
fn render(title: &str, draw: impl FnOnce(&Area<'_>) -> DrawResult<PlotArea>) -> Result<Chart, ChartError> {
    font()?;
    let failed = |e: Box<dyn StdError>| ChartError::Draw { title: title.to_string(), message: e.to_string() };
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    let plot = {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let plot = root
            .fill(&rgb(BACKGROUND))
            .map_err(|e| Box::new(e) as Box<dyn StdError>)
            .and_then(|()| draw(&root))
            .map_err(failed)?;
        root.present().map_err(|e| failed(Box::new(e)))?;
        plot
    };
    let image = RgbImage::from_raw(WIDTH, HEIGHT, buf).expect("the buffer holds WIDTH × HEIGHT RGB pixels");
    Ok(Chart { image, plot })
}

/// The title and room for the axes' numbers and labels.
fn builder<'a, 'b>(root: &'a Area<'b>, title: &str) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, text(TITLE_PX))
        .margin(MARGIN_PX)
        .margin_right(MARGIN_PX * 2)
        .x_label_area_size(TICK_PX * 2 + AXIS_LABEL_PX * 2)
        .y_label_area_size(TICK_PX * 3 + AXIS_LABEL_PX + 12);
    b
}

/// Axes, grid, tick numbers and axis labels.
fn mesh<X, Y>(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, Y>>,
    x_desc: &str,
    y_desc: &str,
    x_format: &dyn Fn(&X::ValueType) -> String,
    y_format: &dyn Fn(&Y::ValueType) -> String,
) -> DrawResult<()>
where
    X: Ranged + ValueFormatter<X::ValueType>,
    Y: Ranged + ValueFormatter<Y::ValueType>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(text(AXIS_LABEL_PX))
        .label_style(text(TICK_PX))
        .axis_style(rgb(AXIS))
        .bold_line_style(rgb(GRID))
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(x_format)
        .y_label_formatter(y_format)
        .draw()?;
    Ok(())
}

fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> DrawResult<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(text(LEGEND_PX))
        .background_style(rgb(BACKGROUND).mix(0.85))
        .border_style(rgb(AXIS))
        .margin(8)
        .draw()?;
    Ok(())
}

/// A curve over the unit square, a dashed reference line and an optional marked point.
fn unit_square(
    axes: &Axes<'_>,
    curve: &Series,
    reference: &Series,
    marker: Option<&Marker>,
    position: SeriesLabelPosition,
) -> Result<Chart, ChartError> {
    // A little room past 0 and 1 so curves along the edges stay visible.
    let range = (-0.02, 1.02);
    render(axes.title, |root| {
        let mut chart = builder(root, axes.title).build_cartesian_2d(range.0..range.1, range.0..range.1)?;
        let ticks = |v: &f64| number(*v);
        mesh(&mut chart, axes.x, axes.y, &ticks, &ticks)?;
        let dashed = rgb(REFERENCE).stroke_width(LINE_WIDTH);
        chart
            .draw_series(DashedLineSeries::new(reference.points.iter().copied(), 6, 5, dashed))?
            .label(reference.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 6, y)], dashed));
        let line = rgb(SERIES[0]).stroke_width(LINE_WIDTH);
        chart
            .draw_series(LineSeries::new(curve.points.iter().copied(), line))?
            .label(curve.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], line));
        if let Some(m) = marker {
            let dot = rgb(THRESHOLD).filled();
            chart
                .draw_series(std::iter::once(Circle::new(m.at, 5, dot)))?
                .label(m.name.clone())
                .legend(move |(x, y)| Circle::new((x + 7, y), 4, dot));
        }
        legend(&mut chart, position)?;
        Ok(plot_area(chart.plotting_area().get_pixel_range(), range))
    })
}

/// The loss series on a linear or logarithmic y axis, with the mesh and the legend.
fn lines<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    series: &[Series],
    y_desc: &str,
) -> DrawResult<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    // Epochs are whole numbers: no tick at 1.5.
    let epochs = |v: &f64| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() };
    mesh(chart, "Epoch", y_desc, &epochs, &|v: &f64| number(*v))?;
    for (i, s) in series.iter().enumerate() {
        let line = rgb(SERIES[i % SERIES.len()]).stroke_width(LINE_WIDTH);
        // Points too while they are few, so a one-epoch run still shows its value.
        let dots = if s.points.len() <= 20 { 3 } else { 0 };
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), line).point_size(dots))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], line));
    }
    legend(chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

/// The x range of the histogram: every score and the threshold, with a margin.
fn score_range(normal: &[f32], defect: &[f32], threshold: f32) -> (f64, f64) {
    let all = normal.iter().chain(defect).chain(std::iter::once(&threshold)).filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v as f64), b.max(*v as f64)));
    if !lo.is_finite() { (0.0, 1.0) } else { padded((lo, hi)) }
}

/// `range` widened by 5 % each side; a single value gets a range around it.
fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    let span = hi - lo;
    if span > 0.0 {
        (lo - span * 0.05, hi + span * 0.05)
    } else {
        let d = if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - d, hi + d)
    }
}

fn plot_area((xs, ys): (Range<i32>, Range<i32>), x_range: (f64, f64)) -> PlotArea {
    PlotArea {
        left: xs.start as u32,
        right: (xs.end - 1) as u32,
        top: ys.start as u32,
        bottom: (ys.end - 1) as u32,
        x_range,
    }
}
