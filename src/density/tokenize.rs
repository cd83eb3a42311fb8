//! A Penn-Treebank-style word tokenizer for captions and alt text, following UD English-EWT's
//! conventions (the tagger's training data): punctuation split off, contractions split (`do n't`,
//! `dog 's`), hyphenated words split at the hyphen (`black - and - white`) except after common
//! prefixes and single letters (`non-stop`, `t-shirt`), and numbers, abbreviations, URLs and e-mail addresses kept whole.
//! Emoji and other symbols become tokens of their own; text in any script passes through unchanged.

/// Prefixes after which EWT keeps a hyphenated word whole (`anti-war`, `e-mail`).
const PREFIXES: &[&str] = &[
    "anti", "co", "counter", "e", "ex", "inter", "mid", "multi", "neo", "non", "post", "pre", "pro", "re", "self",
    "semi", "sub", "ultra", "vice",
];

/// Abbreviations that keep their final period.
const ABBREVIATIONS: &[&str] =
    &["dr", "etc", "inc", "jr", "ltd", "mr", "mrs", "ms", "no", "prof", "sr", "st", "vs", "approx", "co", "corp"];

/// Clitics split off the end of a word (after the apostrophe).
const CLITICS: &[&str] = &["s", "re", "ve", "ll", "d", "m"];

/// Replaces typographic quotes and apostrophes with ASCII ones, the forms the tagger was trained on.
pub fn normalize_quotes(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() || !text.contains(['\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{00B4}']) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\u{2018}' | '\u{2019}' | '\u{00B4}' => '\'',
                '\u{201C}' | '\u{201D}' => '"',
                c => c,
            })
            .collect(),
    )
}

/// Appends the tokens of `text` to `out` (as slices of `text`; see [`normalize_quotes`] first).
pub fn tokenize<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    for chunk in text.split_whitespace() {
        chunk_tokens(chunk, out);
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

fn is_address(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("www.")
        || s.split_once('@').is_some_and(|(a, b)| !a.is_empty() && b.contains('.') && !b.ends_with('.'))
}

/// Length in bytes of the leading punctuation token of `s` (a run of dots or dashes counts as one).
fn punct_len(s: &str) -> usize {
    let c = s.chars().next().expect("non-empty");
    if c == '.' || c == '-' {
        s.len() - s.trim_start_matches(c).len()
    } else {
        c.len_utf8()
    }
}

fn chunk_tokens<'a>(chunk: &'a str, out: &mut Vec<&'a str>) {
    // Leading punctuation (but not a sign or point that starts a number: `.5`, `-3`).
    let mut rest = chunk;
    while let Some(c) = rest.chars().next() {
        let starts_number = (c == '.' || c == '-') && rest[1..].starts_with(|d: char| d.is_ascii_digit());
        if is_word_char(c) || starts_number || is_address(rest) {
            break;
        }
        let n = punct_len(rest);
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    // Trailing punctuation, kept back to push after the word.
    let mut tail: Vec<&'a str> = Vec::new();
    while let Some(c) = rest.chars().next_back() {
        if is_word_char(c) {
            break;
        }
        let core = &rest[..rest.len() - c.len_utf8()];
        if c == '.' && keeps_period(core) {
            break;
        }
        let n = if c == '.' || c == '-' { rest.len() - rest.trim_end_matches(c).len() } else { c.len_utf8() };
        tail.push(&rest[rest.len() - n..]);
        rest = &rest[..rest.len() - n];
    }
    if !rest.is_empty() {
        if is_address(rest) {
            out.push(rest);
        } else {
            word_tokens(rest, out);
        }
    }
    out.extend(tail.into_iter().rev());
}

/// Whether `core` + "." is one token: an abbreviation (`Mr.`, `etc.`) or dotted initials (`U.S.`).
fn keeps_period(core: &str) -> bool {
    let lower = core.to_ascii_lowercase();
    ABBREVIATIONS.contains(&lower.as_str())
        || (core.contains('.') && core.split('.').all(|p| p.chars().count() == 1 && p.chars().all(char::is_alphabetic)))
        || (core.chars().count() == 1 && core.chars().all(|c| c.is_ascii_uppercase()))
}

/// Splits a word without outer punctuation: contractions, hyphens, symbols inside it.
fn word_tokens<'a>(w: &'a str, out: &mut Vec<&'a str>) {
    // Hyphens between word characters, unless after a prefix.
    let mut start = 0;
    let bytes = w.as_bytes();
    for (i, c) in w.char_indices() {
        if c == '-' && i > start && i + 1 < w.len() {
            let before = &w[start..i];
            let prev_ok = before.chars().next_back().is_some_and(is_word_char);
            let next_ok = w[i + 1..].chars().next().is_some_and(is_word_char);
            let numeric = before.chars().all(|c| c.is_ascii_digit()) && bytes[i + 1].is_ascii_digit();
            let letter = before.chars().count() == 1; // t-shirt, x-ray, u-turn
            let prefix = PREFIXES.contains(&before.to_ascii_lowercase().as_str());
            if prev_ok && next_ok && !numeric && !letter && !prefix {
                clitic_tokens(before, out);
                out.push(&w[i..i + 1]);
                start = i + 1;
            }
        }
    }
    clitic_tokens(&w[start..], out);
}

