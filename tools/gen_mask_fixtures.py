#!/usr/bin/env python3
"""Generate tests/fixtures/masks/golden.json: COCO mask cases answered by pycocotools and PIL.

Run manually (never in CI) from the repository root, with a Python that has pycocotools,
numpy and pillow:

    python3 -m venv /tmp/pycoco && /tmp/pycoco/bin/pip install pycocotools numpy pillow
    /tmp/pycoco/bin/python tools/gen_mask_fixtures.py [--coco128 /path/to/coco128-seg]

The output is deterministic for a given pycocotools/Pillow version (fixed seed). It holds:

* ``masks``: random masks (1x1, 1xN, Nx1, tall/narrow, empty, full, noisy, blobby, large
  with long runs) as pycocotools compressed RLE strings, with area and bbox; small ones also
  carry their row-major pixels as a '0'/'1' string and the uncompressed counts.
* ``polygons``: polygon lists (convex, concave, self-intersecting, sub-pixel, partly
  outside, touching the border, float coordinates, several parts, real COCO128 instances)
  with the RLE string of ``merge(frPyObjects(polys, h, w))``, its area and bbox.
* ``resize``: masks resized with ``PIL.Image.resize(size, Image.NEAREST)``.
* ``iou``: pairs of masks with ``pycocotools.mask.iou``.

Polygon coordinates are rounded to 4 decimals so every JSON parser reads the same doubles.
``tests/mask_golden.rs`` checks the Rust implementation against this file.
"""

import argparse
import glob
import importlib.metadata
import json
import os

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

SEED = 20240601
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "masks", "golden.json")
DEFAULT_COCO128 = "/work/shared/data/coco128-seg"
PIXELS_MAX = 4096  # store raw pixels only for masks up to this many pixels


def encode(m):
    """pycocotools RLE of a row-major 0/1 array."""
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))


def counts_of(m):
    """Uncompressed column-major runs, zeros first (pycocotools' internal RLE)."""
    flat = m.astype(np.uint8).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return counts


def mask_case(name, m):
    rle = encode(m)
    case = {
        "name": name,
        "height": int(m.shape[0]),
        "width": int(m.shape[1]),
        "rle": rle["counts"].decode("ascii"),
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
    }
    if m.size <= PIXELS_MAX:
        case["pixels"] = "".join("1" if v else "0" for v in m.astype(np.uint8).flatten())
        case["counts"] = [int(c) for c in counts_of(m)]
    return case


def blobby(rng, h, w, n):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1, h / 3 + 1), rng.uniform(1, w / 3 + 1)
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return m


def random_masks(rng):
    cases = []
    cases.append(mask_case("1x1 empty", np.zeros((1, 1), bool)))
    cases.append(mask_case("1x1 full", np.ones((1, 1), bool)))
    cases.append(mask_case("1x17 row noisy", rng.random((1, 17)) < 0.5))
    cases.append(mask_case("23x1 column noisy", rng.random((23, 1)) < 0.5))
    cases.append(mask_case("200x3 tall narrow blobby", blobby(rng, 200, 3, 3)))
    cases.append(mask_case("3x200 wide flat blobby", blobby(rng, 3, 200, 3)))
    cases.append(mask_case("480x640 empty", np.zeros((480, 640), bool)))
    cases.append(mask_case("480x640 full", np.ones((480, 640), bool)))
    cases.append(mask_case("37x53 noisy p=0.5", rng.random((37, 53)) < 0.5))
    cases.append(mask_case("64x64 sparse p=0.02", rng.random((64, 64)) < 0.02))
    cases.append(mask_case("64x64 dense p=0.97", rng.random((64, 64)) < 0.97))
    m = np.zeros((10, 12), bool)
    m[0, 0] = m[-1, -1] = True
    cases.append(mask_case("10x12 opposite corners", m))
    m = np.ones((10, 12), bool)
    m[4, 5] = False
    cases.append(mask_case("10x12 full with one hole", m))
    m = np.zeros((9, 7), bool)
    m[:, 2:4] = True
    cases.append(mask_case("9x7 full-height columns", m))
    m = np.zeros((9, 7), bool)
    m[3:5, :] = True
    cases.append(mask_case("9x7 full-width rows", m))
    for i, (h, w, n) in enumerate([(480, 640, 4), (427, 640, 2), (640, 480, 6), (100, 150, 8)]):
        cases.append(mask_case(f"{h}x{w} blobby #{i}", blobby(rng, h, w, n)))
    m = np.zeros((1000, 1200), bool)
    m[700:705, 900:903] = True
    m[10, 5] = True
    cases.append(mask_case("1000x1200 tiny blobs, long runs", m))
    m = np.zeros((300, 400), bool)
    m[20:280:7, 30:370] = True
    cases.append(mask_case("300x400 stripes", m))
    return cases


