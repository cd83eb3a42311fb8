//! Curation scores against their reference implementations.

mod common;

use candle_core::{Device, Tensor};
use pixforge::score::aesthetic::AestheticHead;

/// The LAION aesthetic heads V1 and V2 (real released weights) on the ten real CLIP ViT-L/14
/// embeddings of ../shared/data/aesthetic equal the reference code's scores (`tools/golden/aesthetic.py`)
/// within 1e-4; a checkpoint of another kind is refused with the keys it has.
#[test]
fn aesthetic_heads_match_the_reference_scores() {
    let data = common::shared_data().join("aesthetic");
    let rows: Vec<Tensor> =
        (0..10).map(|i| Tensor::read_npy(data.join(format!("vit_l_14_rating{i}.npy"))).unwrap()).collect();
    let emb = Tensor::cat(&rows, 0).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("golden/aesthetic.json")).unwrap())
            .unwrap();
    for (file, version) in [("sa_0_4_vit_l_14_linear.pth", "v1"), ("sac+logos+ava1-l14-linearMSE.pth", "v2")] {
        let head = AestheticHead::load(&data.join(file), &Device::Cpu).unwrap();
        assert_eq!((head.version, head.input_dim()), (version, 768));
        let scores = head.score(&emb).unwrap();
        let want: Vec<f64> = golden[version].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (i, (got, want)) in scores.iter().zip(&want).enumerate() {
            assert!((*got as f64 - want).abs() < 1e-4, "{version} rating {i}: {got} vs {want}");
        }
        // Scores rise with the rating bucket the embeddings were picked from.
        assert!(scores.windows(2).all(|w| w[1] > w[0]), "{version}: {scores:?}");
        // Normalisation is part of the head: a scaled embedding scores the same.
        let scaled = head.score(&(&emb * 3.0).unwrap()).unwrap();
        assert!(scaled.iter().zip(&scores).all(|(a, b)| (a - b).abs() < 1e-4));
    }
    let err = AestheticHead::load(&common::fixtures().join("golden/adamw.safetensors"), &Device::Cpu).unwrap_err();
    assert!(format!("{err}").contains("not a LAION aesthetic head"), "{err}");
    let head = AestheticHead::load(&data.join("sa_0_4_vit_l_14_linear.pth"), &Device::Cpu).unwrap();
    assert!(head.score(&Tensor::zeros((1, 512), candle_core::DType::F32, &Device::Cpu).unwrap()).is_err());
}