/// Splits `n't` and `'s`-style clitics and symbols (emoji, `%`, `$`) off a word.
fn clitic_tokens<'a>(w: &'a str, out: &mut Vec<&'a str>) {
    let lower = w.to_ascii_lowercase();
    if lower.len() > 3 && lower.ends_with("n't") {
        out.push(&w[..w.len() - 3]);
        out.push(&w[w.len() - 3..]);
        return;
    }
    if let Some(i) = w.rfind('\'') {
        if i > 0 && CLITICS.contains(&lower[i + 1..].as_ref()) {
            symbol_tokens(&w[..i], out);
            out.push(&w[i..]);
            return;
        }
    }
    symbol_tokens(w, out);
}

/// Splits off symbols that are never part of a word (`$`, `%`, emoji, `&`), keeping number and
/// in-word punctuation (`3.5`, `1,000`, `10:30`, `and/or`, `O'Neil`).
fn symbol_tokens<'a>(w: &'a str, out: &mut Vec<&'a str>) {
    let mut start = 0;
    for (i, c) in w.char_indices() {
        let separate = !is_word_char(c) && !matches!(c, '.' | ',' | ':' | '/' | '\'' | '-' | '_' | '@' | '+');
        if separate {
            if i > start {
                out.push(&w[start..i]);
            }
            out.push(&w[i..i + c.len_utf8()]);
            start = i + c.len_utf8();
        }
    }
    if start < w.len() {
        out.push(&w[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        let norm = normalize_quotes(s);
        let mut out = Vec::new();
        tokenize(&norm, &mut out);
        out.into_iter().map(str::to_string).collect()
    }

    #[test]
    fn splits_like_ewt() {
        assert_eq!(toks("A man's dog, running."), ["A", "man", "'s", "dog", ",", "running", "."]);
        assert_eq!(toks("I don't know (really)!"), ["I", "do", "n't", "know", "(", "really", ")", "!"]);
        assert_eq!(toks("They’re “great”"), ["They", "'re", "\"", "great", "\""]);
        assert_eq!(toks("a black-and-white photo"), ["a", "black", "-", "and", "-", "white", "photo"]);
        assert_eq!(toks("a non-stop e-mail on a T-shirt"), ["a", "non-stop", "e-mail", "on", "a", "T-shirt"]);
        assert_eq!(
            toks("Mr. Smith lives in the U.S. now..."),
            ["Mr.", "Smith", "lives", "in", "the", "U.S.", "now", "..."]
        );
    }

    #[test]
    fn keeps_numbers_and_addresses_whole() {
        assert_eq!(
            toks("$5.99 for 1,000 items at 10:30, 50% off"),
            ["$", "5.99", "for", "1,000", "items", "at", "10:30", ",", "50", "%", "off"]
        );
        assert_eq!(
            toks("see https://example.com/a-b?x=1. or mail me@example.org"),
            ["see", "https://example.com/a-b?x=1", ".", "or", "mail", "me@example.org"]
        );
        assert_eq!(toks("2010-2012 and -3 or .5"), ["2010-2012", "and", "-3", "or", ".5"]);
    }

    #[test]
    fn passes_emoji_and_other_scripts_through() {
        assert_eq!(toks("cute cat😀🐱 東京タワー café"), ["cute", "cat", "😀", "🐱", "東京タワー", "café"]);
        assert_eq!(toks("  "), Vec::<String>::new());
        assert_eq!(toks("--- ?! \u{200b}"), ["---", "?", "!", "\u{200b}"]);
    }
}
