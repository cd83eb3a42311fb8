//! The COCO-RLE decoder against pycocotools on all 734 real masks of
//! `tests/data/sa1b/coco_rle_masks_734.json` (golden values from `tools/golden/rle_golden.py`).

mod common;

use pixforge::ingest::rle::Rle;
use sha2::{Digest, Sha256};

#[test]
fn matches_pycocotools_on_734_masks() {
    let masks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::data().join("sa1b/coco_rle_masks_734.json")).unwrap()).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::fixtures().join("golden/rle_734.json")).unwrap()).unwrap();
    let masks = masks.as_array().unwrap();
    let golden = golden["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 734);
    assert_eq!(golden.len(), 734);
    let mut total = 0u64;
    for (i, (m, g)) in masks.iter().zip(golden).enumerate() {
        let size = &m["segmentation"]["size"];
        let (h, w) = (size[0].as_u64().unwrap() as u32, size[1].as_u64().unwrap() as u32);
        let counts = m["segmentation"]["counts"].as_str().unwrap();
        let rle = Rle::from_string(counts.as_bytes(), h, w).unwrap_or_else(|e| panic!("mask {i}: {e}"));
        assert_eq!(rle.area(), g["area"].as_u64().unwrap(), "mask {i} area");
        let bbox: Vec<u32> = g["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(rle.bbox().to_vec(), bbox, "mask {i} bbox");
        let decoded = rle.decode();
        assert_eq!(hex::encode(Sha256::digest(&decoded)), g["mask_sha256"].as_str().unwrap(), "mask {i} pixels");
        let again = Rle::encode(&decoded, h, w);
        assert_eq!(again.to_string_bytes(), counts.as_bytes(), "mask {i} re-encodes to the same string");
        total += rle.area();
    }
    assert_eq!(total, 7_766_804);
}
