//! PixArt-α's caption cleaning and T5 tokenizing against the Python reference
//! (`tools/golden/t5_prompts.py`: diffusers' `_text_preprocessing(clean_caption=True)` and
//! `T5TokenizerFast` called as PixArt-α calls it), on every prompt of PixArt-α's sample list and a
//! set of hostile strings (URLs, HTML, CJK, entities, ids, control characters, long captions).

use pixforge::latents::clean::pixart_clean;
use pixforge::latents::t5::{CaptionTokenizer, TextCleaning, MAX_TOKENS};
use std::path::Path;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    cleaned: String,
    ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/t5_prompts.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn cleaning_matches_diffusers_for_every_case() {
    let cases = cases();
    let prompts = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/prompts/pixart_alpha_samples.txt"),
    )
    .unwrap();
    let n = prompts.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(cases.len() > n, "the golden file covers the sample prompts and more");
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let got = pixart_clean(&c.text);
            (got != c.cleaned).then(|| format!("{:?}\n   want {:?}\n    got {:?}", c.text, c.cleaned, got))
        })
        .collect();
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

#[test]
fn token_ids_match_t5_tokenizer_fast() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/t5/tokenizer.json");
    let tok = CaptionTokenizer::load(&file, MAX_TOKENS, TextCleaning::Pixart).unwrap();
    let mut truncated = 0;
    for c in cases() {
        let ids = tok.tokens(&c.text).unwrap();
        assert_eq!(ids, c.ids, "{:?} (cleaned {:?})", c.text, c.cleaned);
        assert_eq!(ids.last(), Some(&1), "</s> ends every caption");
        truncated += usize::from(ids.len() == MAX_TOKENS);
    }
    assert!(truncated >= 1, "a caption longer than 120 tokens is covered");
}
