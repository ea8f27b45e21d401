//! Golden tests: masks, RLE strings, polygons and resizes must match pycocotools / PIL
//! byte for byte. The fixture is made by `tools/gen_mask_fixtures.py` (run by hand).

use maskstudio::dataset::{Mask, Rle, polygon};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/masks/golden.json"
);

fn fixture() -> Value {
    let text = std::fs::read_to_string(FIXTURE).expect("read golden.json");
    serde_json::from_str(&text).expect("parse golden.json")
}

fn cases<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    let list = doc[key].as_array().expect("fixture list");
    assert!(!list.is_empty(), "fixture has no {key} cases");
    list
}

fn name(case: &Value) -> &str {
    case["name"].as_str().expect("case name")
}

fn u32_of(case: &Value, key: &str) -> u32 {
    let v = case[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: {key}", name(case)));
    u32::try_from(v).expect("u32")
}

fn str_of<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: {key}", name(case)))
}

fn bbox_of(case: &Value) -> [f64; 4] {
    let v: Vec<f64> = case["bbox"]
        .as_array()
        .expect("bbox")
        .iter()
        .map(|x| x.as_f64().expect("bbox value"))
        .collect();
    [v[0], v[1], v[2], v[3]]
}

#[test]
fn random_masks_match_pycocotools_encode_decode_area_and_bbox() {
    let doc = fixture();
    for case in cases(&doc, "masks") {
        let n = name(case);
        let (h, w) = (u32_of(case, "height"), u32_of(case, "width"));
        let s = str_of(case, "rle");
        let rle = Rle::from_compressed(h, w, s).unwrap_or_else(|e| panic!("{n}: decode: {e}"));
        assert_eq!(rle.to_compressed(), s, "{n}: RLE string re-encode");
        if let Some(counts) = case["counts"].as_array() {
            let counts: Vec<u32> = counts
                .iter()
                .map(|c| c.as_u64().expect("count") as u32)
                .collect();
            assert_eq!(rle.counts, counts, "{n}: uncompressed counts");
            let again = Rle::from_uncompressed(h, w, counts).expect("from_uncompressed");
            assert_eq!(again.to_compressed(), s, "{n}: uncompressed -> string");
        }
        let mask = Mask::from_rle(&rle).unwrap_or_else(|e| panic!("{n}: from_rle: {e}"));
        if let Some(pixels) = case["pixels"].as_str() {
            let expected: Vec<u8> = pixels.bytes().map(|b| u8::from(b == b'1')).collect();
            assert_eq!(mask.data(), expected.as_slice(), "{n}: decoded pixels");
            let encoded = Mask::from_vec(w, h, expected).expect("from_vec").to_rle();
            assert_eq!(encoded.to_compressed(), s, "{n}: encode of raw pixels");
        }
        assert_eq!(mask.to_rle(), rle, "{n}: decode/encode round trip");
        assert_eq!(mask.to_rle().to_compressed(), s, "{n}: mask RLE string");
        let area = case["area"].as_u64().expect("area");
        assert_eq!(rle.area(), area, "{n}: RLE area");
        assert_eq!(mask.area(), area, "{n}: mask area");
        assert_eq!(rle.to_bbox(), bbox_of(case), "{n}: RLE bbox");
        assert_eq!(mask.bbox(), bbox_of(case), "{n}: mask bbox");
        let gray = Mask::from_gray(&mask.to_gray());
        assert_eq!(gray, mask, "{n}: gray round trip");
    }
}

#[test]
fn polygons_rasterise_like_pycocotools_fr_py_objects_and_merge() {
    let doc = fixture();
    for case in cases(&doc, "polygons") {
        let n = name(case);
        let (h, w) = (u32_of(case, "height"), u32_of(case, "width"));
        let polys: Vec<Vec<f64>> = case["polygons"]
            .as_array()
            .expect("polygons")
            .iter()
            .map(|p| {
                p.as_array()
                    .expect("polygon")
                    .iter()
                    .map(|v| v.as_f64().expect("coordinate"))
                    .collect()
            })
            .collect();
        let s = str_of(case, "rle");
        let rle = polygon::polygons_to_rle(&polys, w, h).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(rle.to_compressed(), s, "{n}: polygon RLE string");
        if let [one] = polys.as_slice() {
            let single = polygon::polygon_to_rle(one, h, w);
            assert_eq!(single.to_compressed(), s, "{n}: polygon_to_rle string");
        }
        let mask = Mask::from_polygons(&polys, w, h).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(mask.to_rle().to_compressed(), s, "{n}: from_polygons mask");
        let area = case["area"].as_u64().expect("area");
        assert_eq!(mask.area(), area, "{n}: area");
        assert_eq!(rle.area(), area, "{n}: RLE area");
        assert_eq!(mask.bbox(), bbox_of(case), "{n}: bbox");
        assert_eq!(rle.to_bbox(), bbox_of(case), "{n}: RLE bbox");
    }
}

#[test]
fn nearest_resize_matches_pil() {
    let doc = fixture();
    for case in cases(&doc, "resize") {
        let n = name(case);
        let src = Rle::from_compressed(
            u32_of(case, "src_height"),
            u32_of(case, "src_width"),
            str_of(case, "src_rle"),
        )
        .unwrap_or_else(|e| panic!("{n}: src: {e}"));
        let src = Mask::from_rle(&src).expect("src mask");
        let out = src.resize_nearest(u32_of(case, "dst_width"), u32_of(case, "dst_height"));
        assert_eq!(
            out.to_rle().to_compressed(),
            str_of(case, "dst_rle"),
            "{n}: resized mask"
        );
    }
}

#[test]
fn iou_matches_pycocotools() {
    let doc = fixture();
    for case in cases(&doc, "iou") {
        let n = name(case);
        let (h, w) = (u32_of(case, "height"), u32_of(case, "width"));
        let a = Rle::from_compressed(h, w, str_of(case, "a")).expect("a");
        let b = Rle::from_compressed(h, w, str_of(case, "b")).expect("b");
        let expected = case["iou"].as_f64().expect("iou");
        // IoU = intersection / union of pixel counts: one f64 division, so 2 ulps is a stated
        // margin, not slack (a wrong count moves it by >= 1/union, far more).
        let close = |ours: f64| (ours - expected).abs() <= 2.0 * f64::EPSILON * expected.abs();
        assert!(close(a.iou(&b)), "{n}: RLE iou {} vs {expected}", a.iou(&b));
        let (ma, mb) = (
            Mask::from_rle(&a).expect("a"),
            Mask::from_rle(&b).expect("b"),
        );
        assert!(
            close(ma.iou(&mb)),
            "{n}: mask iou {} vs {expected}",
            ma.iou(&mb)
        );
        let mut u = ma.clone();
        u.union_with(&mb);
        assert_eq!(
            u.to_rle(),
            Rle::merge_union(&[a.clone(), b.clone()]),
            "{n}: union"
        );
    }
}
