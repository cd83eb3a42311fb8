//! The averaged-perceptron tagger trains on UD English-EWT and round-trips through its file format.
//! (Full-size accuracy figures come from `pixforge density eval-tagger`; this test keeps CI fast.)

mod common;

use pixforge::density::{conllu, model_file, train};

#[test]
fn trains_evaluates_and_round_trips() {
    let ewt = common::shared_data().join("ud-ewt");
    let all = conllu::read_conllu(&ewt.join("en_ewt-ud-train.conllu")).unwrap();
    assert_eq!(all.len(), 12_544, "EWT v2.16 train sentences");
    let dev = conllu::read_conllu(&ewt.join("en_ewt-ud-dev.conllu")).unwrap();
    assert_eq!(dev.len(), 2_001);
    let model = train::train(&all[..3000], &train::TrainOptions { iterations: 3, ..Default::default() });
    let e = train::evaluate(&model, &dev[..500], false);
    assert!(e.tag_accuracy > 0.85, "{e:?}");
    assert!(e.noun_recall > 0.85, "{e:?}");
    let bytes = model_file::to_bytes(&model, 0.0);
    let back = model_file::from_bytes(&bytes).unwrap();
    let words = ["The", "cat", "sat", "on", "two", "red", "mats", "."];
    assert_eq!(back.tag(&words), model.tag(&words));
    assert!(model_file::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err().contains("truncated"));
    assert!(model_file::from_bytes(b"garbage").unwrap_err().contains("magic"));
}
