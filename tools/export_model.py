#!/usr/bin/env python3
"""Deployment export of a Mask Studio model bundle: torchvision's Mask R-CNN is built from the
bundle (`ref_train.bundle_config` + `ref_train.build_model`, the same code the reference
benchmarks score bundles with), `model.safetensors` is loaded strictly, the model is put in eval
mode and written as

- TorchScript: `torch.jit.script(model)` + `torch.jit.save` (run it with `torch.jit.load`; a
  scripted torchvision detection model returns `(losses, detections)`), or
- ONNX: `torch.onnx.export` (the TorchScript-based exporter, `dynamo=False`) of one `[3, H, W]`
  float image in 0..1 named `images`, outputs `boxes` [N, 4] (x1, y1, x2, y2 in input pixels),
  `labels` [N] (1..num_classes, `labels.txt` line k = label k), `scores` [N] and `masks`
  [N, 1, H, W] (probabilities); H, W and N are dynamic axes. Opset 17: torchvision registers its
  ONNX symbolic for `roi_align` at opsets 11 and 16; from 16 on it is ONNX `RoiAlign-16` with
  `coordinate_transformation_mode="output_half_pixel"`, which is exactly torchvision's
  `aligned=False` RoIAlign that Mask R-CNN uses (RoiAlign-10 cannot say it), and 17 is the
  lowest opset above that which onnxruntime (>= 1.13), OpenVINO and TensorRT (>= 8.5) all run;
  the exporter's own default (20) would lock out older runtimes for no gain. The file is checked
  with `onnx.checker.check_model`.

The file is written to a temporary name in the output's folder and renamed when complete.
Prints one JSON line: {"out", "bytes", "format", "opset" (null for TorchScript), "seconds"}.

`--run-file FILE` runs an exported file instead (TorchScript with `torch.jit.load`, ONNX with
onnxruntime's CPUExecutionProvider) on `--images` (decoded with PIL as RGB, scaled to 0..1) and
prints one JSON line {"format", "threads", "images": [{"image", "width", "height", "seconds",
"detections": [{"box" [x1, y1, x2, y2], "label", "score", "mask" (COCO RLE of
probability >= 0.5, pycocotools)}]}]}, detections with score >= --score-threshold; `seconds` is
the model call alone, after --warmup untimed calls on the first image. Used by tests/deploy.rs
and benches/deploy.rs.

Run: python tools/export_model.py --bundle DIR --format onnx|torchscript --out FILE
     python tools/export_model.py --run-file FILE --format onnx|torchscript --images IMG...
            [--score-threshold 0.5] [--threads 1] [--warmup 1]
Errors end the script with one line on stderr naming the file and the problem (exit code 1).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

# Where the bundle's `model.safetensors` and the exported file's outputs are named.
WEIGHTS_FILE = "model.safetensors"
OUTPUT_NAMES = ["boxes", "labels", "scores", "masks"]
# See the module docstring for why 17.
ONNX_OPSET = 17
# Our predictor's mask threshold (`infer::MASK_THRESHOLD`, probability >= 0.5 is on).
MASK_THRESHOLD = 0.5


def fail(msg):
    """Ends the script with one line naming the problem."""
    sys.exit(f"export_model: {msg}")


def parse_args():
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--bundle", help="Mask Studio model bundle folder to export")
    p.add_argument("--out", help="file to write (export mode)")
    p.add_argument("--run-file", help="exported file to run (run mode)")
    p.add_argument("--images", nargs="+", default=[], help="images to run the exported file on")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs on the first image (run mode)")
    a = p.parse_args()
    if (a.bundle is None) == (a.run_file is None):
        p.error("give --bundle with --out (export), or --run-file with --images (run)")
    if a.bundle is not None and a.out is None:
        p.error("--bundle needs --out")
    if a.run_file is not None and not a.images:
        p.error("--run-file needs --images")
    return a


def import_reference():
    """`ref_train` (beside this script) and torch; a missing package is one clear line."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        fail(f"the reference venv lacks a package: {e}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import ref_train
    except SystemExit:
        # ref_train prints {"error": ...} and exits when an import fails (a benchmark contract).
        fail("tools/ref_train.py could not import its packages (torch, torchvision, pycocotools, ...)")
    return ref_train


