//! The averaged-perceptron tagger: the embedded model meets the accuracy bar on UD English-EWT dev
//! (normal and Title-Cased), training is reproducible, and the model file round-trips and rejects
//! damaged input. (Speed comes from `pixforge density eval-tagger` and the benchmark, not from tests.)

mod common;

use pixforge::density::{conllu, model_file, train, Tagger};

fn ewt(name: &str) -> Vec<Vec<conllu::Token>> {
    conllu::read_conllu(&common::data().join("ud-ewt").join(format!("{name}.zst"))).unwrap()
}

#[test]
fn embedded_model_meets_the_bar_on_ewt_dev() {
    let dev = ewt("en_ewt-ud-dev.conllu");
    assert_eq!(dev.len(), 2_001);
    let e = train::evaluate(Tagger::embedded(), &dev, false);
    assert!(e.tag_accuracy >= 0.945, "{e:?}");
    assert!(e.noun_precision >= 0.955, "{e:?}");
    assert!(e.noun_recall >= 0.96, "{e:?}");
    let title = train::evaluate(Tagger::embedded(), &dev, true);
    assert!(title.noun_precision >= 0.93, "{title:?}");
}

#[test]
fn tags_caption_and_alt_text_nouns() {
    let t = Tagger::embedded();
    let tags = t.tag(&["A", "woman", "eating", "fresh", "vegetables", "from", "a", "bowl", "."]);
    assert_eq!(tags, ["DT", "NN", "VBG", "JJ", "NNS", "IN", "DT", "NN", "."]);
    // Title-Cased alt text: the case feature keeps common nouns common.
    let title = t.tag(&["Red", "Leather", "Sofa", "With", "Wooden", "Legs"]);
    assert_eq!(title[2], "NN", "{title:?}");
    assert_eq!(title[5], "NNS", "{title:?}");
}

#[test]
fn trains_reproducibly_and_round_trips() {
    let all = ewt("en_ewt-ud-train.conllu");
    assert_eq!(all.len(), 12_544, "EWT v2.16 train sentences");
    let o = train::TrainOptions { iterations: 2, ..Default::default() };
    let model = train::train(&all[..1500], &o);
    let bytes = model_file::to_bytes(&model);
    assert_eq!(bytes, model_file::to_bytes(&train::train(&all[..1500], &o)), "same data, same seed, same bytes");
    let back = model_file::from_bytes(&bytes).unwrap();
    let words = ["The", "cat", "sat", "on", "two", "red", "mats", "."];
    assert_eq!(back.tag(&words), model.tag(&words));
    assert!(model_file::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err().contains("truncated"));
    assert!(model_file::from_bytes(b"garbage!").unwrap_err().contains("magic"));
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(model_file::from_bytes(&extra).unwrap_err().contains("unexpected bytes"));
}
