#!/usr/bin/env python3
"""Generates tests/fixtures/eval/*.json: seeded COCO ground truth + results pairs with the
numbers pycocotools' COCOeval gives for them (bbox and segm).

Run manually (never in CI) from the repository root, with a Python that has pycocotools and
numpy (the torch venv has both):

    ~/.cache/maskstudio/torch-2.13.0/venv/bin/python tools/gen_eval_fixtures.py

The output is deterministic for a given pycocotools/numpy version (fixed seeds; generated
with pycocotools 2.0.11, numpy 2.4.6). Each fixture holds
`gt` (COCO ground truth), `results` (COCO results list) and `expected[iou_type]` with
`stats` (the 12 summary numbers), `per_class_ap` ([category id, AP] with area all and
maxDets 100; -1 without ground truth) and `recall` (eval['recall'], [T, K, A, M] flattened).

The data covers: crowd regions (iscrowd=1, uncompressed RLE), images without detections,
images without ground truth, categories without ground truth, detections of categories that
are not in the ground truth, an image with more than 100 detections, >= 20 classes, small /
medium / large objects, tied scores, polygon and compressed-RLE ground truth, GT `area`
fields that differ from the pixel count, and the three results layouts of coco.py loadRes
(bbox + segmentation, segmentation only, bbox only).
"""

import contextlib
import copy
import io
import json
import os
import sys

import numpy as np
import pycocotools.mask as mu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "eval")


def star_polygon(rng, cx, cy, radius, n=None):
    """Star-shaped polygon around (cx, cy), coordinates rounded to 0.01."""
    n = n or int(rng.integers(5, 14))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.55, 1.0, n)
    xs, ys = cx + r * np.cos(angles), cy + r * np.sin(angles)
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


def to_rle(polys, h, w):
    return mu.merge(mu.frPyObjects(polys, h, w))