def load_bundle_model(bundle):
    """torchvision's Mask R-CNN of a bundle, weights loaded strictly, eval mode."""
    import torch
    from safetensors.torch import load_file

    ref_train = import_reference()
    for f in ("model.json", "labels.txt", WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(bundle, f)):
            fail(f"{bundle}: not a model bundle ({f} is missing)")
    try:
        cfg, labels = ref_train.bundle_config(bundle)
    except (OSError, ValueError, KeyError) as e:
        fail(f"{os.path.join(bundle, 'model.json')}: {type(e).__name__}: {e}")
    model = ref_train.build_model(cfg, None)
    try:
        state = load_file(os.path.join(bundle, WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors and load_state_dict raise several types
        fail(f"{os.path.join(bundle, WEIGHTS_FILE)}: {type(e).__name__}: {str(e).splitlines()[0]}")
    model.eval()
    torch.set_grad_enabled(False)
    return model, cfg, labels


def example_image(cfg):
    """A seeded random `[3, H, W]` image in 0..1 for the ONNX tracer (any size works: H and W
    are dynamic), landscape so the traced resize takes its general path."""
    import torch

    gen = torch.Generator().manual_seed(0)
    side = int(cfg["min_size"][-1])
    return torch.rand(3, side, side * 4 // 3, generator=gen)


def export(a):
    """Export mode: writes --out through a temporary file beside it; returns the JSON report."""
    import torch

    model, cfg, _labels = load_bundle_model(a.bundle)
    out = os.path.abspath(a.out)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        fail(f"{out}: its folder does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix="." + os.path.basename(out), dir=folder)
    os.close(fd)
    t0 = time.perf_counter()
    try:
        if a.format == "torchscript":
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, tmp)
            opset = None
        else:
            try:
                import onnx
            except ImportError:
                fail("ONNX export needs the `onnx` package in the reference venv (scripts/setup-venv.sh)")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                ([example_image(cfg)],),
                tmp,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=OUTPUT_NAMES,
                dynamic_axes={
                    "images": {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "labels": {0: "detections"},
                    "scores": {0: "detections"},
                    "masks": {0: "detections", 2: "height", 3: "width"},
                },
            )
            onnx.checker.check_model(tmp)
            opset = ONNX_OPSET
        seconds = time.perf_counter() - t0
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"out": out, "bytes": os.path.getsize(out), "format": a.format, "opset": opset,
            "seconds": seconds}


def read_image(path):
    """`[3, H, W]` float32 in 0..1 (RGB, as our predictor decodes) and the size (w, h)."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except OSError as e:
        fail(f"{path}: cannot read the image: {e}")
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return x, img.size


def runner(a):
    """A function image -> (boxes, labels, scores, masks) numpy arrays for the exported file."""
    import torch

    if not os.path.isfile(a.run_file):
        fail(f"{a.run_file}: no such file")
    if a.format == "torchscript":
        try:
            model = torch.jit.load(a.run_file, map_location="cpu")
        except Exception as e:
            fail(f"{a.run_file}: not a TorchScript file: {str(e).splitlines()[0]}")
        model.eval()

        def run(x):
            with torch.no_grad():
                _losses, dets = model([x])
            d = dets[0]
            return d["boxes"].numpy(), d["labels"].numpy(), d["scores"].numpy(), d["masks"].numpy()

        return run
    try:
        import onnxruntime as ort
    except ImportError:
        fail("running an ONNX file needs the `onnxruntime` package in the reference venv")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(a.run_file, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        fail(f"{a.run_file}: onnxruntime cannot load it: {str(e).splitlines()[0]}")

    def run(x):
        boxes, labels, scores, masks = session.run(OUTPUT_NAMES, {"images": x.numpy()})
        return boxes, labels, scores, masks

    return run


def run_file(a):
    """Run mode: detections of the exported file on every image (see the module docstring)."""
    import numpy as np
    import torch
    from pycocotools import mask as mask_utils

    run = runner(a)
    images = [(p, *read_image(p)) for p in a.images]
    for _ in range(a.warmup):
        run(images[0][1])
    results = []
    for path, x, (w, h) in images:
        t0 = time.perf_counter()
        boxes, labels, scores, masks = run(x)
        seconds = time.perf_counter() - t0
        dets = []
        for k in range(len(scores)):
            if scores[k] < a.score_threshold:
                continue
            bits = np.asfortranarray((masks[k, 0] >= MASK_THRESHOLD).astype(np.uint8))
            rle = mask_utils.encode(bits)
            dets.append({
                "box": [float(v) for v in boxes[k]],
                "label": int(labels[k]),
                "score": float(scores[k]),
                "mask": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            })
        results.append({"image": path, "width": w, "height": h, "seconds": seconds, "detections": dets})
    return {"format": a.format, "threads": torch.get_num_threads(), "images": results}


def main():
    a = parse_args()
    # Libraries print progress and warnings to stdout; keep stdout for the JSON line only.
    out, sys.stdout = sys.stdout, sys.stderr
    import_reference()
    import torch

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    report = export(a) if a.bundle is not None else run_file(a)
    print(json.dumps(report), file=out, flush=True)


if __name__ == "__main__":
    main()
