//! Caption quality checks: empty outputs, refusals, repetition loops, captions cut by `max_tokens`,
//! and boilerplate openings ("The image shows …"), which an option strips.

use std::sync::OnceLock;

/// A caption's QC flags, in a fixed order.
pub const FLAGS: [&str; 5] = ["empty", "refusal", "repetition", "truncated", "boilerplate"];

fn refusal_re() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"(?i)^\W*(i'?m sorry|i am sorry|sorry, |i apologi[sz]e|i cannot|i can'?t|i am unable|i'?m unable|as an ai\b|unfortunately, i)|\b(i (cannot|can'?t|am unable to|'m unable to) (see|view|describe|identify|help|provide|assist)|as an ai (language )?model)",
        )
        .expect("valid regex")
    })
}

fn boilerplate_re() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"(?i)^\s*(in (this|the) (image|picture|photo(graph)?),?\s+(we can see|there (is|are)|you can see)\s+|(the|this) (image|picture|photo(graph)?|scene) (shows|depicts|features|displays|captures|presents|portrays|showcases|is of|contains)\s+)",
        )
        .expect("valid regex")
    })
}

/// Whether the text ends in (or is mostly) a loop: the same 1–12-word phrase four or more times in a
/// row, or, for long texts, fewer than a third of its 4-word sequences distinct.
pub fn is_repetitive(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = words.len();
    for len in 1..=12usize {
        let mut run = 1;
        let mut i = len;
        while i + len <= n {
            if words[i..i + len] == words[i - len..i] {
                run += 1;
                if run >= 4 && (len > 1 || words[i].len() > 1) {
                    return true;
                }
                i += len;
            } else {
                run = 1;
                i += 1;
            }
        }
    }
    if n >= 40 {
        let grams: std::collections::HashSet<&[&str]> = words.windows(4).collect();
        return (grams.len() as f64) < (n - 3) as f64 / 3.0;
    }
    false
}

/// The flags that hold for `caption` (with `finish_reason`), in [`FLAGS`] order.
pub fn flags(caption: &str, finish_reason: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if caption.trim().is_empty() {
        out.push("empty");
    }
    if refusal_re().is_match(caption) {
        out.push("refusal");
    }
    if is_repetitive(caption) {
        out.push("repetition");
    }
    if finish_reason == "length" {
        out.push("truncated");
    }
    if boilerplate_re().is_match(caption) {
        out.push("boilerplate");
    }
    out
}

/// The caption without a boilerplate opening, its next letter capitalised ("The image shows a red
/// car." → "A red car.").
pub fn strip_boilerplate(caption: &str) -> String {
    let Some(m) = boilerplate_re().find(caption) else { return caption.trim().to_string() };
    let rest = caption[m.end()..].trim_start();
    let mut chars = rest.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect::<String>().trim_end().to_string(),
        None => caption.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flag_fires_on_its_case_only() {
        let good = "A tabby cat sleeps on a red wool blanket beside a window, soft morning light.";
        assert!(flags(good, "stop").is_empty());
        assert_eq!(flags("  ", "stop"), ["empty"]);
        assert_eq!(flags("I'm sorry, but I can't help with that.", "stop"), ["refusal"]);
        assert_eq!(flags("As an AI language model I cannot see images.", "stop"), ["refusal"]);
        assert_eq!(flags("a cat a cat a cat a cat a cat", "stop"), ["repetition"]);
        let looped = format!("A city street at night. {}", "the lights are bright and ".repeat(6));
        assert_eq!(flags(&looped, "length"), ["repetition", "truncated"]);
        assert_eq!(flags("The image shows a dog.", "stop"), ["boilerplate"]);
        assert_eq!(flags("In this image, we can see a boat.", "stop"), ["boilerplate"]);
        // Words repeated in ordinary prose are no loop.
        assert!(!is_repetitive("very very good, the best of the best, a long long road"));
    }

    #[test]
    fn boilerplate_is_stripped_and_recapitalised() {
        assert_eq!(strip_boilerplate("The image shows a red car parked."), "A red car parked.");
        assert_eq!(strip_boilerplate("This photograph depicts two dogs."), "Two dogs.");
        assert_eq!(strip_boilerplate("In the picture, there are three boats."), "Three boats.");
        assert_eq!(strip_boilerplate("A red car."), "A red car.");
    }
}
