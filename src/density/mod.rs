//! Concept density (PixArt-α Table 1) of caption sets: our own tokenizer and averaged-perceptron POS
//! tagger (trained on UD English-EWT, embedded), WordNet plural folding, the noun counts and the
//! report (`report.json`, `report.md`, `report.html`).

pub mod charts;
pub mod conllu;
pub mod counts;
mod hash;
pub mod input;
pub mod metrics;
pub mod model_file;
pub mod report;
pub mod synth;
pub mod tagger;
pub mod tokenize;
pub mod train;
pub mod wordnet;

pub use tagger::Tagger;