def r4(values):
    return [round(float(v), 4) for v in values]


def polygon_case(name, polys, h, w):
    polys = [r4(p) for p in polys]
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    return {
        "name": name,
        "height": h,
        "width": w,
        "polygons": polys,
        "rle": rle["counts"].decode("ascii"),
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
    }


def regular(cx, cy, r, n, phase=0.0, inner=None):
    pts = []
    for i in range(n):
        a = phase + 2 * np.pi * i / n
        rr = r if inner is None or i % 2 == 0 else inner
        pts += [cx + rr * np.cos(a), cy + rr * np.sin(a)]
    return pts


def synthetic_polygons(rng):
    cases = []
    cases.append(polygon_case("integer square", [[1, 1, 3, 1, 3, 3, 1, 3]], 5, 5))
    cases.append(polygon_case("convex hexagon float", [regular(40.3, 30.7, 20.2, 6, 0.3)], 64, 80))
    cases.append(polygon_case("concave star", [regular(50, 50, 40, 10, 0.1, inner=15)], 100, 100))
    cases.append(polygon_case("concave L", [[1, 0, 3, 0, 3, 3, 2, 3, 2, 1, 1, 1]], 4, 4))
    cases.append(polygon_case("self-intersecting bowtie", [[5, 5, 45, 35, 45, 5, 5, 35]], 40, 50))
    cases.append(polygon_case("self-intersecting random", [r4(rng.uniform(0, 60, 14))], 60, 60))
    cases.append(polygon_case("sub-pixel triangle", [[0.2, 0.2, 1.4, 0.3, 0.8, 1.6]], 3, 3))
    cases.append(polygon_case("sub-pixel sliver", [[10.1, 3.05, 10.3, 3.1, 10.2, 3.45]], 8, 16))
    cases.append(polygon_case("partly outside left/top", [[-10.5, -7.25, 30.2, 4.4, 12.6, 25.9]], 20, 25))
    cases.append(polygon_case("partly outside right/bottom", [[10, 10, 60.7, 15.5, 45.1, 52.3]], 40, 50))
    cases.append(polygon_case("entirely outside", [[-20, -20, -5, -20, -5, -5]], 10, 10))
    cases.append(polygon_case("touching all borders", [[0, 0, 32, 0, 32, 24, 0, 24]], 24, 32))
    cases.append(polygon_case("touching border float", [[0, 3.5, 31.99, 0, 32, 23.9, 0.01, 24]], 24, 32))
    cases.append(polygon_case("band along top", [[0, 0, 4, 0, 4, 1, 0, 1]], 3, 4))
    cases.append(polygon_case("duplicate and collinear points",
                              [[2, 2, 2, 2, 10, 2, 18, 2, 18, 2.1, 18, 12, 10, 12, 2, 12]], 16, 20))
    cases.append(polygon_case("two overlapping parts",
                              [regular(20, 20, 12, 5, 0.2), regular(28, 24, 10, 7, 0.5)], 48, 48))
    cases.append(polygon_case("three disjoint parts",
                              [[1, 1, 6, 1, 3, 5], [10.5, 2.5, 15.5, 2.5, 15.5, 8.5, 10.5, 8.5],
                               regular(8, 14, 3.3, 9)], 20, 20))
    cases.append(polygon_case("1x1 image covering polygon", [[-1, -1, 2, -1, 2, 2, -1, 2]], 1, 1))
    cases.append(polygon_case("1xN image", [[2.3, -0.5, 9.7, -0.2, 8.1, 1.4]], 1, 12))
    cases.append(polygon_case("Nx1 image", [[-0.3, 1.2, 0.9, 4.4, 0.1, 9.8]], 12, 1))
    cases.append(polygon_case("tall narrow", [[0.4, 0.2, 2.6, 40.1, 1.1, 199.5]], 200, 3))
    for i in range(6):
        n = int(rng.integers(3, 30))
        h, w = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.2, 0.6, n) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).flatten()
        cases.append(polygon_case(f"random star-shaped #{i}", [r4(pts)], h, w))
    return cases


