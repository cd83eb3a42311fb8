//! PixArt-α's caption cleaning: DeepFloyd IF's `clean_caption`, which PixArt-α's `T5Embedder` (and
//! diffusers' `PixArtAlphaPipeline`, `clean_caption=True`) applies **twice** before T5.
//!
//! One pass, in the reference's order: URL-decode (`unquote_plus`), trim and lower-case,
//! `<person>` → `person`, remove URLs, strip HTML to its text (BeautifulSoup's `.text`), remove
//! `@nicknames` and CJK ideographs/strokes/enclosed forms, unify dashes and quotes, remove `&quot;`,
//! `&amp`, IP addresses, trailing article ids, literal `\n`, `#123`-style ids, 6+-digit numbers and
//! file names, collapse repeated quotes and dots, blank out stray punctuation, split
//! `snake_case`/`kebab-case` words when the text has more than three `-`/`_`, fix text with
//! ftfy's default steps, unescape HTML twice, remove product codes, shipping/download/click/page
//! boilerplate and sizes like `1920x1080`, normalise spacing around `:` `,` `.` `/`, and strip
//! enclosing quotes and leading/trailing punctuation.
//!
//! Where we differ (documented in `docs/latents.md`): ftfy's mojibake repair (`fix_encoding`) is not
//! applied (every other ftfy step is); HTML is stripped by a small scanner that follows Python's
//! `html.parser` for tags, comments, declarations, `<script>`/`<style>` and character references;
//! `\w`, `\d`, `\s`, `\b` are Unicode classes as Rust's `regex` defines them. The golden test
//! (`tests/clean_caption.rs`) checks every prompt of PixArt-α's sample list and a set of hostile
//! strings against the Python code.

use fancy_regex::Regex;
use std::borrow::Cow;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

/// PixArt-α's text preprocessing: [`clean_caption`] applied twice, as `T5Embedder.text_preprocessing`.
pub fn pixart_clean(text: &str) -> String {
    clean_caption(&clean_caption(text))
}

/// One pass of DeepFloyd IF's `clean_caption` (see the module documentation).
pub fn clean_caption(text: &str) -> String {
    let r = rules();
    let mut s = unquote_plus(text).trim().to_lowercase();
    s = s.replace("<person>", "person");
    s = sub(&r.url_http, &s, "");
    s = sub(&r.url_www, &s, "");
    s = html_text(&s);
    for (re, with) in &r.before_ftfy {
        s = sub(re, &s, with);
    }
    if r.dash_or_underscore.find_iter(&s).count() > 3 {
        s = r.dash_or_underscore.replace_all(&s, " ").into_owned();
    }
    s = fix_text(&s);
    s = htmlize::unescape(htmlize::unescape(s.as_str()).into_owned()).into_owned();
    for (re, with) in &r.after_ftfy {
        s = sub(re, &s, with);
    }
    // The reference calls `caption.strip()` here and drops the result: the text is not trimmed.
    for (re, with) in &r.edges {
        s = sub(re, &s, with);
    }
    s.trim().to_string()
}

fn sub(re: &Regex, s: &str, with: &str) -> String {
    match re.try_replacen(s, 0, with) {
        Ok(Cow::Owned(o)) => o,
        Ok(Cow::Borrowed(_)) => s.to_string(),
        // Only the backtracking limit can fail; leave the text as it is rather than lose it.
        Err(_) => s.to_string(),
    }
}