def compressed(rle):
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def uncompressed(mask):
    """Uncompressed COCO RLE of a 0/1 array, column-major, zeros first."""
    flat = mask.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def make_fixture(name, seed, layout, n_images=40, n_cats=24):
    rng = np.random.default_rng(seed)
    cat_ids = sorted(int(c) for c in rng.choice(np.arange(1, 200), n_cats, replace=False))
    cats_with_gt = cat_ids[: n_cats - 3]  # the last three categories get no ground truth
    images, gt_anns, results = [], [], []
    image_ids = sorted(int(i) for i in rng.choice(np.arange(1, 100000), n_images, replace=False))
    rng.shuffle(image_ids)  # listed out of order on purpose
    ann_id = 1
    for n, img_id in enumerate(image_ids):
        h, w = int(rng.integers(60, 240)), int(rng.integers(60, 280))
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.png"})
        no_gt = n % 9 == 4
        no_dt = n % 7 == 3
        many = n == 5
        objects = []  # (category, polygons, rle)
        if not no_gt:
            for _ in range(int(rng.integers(1, 11))):
                cat = int(rng.choice(cats_with_gt[:6] if n % 3 else cats_with_gt))
                size = rng.choice(["s", "m", "l"], p=[0.4, 0.4, 0.2])
                radius = {"s": rng.uniform(2, 18), "m": rng.uniform(18, 50), "l": rng.uniform(50, 120)}[size]
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                polys = [star_polygon(rng, cx, cy, radius)]
                if rng.random() < 0.2:
                    polys.append(star_polygon(rng, cx + radius, cy, radius * 0.5))
                rle = to_rle(polys, h, w)
                area = float(mu.area(rle))
                if area == 0:
                    continue
                ann = {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": cat,
                    "iscrowd": 0,
                    # COCO areas are polygon areas, not pixel counts: make them differ.
                    "area": round(area * float(rng.uniform(0.85, 1.15)), 2),
                    "bbox": [round(float(v), 2) for v in mu.toBbox(rle)],
                }
                ann["segmentation"] = polys if rng.random() < 0.6 else compressed(rle)
                ann_id += 1
                gt_anns.append(ann)
                objects.append((cat, polys, rle))
            if n % 4 == 1:
                # A crowd region as uncompressed RLE: a filled ellipse.
                cat = int(rng.choice(cats_with_gt[:6]))
                yy, xx = np.mgrid[0:h, 0:w]
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                rx, ry = rng.uniform(10, w / 2), rng.uniform(10, h / 2)
                mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)
                if mask.sum() > 0:
                    rle = mu.encode(np.asfortranarray(mask))
                    gt_anns.append({
                        "id": ann_id,
                        "image_id": img_id,
                        "category_id": cat,
                        "iscrowd": 1,
                        "area": float(mask.sum()),
                        "bbox": [float(v) for v in mu.toBbox(rle)],
                        "segmentation": uncompressed(mask),
                    })
                    ann_id += 1
                    # Detections inside the crowd region.
                    for _ in range(int(rng.integers(1, 4))):
                        px, py = cx + rng.uniform(-rx, rx) / 2, cy + rng.uniform(-ry, ry) / 2
                        objects.append((cat, [star_polygon(rng, px, py, rng.uniform(5, 25))], None))
        if no_dt:
            continue
        dets = []  # (category, polygons)
        for cat, polys, _ in objects:
            xs_all = np.array([v for p in polys for v in p[0::2]])
            size = max(2.0, float(xs_all.max() - xs_all.min()))
            for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.85 else 0):
                sd = size * float(rng.choice([0.02, 0.05, 0.12]))
                dx, dy, s = rng.normal(0, sd), rng.normal(0, sd), rng.uniform(0.85, 1.15)
                jittered = []
                for p in polys:
                    xs, ys = np.array(p[0::2]), np.array(p[1::2])
                    mx, my = xs.mean(), ys.mean()
                    xs = mx + (xs - mx) * s + dx + rng.normal(0, sd / 2, len(xs))
                    ys = my + (ys - my) * s + dy + rng.normal(0, sd / 2, len(ys))
                    jittered.append([round(float(v), 2) for xy in zip(xs, ys) for v in xy])
                c = cat if rng.random() < 0.9 else int(rng.choice(cat_ids))
                dets.append((c, jittered))
        n_fp = 130 if many else int(rng.integers(0, 6))
        for i in range(n_fp):
            c = cat_ids[0] if (many and i % 2 == 0) else int(rng.choice(cat_ids + [999]))
            dets.append((c, [star_polygon(rng, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 60))]))
        for c, polys in dets:
            rle = to_rle(polys, h, w)
            if mu.area(rle) == 0:
                continue
            # Scores on a coarse grid so that ties happen, within and across images.
            score = round(float(rng.choice([rng.uniform(0.05, 1.0), 0.5, 0.9])), 2)
            box = [float(v) for v in mu.toBbox(rle)]
            entry = {"image_id": img_id, "category_id": c, "score": score}
            if layout in ("bbox+segm", "bbox"):
                # A detector's box is close to, not exactly, its mask's box.
                entry["bbox"] = [round(v + float(rng.normal(0, 0.7)), 2) for v in box[:2]] + [
                    round(max(0.5, v + float(rng.normal(0, 1.0))), 2) for v in box[2:]
                ]
            if layout in ("bbox+segm", "segm"):
                entry["segmentation"] = compressed(rle)
            results.append(entry)
    order = rng.permutation(len(results))  # results come in no particular order
    results = [results[i] for i in order]
    gt = {
        "info": {"description": f"maskstudio COCOeval fixture {name} (seed {seed})"},
        "images": images,
        "annotations": gt_anns,
        "categories": [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in cat_ids],
    }
    return gt, results


def run_eval(gt, results, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]
    per_class = []
    for k, cat in enumerate(ev.params.catIds):
        s = precision[:, :, k, 0, -1]
        s = s[s > -1]
        per_class.append([int(cat), float(np.mean(s)) if s.size else -1.0])
    return {
        "stats": [float(v) for v in ev.stats],
        "per_class_ap": per_class,
        "recall": [round(float(v), 12) for v in ev.eval["recall"].flatten()],
    }


FIXTURES = [
    # name, seed, results layout (which coco.py loadRes branch runs)
    ("mixed_bbox_segm", 20240601, "bbox+segm"),
    ("segm_only", 7, "segm"),
    ("bbox_only", 99, "bbox"),
]


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, seed, layout in FIXTURES:
        gt, results = make_fixture(name, seed, layout)
        expected = {t: run_eval(gt, results, t) for t in ("bbox", "segm")}
        path = os.path.join(OUT_DIR, f"{name}.json")
        with open(path, "w") as f:
            json.dump({"name": name, "seed": seed, "layout": layout, "gt": gt, "results": results,
                       "expected": expected}, f, separators=(",", ":"))
        print(f"{path}: {len(gt['annotations'])} gt, {len(results)} results, "
              f"bbox AP {expected['bbox']['stats'][0]:.4f}, segm AP {expected['segm']['stats'][0]:.4f}, "
              f"{os.path.getsize(path) / 1024:.0f} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
