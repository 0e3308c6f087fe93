//! A few hand-written SVG primitives and the axis helpers the plots share. A plotting
//! crate would cost xtask far more compile time than this. Everything is drawn on a
//! white 720×400 canvas with explicit fonts so GitHub shows the files as they are, in
//! light and dark mode alike; every text goes through [`escape`].

use std::fmt::Write as _;

pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 400.0;

/// Series colours (Tableau 10): distinct, and readable on white.
pub const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#9c755f",
];
pub const GRID: &str = "#e3e3e3";
pub const INK: &str = "#222222";
pub const MUTED: &str = "#777777";

/// `s` with the five XML-special characters replaced by entities.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Copy)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// An SVG document under construction.
pub struct Svg {
    out: String,
}

impl Svg {
    /// A white canvas with `title` centred at the top.
    pub fn new(title: &str) -> Self {
        let mut svg = Self {
            out: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
                 viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"Helvetica, Arial, sans-serif\">\n\
                 <title>{}</title>\n",
                escape(title)
            ),
        };
        svg.rect(0.0, 0.0, WIDTH, HEIGHT, "#ffffff");
        svg.text_styled(
            WIDTH / 2.0,
            26.0,
            16.0,
            Anchor::Middle,
            title,
            INK,
            "font-weight=\"bold\"",
        );
        svg
    }

    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/>",
            w.max(0.0),
            h.max(0.0)
        );
    }

    pub fn line(&mut self, from: (f64, f64), to: (f64, f64), stroke: &str, width: f64) {
        self.line_styled(from, to, stroke, width, "");
    }

    /// A dashed line, for markers that must not read as data.
    pub fn dashed(&mut self, from: (f64, f64), to: (f64, f64), stroke: &str, width: f64) {
        self.line_styled(from, to, stroke, width, "stroke-dasharray=\"6 4\"");
    }

    fn line_styled(&mut self, from: (f64, f64), to: (f64, f64), stroke: &str, w: f64, extra: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{stroke}\" \
             stroke-width=\"{w}\" {extra}/>",
            from.0, from.1, to.0, to.1
        );
    }

    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{width}\"/>",
            pts.join(" ")
        );
    }

    pub fn circle(&mut self, (x, y): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{fill}\" stroke=\"#ffffff\" \
             stroke-width=\"1\"/>"
        );
    }

    pub fn text(&mut self, x: f64, y: f64, size: f64, anchor: Anchor, s: &str, fill: &str) {
        self.text_styled(x, y, size, anchor, s, fill, "");
    }

    /// Text with extra attributes (e.g. a rotation); `extra` is trusted markup.
    #[allow(clippy::too_many_arguments)]
    pub fn text_styled(
        &mut self,
        x: f64,
        y: f64,
        size: f64,
        anchor: Anchor,
        s: &str,
        fill: &str,
        extra: &str,
    ) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let _ = writeln!(
            self.out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"{anchor}\" \
             fill=\"{fill}\" {extra}>{}</text>",
            escape(s)
        );
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// A plot with nothing to show: the title and a grey "no data" with the reason.
pub fn no_data(title: &str, why: &str) -> String {
    let mut svg = Svg::new(title);
    svg.text(
        WIDTH / 2.0,
        HEIGHT / 2.0,
        22.0,
        Anchor::Middle,
        "no data",
        MUTED,
    );
    svg.text(
        WIDTH / 2.0,
        HEIGHT / 2.0 + 26.0,
        13.0,
        Anchor::Middle,
        why,
        MUTED,
    );
    svg.finish()
}

/// The rectangle the data is drawn in; margins leave room for the title and legend
/// above, tick labels and the axis titles around it.
#[derive(Clone, Copy)]
pub struct Area {
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

impl Area {
    pub const DEFAULT: Self = Self {
        left: 76.0,
        top: 62.0,
        right: 700.0,
        bottom: 334.0,
    };

    pub fn width(&self) -> f64 {
        self.right - self.left
    }

    pub fn height(&self) -> f64 {
        self.bottom - self.top
    }
}

/// Evenly spaced "nice" ticks (steps of 1, 2, 2.5 or 5 × 10ⁿ) from `min`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ticks {
    pub min: f64,
    pub step: f64,
    pub count: usize,
}

impl Ticks {
    /// Ticks from 0 covering `max`, about `target` of them.
    pub fn from_zero(max: f64, target: usize) -> Self {
        Self::covering(0.0, max, target)
    }

    /// Ticks covering `[lo, hi]`, starting at a multiple of the step at or below `lo`.
    pub fn covering(lo: f64, hi: f64, target: usize) -> Self {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && hi > lo {
            (lo, hi)
        } else if lo.is_finite() && lo != 0.0 {
            (lo.min(0.0), lo.abs().max(hi))
        } else {
            (0.0, 1.0)
        };
        let step = nice_step((hi - lo) / target.max(1) as f64);
        let min = (lo / step).floor() * step;
        let count = ((hi - min) / step - 1e-9).ceil().max(1.0) as usize + 1;
        Self { min, step, count }
    }