struct Rules {
    url_http: Regex,
    url_www: Regex,
    before_ftfy: Vec<(Regex, &'static str)>,
    dash_or_underscore: regex::Regex,
    after_ftfy: Vec<(Regex, &'static str)>,
    edges: Vec<(Regex, &'static str)>,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("caption cleaning pattern {p:?}: {e}"));
        let list = |v: &[(&str, &'static str)]| v.iter().map(|(p, w)| (re(p), *w)).collect::<Vec<_>>();
        let url = |scheme: &str| {
            re(&format!(
                r"\b((?:{scheme}:(?:/{{1,3}}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)))"
            ))
        };
        Rules {
            url_http: url("https?"),
            url_www: url("www"),
            before_ftfy: list(&[
                (r"@[\w\d]+\b", ""),
                (r"[\x{31c0}-\x{31ef}]+", ""),
                (r"[\x{31f0}-\x{31ff}]+", ""),
                (r"[\x{3200}-\x{32ff}]+", ""),
                (r"[\x{3300}-\x{33ff}]+", ""),
                (r"[\x{3400}-\x{4dbf}]+", ""),
                (r"[\x{4dc0}-\x{4dff}]+", ""),
                (r"[\x{4e00}-\x{9fff}]+", ""),
                (
                    r"[\x{002D}\x{058A}\x{05BE}\x{1400}\x{1806}\x{2010}-\x{2015}\x{2E17}\x{2E1A}\x{2E3A}\x{2E3B}\x{2E40}\x{301C}\x{3030}\x{30A0}\x{FE31}\x{FE32}\x{FE58}\x{FE63}\x{FF0D}]+",
                    "-",
                ),
                ("[`´«»“”¨]", "\""),
                ("[‘’]", "'"),
                (r"&quot;?", ""),
                (r"&amp", ""),
                (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),
                (r"\d:\d\d\s+$", ""),
                (r"\\n", " "),
                (r"#\d{1,3}\b", ""),
                (r"#\d{5,}\b", ""),
                (r"\b\d{6,}\b", ""),
                (r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", ""),
                (r#"["']{2,}"#, "\""),
                (r"[\.]{2,}", " "),
                (r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}", " "),
                (r"\s+\.\s+", " "),
            ]),
            dash_or_underscore: regex::Regex::new(r"(?:\-|_)").expect("static pattern"),
            after_ftfy: list(&[
                (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),
                (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
                (r"\b\d+[a-zA-Z]+\d+\b", ""),
                (r"(worldwide\s+)?(free\s+)?shipping", ""),
                (r"(free\s)?download(\sfree)?", ""),
                (r"\bclick\b\s(?:for|on)\s\w+", ""),
                (r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", ""),
                (r"\bpage\s+\d+\b", ""),
                (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
                (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),
                (r"\b\s+:\s+", ": "),
                (r"(\D[,\./])\b", "${1} "),
                (r"\s+", " "),
            ]),
            edges: list(&[
                (r#"^["']([\w\W]+)["']$"#, "${1}"),
                (r"^['_,\-:;]", ""),
                (r"['_,\-:\-\+]$", ""),
                (r"^\.\S+$", ""),
            ]),
        }
    })
}

/// Python's `urllib.parse.unquote_plus`: `+` → space, `%XX` sequences decoded as UTF-8 (invalid
/// bytes become U+FFFD).
fn unquote_plus(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// The text content of `s` as BeautifulSoup with `html.parser` gives it (`.text`): tags, comments,
/// declarations, processing instructions and `<script>`/`<style>` bodies removed, character
/// references resolved (an unknown `&name;` becomes `&name`, as bs4 writes it).
fn html_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let skipped = match c {
            '<' => markup_len(rest),
            '&' => char_ref(rest).map(|(len, text)| {
                out.push_str(&text);
                len
            }),
            _ => None,
        };
        let n = skipped.unwrap_or_else(|| {
            out.push(c);
            c.len_utf8()
        });
        rest = &rest[n..];
    }
    out
}

/// The byte length of the markup (tag, comment, declaration, processing instruction, with a
/// `<script>`/`<style>` element's body) at the start of `s`, or `None` when `<` starts text.
fn markup_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let after = |from: usize, pat: &str| s[from..].find(pat).map(|i| from + i + pat.len());
    if s.starts_with("<!--") {
        return after(4, "-->");
    }
    if s.starts_with("<!") || s.starts_with("<?") {
        return after(2, ">");
    }
    let end_tag = s.starts_with("</");
    let name_at = if end_tag { 2 } else { 1 };
    if !b.get(name_at).is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    // The tag ends at the first `>` outside a quoted attribute value.
    let mut quote = None;
    let mut end = None;
    for (i, ch) in s.char_indices().skip(name_at) {
        match (quote, ch) {
            (Some(q), _) if ch == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(ch),
            (None, '>') => {
                end = Some(i + 1);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let name: String = s[name_at..].chars().take_while(|c| !c.is_whitespace() && *c != '/' && *c != '>').collect();
    if !end_tag && (name == "script" || name == "style") {
        let close = format!("</{name}");
        return Some(s[end..].find(&close).and_then(|i| after(end + i, ">")).unwrap_or(s.len()));
    }
    Some(end)
}

/// A character reference at the start of `s` as `html.parser` + bs4 resolve it: its byte length
/// and replacement. A reference needs a terminating character (consumed when it is `;`).
fn char_ref(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'#') {
        let hex = matches!(b.get(2), Some(b'x' | b'X'));
        let start = if hex { 3 } else { 2 };
        let digits =
            b[start..].iter().take_while(|c| if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() }).count();
        let term = *b.get(start + digits)?;
        if digits == 0 || term.is_ascii_hexdigit() {
            return None;
        }
        let len = start + digits + usize::from(term == b';');
        let text = htmlize::unescape(format!("{};", &s[..start + digits])).into_owned();
        return Some((len, text));
    }
    if !b.get(1).is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    let name_len = 1 + b[2..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'.').count();
    let term = *b.get(1 + name_len)?;
    if term.is_ascii_alphanumeric() {
        return None;
    }
    let name = &s[1..1 + name_len];
    let text = htmlize::ENTITIES
        .get(format!("&{name};").as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| format!("&{name}"));
    Some((1 + name_len + usize::from(term == b';'), text))
}

/// ftfy's `fix_text` with its default configuration, less the mojibake repair (`fix_encoding`):
/// line by line, until nothing changes, HTML entities with `;` unescaped (unless a `<` was seen),
/// C1 controls read as Windows-1252, Latin ligatures split, full/half-width forms narrowed, curly
/// quotes straightened, line breaks unified, lone surrogates replaced, terminal escapes and control
/// characters removed, then NFC.
fn fix_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut unescape = true;
    for segment in s.split_inclusive('\n') {
        unescape &= !segment.contains('<');
        let mut text = segment.to_string();
        loop {
            let fixed = fix_segment(&text, unescape);
            if fixed == text {
                break;
            }
            text = fixed;
        }
        out.push_str(&text);
    }
    out
}

fn fix_segment(s: &str, unescape: bool) -> String {
    static ENTITY: OnceLock<regex::Regex> = OnceLock::new();
    static TERMINAL: OnceLock<regex::Regex> = OnceLock::new();
    let mut t = s.to_string();
    if unescape {
        let entity = ENTITY.get_or_init(|| regex::Regex::new("&#?[0-9A-Za-z]{1,24};").expect("static pattern"));
        t = entity
            .replace_all(&t, |c: &regex::Captures| {
                let text = &c[0];
                if text.starts_with("&#") {
                    htmlize::unescape(text.to_string()).into_owned()
                } else {
                    htmlize::ENTITIES
                        .get(text.as_bytes())
                        .map_or_else(|| text.to_string(), |v| String::from_utf8_lossy(v).into_owned())
                }
            })
            .into_owned();
    }
    let mut mapped = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '\u{80}'..='\u{9f}' => mapped.push(windows_1252(c)),
            '\u{0132}' => mapped.push_str("IJ"),
            '\u{0133}' => mapped.push_str("ij"),
            '\u{0149}' => mapped.push_str("ʼn"),
            '\u{01F1}' => mapped.push_str("DZ"),
            '\u{01F2}' => mapped.push_str("Dz"),
            '\u{01F3}' => mapped.push_str("dz"),
            '\u{01C4}' => mapped.push_str("DŽ"),
            '\u{01C5}' => mapped.push_str("Dž"),
            '\u{01C6}' => mapped.push_str("dž"),
            '\u{01C7}' => mapped.push_str("LJ"),
            '\u{01C8}' => mapped.push_str("Lj"),
            '\u{01C9}' => mapped.push_str("lj"),
            '\u{01CA}' => mapped.push_str("NJ"),
            '\u{01CB}' => mapped.push_str("Nj"),
            '\u{01CC}' => mapped.push_str("nj"),
            '\u{FB00}' => mapped.push_str("ff"),
            '\u{FB01}' => mapped.push_str("fi"),
            '\u{FB02}' => mapped.push_str("fl"),
            '\u{FB03}' => mapped.push_str("ffi"),
            '\u{FB04}' => mapped.push_str("ffl"),
            '\u{FB05}' => mapped.push_str("ſt"),
            '\u{FB06}' => mapped.push_str("st"),
            '\u{3000}' => mapped.push(' '),
            '\u{FF01}'..='\u{FFEF}' => mapped.extend(std::iter::once(c).nfkc()),
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => mapped.push('\''),
            '\u{201C}'..='\u{201F}' => mapped.push('"'),
            _ => mapped.push(c),
        }
    }
    let t = mapped.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
    let terminal = TERMINAL.get_or_init(|| regex::Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").expect("static pattern"));
    let t = terminal.replace_all(&t, "");
    let t: String = t.chars().filter(|c| !is_removed_control(*c)).collect();
    t.nfc().collect()
}

/// ftfy's `fix_c1_controls`: a C1 control character read as the Windows-1252 byte it encodes
/// (the five bytes Windows-1252 leaves undefined stay as they are).
fn windows_1252(c: char) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    HIGH[c as usize - 0x80]
}

/// ftfy's `remove_control_chars` table.
fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}' | '\u{feff}'
        | '\u{fff9}'..='\u{fffc}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_text_follows_html_parser() {
        for (input, want) in [
            ("a <b>bold</b> c", "a bold c"),
            ("x < y and y > z", "x < y and y > z"),
            ("<p class='q>r'>hi</p> there", "hi there"),
            ("tom &amp; jerry &lt;3 &copy", "tom & jerry <3 &copy"),
            ("a <!-- c --> b", "a  b"),
            ("<script>var x</script>t", "t"),
            ("un <closed", "un <closed"),
            ("&notit; &amp", "&notit &amp"),
            ("a<br/>b", "ab"),
        ] {
            assert_eq!(html_text(input), want, "{input:?}");
        }
    }

    #[test]
    fn cleans_like_the_reference() {
        // The values diffusers' `_clean_caption` gives (the URL regex stops before `.png`).
        assert_eq!(clean_caption("A+photo%20of http://x.com/a.png a CAT"), "a photo of . a cat");
        assert_eq!(pixart_clean("  “Hello”, world!  "), "\"hello\", world!");
    }
}