def coco128_polygons(root, count=10):
    cases = []
    labels = sorted(glob.glob(os.path.join(root, "labels", "train2017", "*.txt")))
    if not labels:
        print(f"warning: no COCO128 labels under {root}; skipping real polygons")
        return cases
    step = max(1, len(labels) // count)
    for path in labels[::step][:count]:
        stem = os.path.splitext(os.path.basename(path))[0]
        image = os.path.join(root, "images", "train2017", stem + ".jpg")
        with Image.open(image) as im:
            w, h = im.size
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
        # Take the instance with the most vertices: the most demanding outline.
        row = max(rows, key=len)
        xy = np.array([float(v) for v in row[1:]]).reshape(-1, 2) * [w, h]
        cases.append(polygon_case(f"coco128 {stem} class {row[0]}", [r4(xy.flatten())], h, w))
    return cases


def resize_case(name, m, w, h):
    img = Image.fromarray((m.astype(np.uint8) * 255), mode="L")
    out = np.array(img.resize((w, h), Image.NEAREST)) >= 128
    return {
        "name": name,
        "src_height": int(m.shape[0]),
        "src_width": int(m.shape[1]),
        "src_rle": encode(m)["counts"].decode("ascii"),
        "dst_height": h,
        "dst_width": w,
        "dst_rle": encode(out)["counts"].decode("ascii"),
    }


def resize_cases(rng):
    cases = []
    for i, (sh, sw, dh, dw) in enumerate([
        (37, 53, 61, 100), (480, 640, 240, 320), (480, 640, 333, 517), (7, 5, 2, 3),
        (1, 1, 3, 4), (13, 17, 40, 13), (100, 150, 7, 7), (64, 64, 192, 192), (99, 101, 100, 100),
    ]):
        m = rng.random((sh, sw)) < 0.5 if sh * sw < 2000 else blobby(rng, sh, sw, 5)
        cases.append(resize_case(f"{sw}x{sh} -> {dw}x{dh} #{i}", m, dw, dh))
    return cases


def iou_cases(rng):
    cases = []
    for i in range(5):
        h, w = int(rng.integers(10, 80)), int(rng.integers(10, 80))
        a, b = blobby(rng, h, w, 2), blobby(rng, h, w, 2)
        ra, rb = encode(a), encode(b)
        cases.append({
            "name": f"blob pair #{i}",
            "height": h,
            "width": w,
            "a": ra["counts"].decode("ascii"),
            "b": rb["counts"].decode("ascii"),
            "iou": float(mask_utils.iou([ra], [rb], [0])[0][0]),
        })
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco128", default=DEFAULT_COCO128, help="COCO128-seg folder")
    parser.add_argument("--out", default=OUT, help="output JSON path")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    doc = {
        "about": "generated by tools/gen_mask_fixtures.py; do not edit by hand",
        "pycocotools": importlib.metadata.version("pycocotools"),
        "pillow": Image.__version__,
        "numpy": np.__version__,
        "masks": random_masks(rng),
        "polygons": synthetic_polygons(rng) + coco128_polygons(args.coco128),
        "resize": resize_cases(rng),
        "iou": iou_cases(rng),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size} bytes): {len(doc['masks'])} masks, "
          f"{len(doc['polygons'])} polygon cases, {len(doc['resize'])} resizes, {len(doc['iou'])} iou pairs")


if __name__ == "__main__":
    main()
