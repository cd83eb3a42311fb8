//! Concept density (PixArt-α Table 1): our own POS tagger, trained on UD English-EWT. Work in
//! progress: the tagger, its training and evaluation; the caption report comes next.

pub mod conllu;
pub mod model_file;
pub mod tagger;
pub mod tokenize;
pub mod train;
pub mod wordnet;

pub use tagger::Tagger;
