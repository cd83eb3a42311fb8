//! The packed T5 encoder against candle-transformers' T5 (itself checked against transformers in
//! tests/sample.rs and tests/models_cli.rs): captions of different lengths encoded together give each
//! caption what encoding it alone gives.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::t5;
use pixforge::latents::t5_packed::PackedT5;

#[test]
fn packed_captions_equal_candle_t5_one_by_one() {
    let dir = common::fixtures().join("pixart-pipeline/text_encoder");
    let cfg: t5::Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let files = [dir.join("model.safetensors")];
    // SAFETY: read-only mapping of a committed fixture.
    let vb = || unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap() };
    let packed = PackedT5::load(vb(), &cfg).unwrap();
    let mut reference = t5::T5EncoderModel::load(vb(), &cfg).unwrap();
    // Lengths 1 to 140: past the 128-distance bucket limit, with a caption of the maximum length.
    let seqs: Vec<Vec<u32>> = [1usize, 7, 120, 33, 140, 2]
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            (0..n).map(|i| ((i * 37 + s * 11) % (cfg.vocab_size - 3) + 2) as u32).chain([1]).take(n).collect()
        })
        .collect();
    let out = packed.encode(&seqs).unwrap();
    for (seq, got) in seqs.iter().zip(&out) {
        let want =
            reference.forward(&Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        let want = want.squeeze(0).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d: f32 = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(d < 1e-5, "length {}: largest difference {d}", seq.len());
    }
    assert!(packed.encode(&[vec![]]).is_err(), "an empty sequence is refused");
}
