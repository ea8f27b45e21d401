#!/usr/bin/env python3
"""Reference side of `cargo bench --bench profile`: time per training stage of torchvision's
Mask R-CNN, with the stage names of Mask Studio's `profile` scopes.

The model, data and recipe come from `ref_train.py` (same model kwargs JSON, ImageNet backbone
file, COCO export, pre-resized images, flip, aspect-grouped batches, SGD + warm-up/cosine, thread
count). Stages are timed the same way as ours: wall clock (`time.perf_counter`) around each
stage's function, installed by wrapping the torchvision modules and functions that implement it
(`model.transform`, `model.backbone`, `rpn.head`, `rpn.anchor_generator`, `rpn.box_coder.decode`,
`rpn.filter_proposals` with `box_ops.batched_nms` inside, `rpn.assign_targets_to_anchors`,
`rpn.box_coder.encode`, `rpn.compute_loss`, both `fg_bg_sampler`s, `roi_heads.select_training_samples`,
the two poolers, box head + predictor, `fastrcnn_loss`, `project_masks_on_boxes`, mask head +
predictor, `maskrcnn_loss`). A scope nested in another counts in both, as in ours. CPU ops run
synchronously, so the wall time of a stage is the time of its ops. `--warmup` steps run first
and are not counted. Afterwards two more steps run under `torch.profiler` (which slows ops, so
it is kept out of the table) and its top operators by self CPU time are reported.

Prints one JSON object: {steps, images, wall_seconds, images_per_sec, stages: {name: seconds},
top_ops: [[name, self_cpu_ms_per_step, calls_per_step]], peak_rss_mb}.

Run: python tools/ref_profile.py --train DIR --model-json FILE [--backbone-weights PTH]
     --image-size 512 --batch-size 2 --steps 20 --warmup 3 --threads 2 [--lr ... --seed ...]
"""

import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_train  # noqa: E402  (prints {"error"} and exits when torch is missing)

import torch  # noqa: E402
import torchvision.models.detection.roi_heads as roi_mod  # noqa: E402
import torchvision.models.detection.rpn as rpn_mod  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--model-json", required=True)
    p.add_argument("--backbone-weights", default=None)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--warmup-factor", type=float, default=0.001)
    p.add_argument("--hflip-prob", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch-profiler", action="store_true")
    return p.parse_args()


class Timers:
    def __init__(self):
        self.table = defaultdict(float)

    def fn(self, name, f):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.table[name] += time.perf_counter() - t

        return timed

    def wrap(self, obj, attr, name):
        setattr(obj, attr, self.fn(name, getattr(obj, attr)))


def install(model, timers):
    w = timers.wrap
    w(model.transform, "forward", "transform")
    w(model.backbone, "forward", "backbone")
    rpn = model.rpn
    w(rpn, "forward", "rpn")
    w(rpn.head, "forward", "rpn.head")
    w(rpn.anchor_generator, "forward", "rpn.anchors")
    w(rpn.box_coder, "decode", "rpn.decode")
    w(rpn, "filter_proposals", "rpn.filter")
    # rpn.py calls box_ops.batched_nms; in training only the RPN runs NMS.
    rpn_mod.box_ops.batched_nms = timers.fn("rpn.filter.nms", rpn_mod.box_ops.batched_nms)
    w(rpn, "assign_targets_to_anchors", "rpn.loss.match")
    w(rpn.box_coder, "encode", "rpn.loss.encode")
    w(rpn, "compute_loss", "rpn.loss.compute")
    rpn.fg_bg_sampler = timers.fn("rpn.loss.sample", rpn.fg_bg_sampler)
    roi = model.roi_heads
    w(roi, "forward", "roi")
    w(roi, "select_training_samples", "roi.sample")
    w(roi.box_roi_pool, "forward", "roi.box_pool")
    w(roi.box_head, "forward", "roi.box_head")
    w(roi.box_predictor, "forward", "roi.box_head")
    roi_mod.fastrcnn_loss = timers.fn("roi.box_loss", roi_mod.fastrcnn_loss)
    roi_mod.project_masks_on_boxes = timers.fn("roi.mask_targets", roi_mod.project_masks_on_boxes)
    roi_mod.maskrcnn_loss = timers.fn("roi.mask_loss+targets", roi_mod.maskrcnn_loss)
    w(roi.mask_roi_pool, "forward", "roi.mask_pool")
    w(roi.mask_head, "forward", "roi.mask_head")
    w(roi.mask_predictor, "forward", "roi.mask_head")


def peak_rss_mb():
    """This process's peak resident set (`VmHWM`). Not `ru_maxrss`: Linux carries the parent's
    peak at fork into the child's, so a child of a 2.5 GB bench would report 2.5 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    a = parse_args()
    out, sys.stdout = sys.stdout, sys.stderr
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = json.load(open(a.model_json))
    with open(os.path.join(a.train, "annotations.json")) as f:
        cats = sorted(c["id"] for c in json.load(f)["categories"])
    label_of = {c: i + 1 for i, c in enumerate(cats)}
    train = ref_train.load_split(a.train, a.image_size, label_of)
    model = ref_train.build_model(cfg, a.backbone_weights)
    timers = Timers()
    install(model, timers)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    bins = [ref_train.aspect_bin(s["image"].shape[2], s["image"].shape[1]) for s in train]
    gen = torch.Generator().manual_seed(a.seed)
    total = a.warmup + a.steps
    plan = []
    while len(plan) < total + 2:
        plan += ref_train.epoch_batches(len(train), bins, a.batch_size, gen)
    model.train()
    t = timers.table

    def step(it, batch):
        t0 = time.perf_counter()
        lr = ref_train.learning_rate(a, it, total)
        for g in opt.param_groups:
            g["lr"] = lr
        images, targets = [], []
        for i in batch:
            s = train[i]
            img, masks = s["image"], s["masks"]
            if torch.rand(1, generator=gen).item() < a.hflip_prob:
                img, masks = img.flip(-1), masks.flip(-1)
            images.append(img)
            targets.append({"boxes": ref_train.boxes_from_masks(masks), "labels": s["labels"], "masks": masks})
        t1 = time.perf_counter()
        t["data"] += t1 - t0
        opt.zero_grad()
        t2 = time.perf_counter()
        t["zero_grad"] += t2 - t1
        losses = model(images, targets)
        loss = sum(losses.values())
        loss.item()
        t3 = time.perf_counter()
        t["forward"] += t3 - t2
        loss.backward()
        t4 = time.perf_counter()
        t["backward"] += t4 - t3
        opt.step()
        t["optimizer"] += time.perf_counter() - t4
        return len(batch)

    for it in range(a.warmup):
        step(it, plan[it])
    t.clear()
    images = 0
    started = time.perf_counter()
    for it in range(a.warmup, total):
        images += step(it, plan[it])
    wall = time.perf_counter() - started
    stages = dict(t)
    stages["roi.mask_loss"] = stages.pop("roi.mask_loss+targets", 0.0) - stages.get("roi.mask_targets", 0.0)
    stages["rpn.loss"] = sum(stages.get(k, 0.0) for k in ("rpn.loss.match", "rpn.loss.encode", "rpn.loss.compute"))
    top = []
    if not a.no_torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for it in range(total, total + 2):
                step(it, plan[it])
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        top = [[e.key, e.self_cpu_time_total / 1e3 / 2, e.count / 2] for e in rows]
    print(json.dumps({
        "steps": a.steps,
        "images": images,
        "wall_seconds": wall,
        "images_per_sec": images / max(wall, 1e-9),
        "stages": stages,
        "top_ops": top,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }), file=out)


if __name__ == "__main__":
    main()
