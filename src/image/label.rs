//! Text in pictures: labels drawn into images with a built-in 7×13 bitmap font (ASCII; other
//! characters show as `?`), grids of tiles framed by their row and column labels, and PNGs that
//! carry text chunks (the prompt and settings a picture was made with, as image viewers and
//! Stable Diffusion tools read them).

use embedded_graphics::mono_font::{ascii::FONT_7X13, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use image::RgbImage;

/// Width of a character, pixels.
pub const CHAR_W: u32 = 7;
/// Height of a line of text, pixels.
pub const LINE_H: u32 = 15;
/// Margin around a labelled grid, pixels.
const MARGIN: u32 = 8;
/// Characters a row label is wrapped at.
const ROW_LABEL_CHARS: usize = 36;
/// Colour of the labels.
const INK: [u8; 3] = [20, 20, 20];
/// Colour of the note (what the pictures are, when they are not what they seem).
const NOTE_INK: [u8; 3] = [170, 20, 20];

/// An image as an embedded-graphics target; what falls outside is clipped.
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0.put_pixel(p.x as u32, p.y as u32, image::Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

/// Draws `text` on one line with its top left corner at (`x`, `y`).
pub fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, rgb: [u8; 3]) {
    let style = MonoTextStyle::new(&FONT_7X13, Rgb888::new(rgb[0], rgb[1], rgb[2]));
    let ascii: String = text.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect();
    let _ = Text::with_baseline(&ascii, Point::new(x, y), style, Baseline::Top).draw(&mut Canvas(img));
}

/// `text` wrapped at word boundaries into lines of at most `width` characters (a longer word is
/// cut), at most `max_lines` of them: the last line ends in `...` when text is left over.
pub fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let width = width.max(4);
    let mut lines: Vec<String> = Vec::new();
    let words = text.split_whitespace().flat_map(|w| {
        let chars: Vec<char> = w.chars().collect();
        chars.chunks(width).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>()
    });
    let mut current = String::new();
    let mut left_over = false;
    for word in words {
        let fits = current.is_empty() || current.chars().count() + 1 + word.chars().count() <= width;
        if !fits {
            lines.push(std::mem::take(&mut current));
            if lines.len() == max_lines.max(1) {
                left_over = true;
                break;
            }
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() && lines.len() < max_lines.max(1) {
        lines.push(current);
    }
    if left_over {
        let last = lines.last_mut().expect("a line before the text left over");
        let keep: String = last.chars().take(width - 3).collect();
        *last = format!("{}...", keep.trim_end());
    }
    lines
}

/// What a grid of pictures is: a title, an optional note (in red), a label above each column and
/// one beside each row.
#[derive(Debug, Clone, Default)]
pub struct GridLabels {
    /// The title, on top (wrapped to the picture's width).
    pub title: String,
    /// Said under the title in red, when set.
    pub note: Option<String>,
    /// One label per column, centred above it.
    pub columns: Vec<String>,
    /// One label per row, left of it (wrapped into as many lines as the row is high).
    pub rows: Vec<String>,
}

/// `grid` (cells of `cell` = (width, height) pixels, `gap` pixels apart) on white with `labels`
/// around it: the title and note on top, the column labels above the columns, the row labels left
/// of the rows.
pub fn labelled_grid(grid: &RgbImage, cell: (u32, u32), gap: u32, labels: &GridLabels) -> RgbImage {
    let (gw, gh) = grid.dimensions();
    let left = MARGIN + ROW_LABEL_CHARS as u32 * CHAR_W + MARGIN;
    let width = left + gw + MARGIN;
    let chars = ((width - 2 * MARGIN) / CHAR_W) as usize;
    let title = wrap(&labels.title, chars, 3);
    let note = labels.note.as_deref().map(|n| wrap(n, chars, 4)).unwrap_or_default();
    let head = MARGIN + (title.len() + note.len()) as u32 * LINE_H;
    let top = head + if labels.columns.is_empty() { 6 } else { LINE_H + 4 };
    let mut out = RgbImage::from_pixel(width, top + gh + MARGIN, image::Rgb([255; 3]));
    image::imageops::replace(&mut out, grid, left as i64, top as i64);
    let lines = title.iter().map(|l| (l, INK)).chain(note.iter().map(|l| (l, NOTE_INK)));
    for (i, (line, ink)) in lines.enumerate() {
        draw_text(&mut out, MARGIN as i32, (MARGIN + i as u32 * LINE_H) as i32, line, ink);
    }
    let column_chars = ((cell.0 + gap) / CHAR_W).max(4) as usize;
    for (c, label) in labels.columns.iter().enumerate() {
        let text = wrap(label, column_chars, 1).pop().unwrap_or_default();
        let centre = (left + c as u32 * (cell.0 + gap) + cell.0 / 2) as i32;
        let x = centre - (text.chars().count() as u32 * CHAR_W / 2) as i32;
        draw_text(&mut out, x, head as i32 + 2, &text, INK);
    }
    let row_lines = (cell.1 / LINE_H).max(1) as usize;
    for (r, label) in labels.rows.iter().enumerate() {
        let y = top + r as u32 * (cell.1 + gap);
        for (i, line) in wrap(label, ROW_LABEL_CHARS, row_lines).iter().enumerate() {
            draw_text(&mut out, MARGIN as i32, (y + i as u32 * LINE_H) as i32, line, INK);
        }
    }
    out
}

/// `img` encoded as PNG with a UTF-8 text chunk (iTXt) per (keyword, text) of `text`.
pub fn png_with_text(img: &RgbImage, text: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, img.width(), img.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (keyword, value) in text {
        encoder.add_itxt_chunk(keyword.to_string(), value.clone())?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(img.as_raw())?;
    writer.finish()?;
    Ok(bytes)
}

/// The text chunks of PNG `bytes`, by keyword (tEXt, zTXt and iTXt alike).
pub fn png_text(bytes: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
    let info = reader.info();
    let mut out: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    for t in &info.compressed_latin1_text {
        out.push((t.keyword.clone(), t.get_text()?));
    }
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_words_and_marks_what_is_left_out() {
        assert_eq!(wrap("a red fox jumps over", 9, 5), ["a red fox", "jumps", "over"]);
        assert_eq!(wrap("a red fox jumps over", 9, 2), ["a red fox", "jumps..."]);
        assert_eq!(wrap("abcdefghij", 4, 5), ["abcd", "efgh", "ij"]);
        assert!(wrap("", 10, 2).is_empty());
    }

    #[test]
    fn labels_are_drawn_beside_the_tiles_and_text_chunks_read_back() {
        let grid = RgbImage::from_pixel(2 * 32 + 4, 32, image::Rgb([0, 0, 255]));
        let labels = GridLabels {
            title: "step 7".into(),
            note: Some("random".into()),
            columns: vec!["seed 0".into(), "seed 1".into()],
            rows: vec!["a photo of a cat".into()],
        };
        let out = labelled_grid(&grid, (32, 32), 4, &labels);
        // The tiles are copied whole at the bottom right; ink is drawn in the margins only.
        let (left, top) = (out.width() - MARGIN - grid.width(), out.height() - MARGIN - grid.height());
        assert_eq!(image::imageops::crop_imm(&out, left, top, grid.width(), grid.height()).to_image(), grid);
        let inked = |x0: u32, y0: u32, x1: u32, y1: u32, ink: [u8; 3]| {
            (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| out.get_pixel(x, y).0 == ink).count()
        };
        assert!(inked(0, 0, out.width(), LINE_H, INK) > 10, "the title is drawn");
        assert!(inked(0, LINE_H, out.width(), 2 * LINE_H + MARGIN, NOTE_INK) > 10, "the note is drawn in red");
        assert!(inked(left, top - LINE_H, left + 32, top, INK) > 10, "the first column's label above it");
        assert!(inked(0, top, left, top + LINE_H, INK) > 10, "the row's label beside it");
        let png = png_with_text(&out, &[("parameters", "a cat\nSeed: 3 — ünïcode".into())]).unwrap();
        assert_eq!(png_text(&png).unwrap(), [("parameters".to_string(), "a cat\nSeed: 3 — ünïcode".to_string())]);
        assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8(), out);
    }
}