    pub fn max(&self) -> f64 {
        self.value(self.count - 1)
    }

    pub fn value(&self, i: usize) -> f64 {
        self.min + self.step * i as f64
    }

    /// A tick's label with as many decimals as the step needs.
    pub fn label(&self, i: usize) -> String {
        let decimals = (0..4)
            .find(|&d| {
                let scaled = self.step * 10f64.powi(d);
                (scaled - scaled.round()).abs() < 1e-6
            })
            .unwrap_or(4) as usize;
        let v = self.value(i);
        // No "-0".
        let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v };
        format!("{v:.decimals$}")
    }
}

/// The smallest of 1, 2, 2.5, 5, 10 × 10ⁿ that is at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|&n| norm <= n + 1e-9)
        .unwrap_or(10.0);
    nice * mag
}

/// Draws horizontal grid lines with tick labels and the rotated y-axis title; returns
/// the function mapping a value to its y coordinate.
pub fn y_axis(svg: &mut Svg, area: Area, ticks: Ticks, title: &str) -> impl Fn(f64) -> f64 + use<> {
    let (lo, hi) = (ticks.min, ticks.max());
    let y = move |v: f64| area.bottom - (v - lo) / (hi - lo) * area.height();
    for i in 0..ticks.count {
        let ty = y(ticks.value(i));
        svg.line((area.left, ty), (area.right, ty), GRID, 1.0);
        svg.text(
            area.left - 8.0,
            ty + 4.0,
            12.0,
            Anchor::End,
            &ticks.label(i),
            INK,
        );
    }
    let mid = (area.top + area.bottom) / 2.0;
    svg.text_styled(
        20.0,
        mid,
        13.0,
        Anchor::Middle,
        title,
        INK,
        &format!("transform=\"rotate(-90 20 {mid:.1})\""),
    );
    y
}

/// The x-axis title, centred under the plot area.
pub fn x_title(svg: &mut Svg, area: Area, title: &str) {
    let x = (area.left + area.right) / 2.0;
    svg.text(x, area.bottom + 44.0, 13.0, Anchor::Middle, title, INK);
}

/// The frame's left and bottom edges, drawn last so they sit over the grid and bars.
pub fn axes(svg: &mut Svg, area: Area) {
    svg.line((area.left, area.top), (area.left, area.bottom), INK, 1.0);
    svg.line(
        (area.left, area.bottom),
        (area.right, area.bottom),
        INK,
        1.0,
    );
}

/// A one-row legend of coloured swatches, right-aligned above the plot area.
pub fn legend(svg: &mut Svg, area: Area, items: &[(&str, String)]) {
    // Helvetica at 12px averages under 7px a character.
    let widths: Vec<f64> = items
        .iter()
        .map(|(_, label)| 18.0 + label.chars().count() as f64 * 6.8 + 16.0)
        .collect();
    let mut x = area.right - widths.iter().sum::<f64>() + 16.0;
    let y = area.top - 14.0;
    for ((colour, label), w) in items.iter().zip(&widths) {
        svg.rect(x, y - 10.0, 12.0, 12.0, colour);
        svg.text(x + 18.0, y, 12.0, Anchor::Start, label, INK);
        x += w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        let mut svg = Svg::new("<&>");
        svg.text(1.0, 2.0, 12.0, Anchor::Start, "x < y & \u{1}", INK);
        super::super::xml_check::check(&svg.finish()).unwrap();
    }

    #[test]
    fn nice_ticks() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(2.2), 2.5);
        assert_eq!(nice_step(40.0), 50.0);
        assert_eq!(nice_step(0.0), 1.0);
        let t = Ticks::from_zero(7.9, 5);
        assert_eq!((t.min, t.step, t.max()), (0.0, 2.0, 8.0));
        assert_eq!(t.label(4), "8");
        let t = Ticks::from_zero(8.0, 4);
        assert_eq!(t.max(), 8.0);
        let t = Ticks::from_zero(0.9, 4);
        assert_eq!((t.step, t.label(1).as_str()), (0.25, "0.25"));
        let t = Ticks::covering(470.0, 905.0, 6);
        assert_eq!((t.min, t.step, t.max()), (400.0, 100.0, 1000.0));
        // Degenerate input still gives a usable axis.
        let t = Ticks::from_zero(0.0, 5);
        assert!(t.max() > t.min);
        let t = Ticks::covering(f64::NAN, f64::NAN, 5);
        assert!(t.max() > t.min);
        let t = Ticks::covering(480.0, 480.0, 5);
        assert!(t.min <= 480.0 && t.max() >= 480.0 && t.max() > t.min);
    }
}
