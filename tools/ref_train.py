#!/usr/bin/env python3
"""Reference training run for `cargo bench --bench train`: torchvision's Mask R-CNN trained the
way `maskstudio train` trains it, then evaluated on the validation images with pycocotools.

Same preset (the model kwargs come from our `TrainConfig::model_config` as JSON, so the backbone,
sizes, anchors and sampler settings are identical; MobileNetV2-FPN starts from the ImageNet file
`mobilenet_v2-b0353104.pth`), same images and split (two COCO exports written by
`maskstudio export --format coco`, one per split), same epochs, batch size, learning rate, SGD
momentum and weight decay, linear warm-up then cosine (our `trainer::learning_rate`: the
trainer's default `optimizer = sgd`, `schedule = cosine`, which the bench also sets explicitly,
with no freezing, clipping or mixed precision), same thread count. Data follows torchvision's detection reference: images pre-resized so the longer side is
`--image-size` (our loader does the same), random horizontal flip, batches grouped by aspect
ratio (torchvision's `create_aspect_ratio_groups(k=3)` + `GroupedBatchSampler`, the leftovers at
the end as in our sampler).

Prints one JSON object: images_per_sec (training loop only), train_seconds, images_seen,
val_segm_ap, val_bbox_ap (COCO AP@[.5:.95]), the 12 stats of each, and the mean loss of the last
epoch. Prints {"error": ...} when torch, torchvision or pycocotools cannot be imported.

Run: python tools/ref_train.py --train DIR --val DIR --model-json FILE [--backbone-weights PTH]
     [--epochs 3 --batch-size 4 --image-size 320 --lr 0.01 --threads 2 ...]

`--recipe tutorial` (for `cargo bench --bench recipe`) trains instead with the recipe of the
"TorchVision Object Detection Finetuning Tutorial" (`torchvision_tutorials/
torchvision_finetuning_instance_segmentation.py` with `references/detection/engine.py`): SGD lr
0.005, momentum 0.9, weight decay 0.0005, StepLR(step_size=3, gamma=0.1) stepped after every
epoch, a first-epoch LinearLR warm-up (start factor 1/1000 over min(1000, len(loader) - 1)
steps, stepped per iteration), a shuffled DataLoader (no aspect grouping) and
RandomHorizontalFlip(0.5) as the only augmentation (boxes from `masks_to_boxes`, flipped as
`v2.RandomHorizontalFlip` flips boxes). Those values replace --lr/--momentum/--weight-decay/
--warmup-*; the batch size, image size, model (--model-json) and backbone file still come from
the flags. `--val` is optional then.

`--heldout DIR` (a COCO export folder) is evaluated with the same `evaluate()` after every
epoch (not counted in train_seconds; its time is `heldout_eval_seconds`), giving
`epochs: [{epoch, loss, lr, train_seconds, heldout_segm_ap, heldout_bbox_ap}]` and
`heldout_segm_ap` / `heldout_bbox_ap` of the final model. A tutorial run whose loss turns
non-finite stops there as the tutorial's `engine.train_one_epoch` does (it exits) and reports
`diverged: {epoch, step, loss}` with held-out AP 0 (no model to score).

`--eval-bundle DIR --heldout DIR` trains nothing: it builds torchvision's model from a Mask
Studio bundle (`model.json`, defaults filled in as `ModelSpec::resolved` does; `labels.txt`
names labels 1..N and is matched to the COCO categories by name), loads `model.safetensors`
strictly, and prints {heldout_segm_ap, heldout_bbox_ap, segm_stats, bbox_stats, ...}, so a
Mask Studio model is scored by the same torchvision + pycocotools code as the reference.
"""
import argparse
import bisect
import json
import math
import os
import sys
import time
from functools import partial

try:
    import numpy as np
    import torch
    from PIL import Image
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone
    from torchvision.ops import masks_to_boxes
    from torchvision.ops import misc as misc_nn_ops
except ImportError as e:  # the benchmark reports this instead of numbers
    print(json.dumps({"error": f"import failed: {e}"}))
    sys.exit(0)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", help="COCO export folder (annotations.json, images/)")
    p.add_argument("--val", default=None, help="COCO export folder of the validation images")
    p.add_argument("--model-json", help="our MaskRcnnConfig as JSON")
    p.add_argument("--recipe", choices=("ours", "tutorial"), default="ours",
                   help="ours: maskstudio's recipe (default); tutorial: torchvision's finetuning tutorial")
    p.add_argument("--heldout", default=None, help="COCO export folder evaluated after every epoch")
    p.add_argument("--eval-bundle", default=None, help="evaluate this Mask Studio bundle on --heldout; no training")
    p.add_argument("--backbone-weights", default=None, help="ImageNet state dict of the backbone")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--warmup-factor", type=float, default=0.001)
    p.add_argument("--hflip-prob", type=float, default=0.5)
    p.add_argument("--no-grouping", action="store_true", help="plain shuffled batches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.eval_bundle is not None:
        if a.heldout is None:
            p.error("--eval-bundle needs --heldout")
    else:
        if a.train is None or a.model_json is None:
            p.error("--train and --model-json are required (unless --eval-bundle)")
        if a.recipe == "ours" and a.val is None:
            p.error("--val is required with --recipe ours")
    return a


def learning_rate(a, it, total):
    """Our `trainer::learning_rate`: linear warm-up, then half cosine to 0 at `total`."""
    warmup = min(a.warmup_iters, total)
    if it < warmup:
        alpha = it / warmup
        return a.lr * (a.warmup_factor * (1 - alpha) + alpha)
    span = max(total - warmup, 1)
    progress = min((it - warmup) / span, 1.0)
    return a.lr * 0.5 * (1 + math.cos(math.pi * progress))


def fitted(w, h, size):
    s = size / max(w, h, 1)
    return max(1, round(w * s)), max(1, round(h * s))


def load_split(folder, size, label_of):
    """Images resized (longer side `size`, bilinear) with masks (nearest), boxes from the masks."""
    coco = COCO(os.path.join(folder, "annotations.json"))
    return [load_sample(coco, folder, img_id, label_of, lambda w, h: fitted(w, h, size))
            for img_id in sorted(coco.getImgIds())]


def load_sample(coco, folder, img_id, label_of, dims):
    """One image of a COCO export resized to `dims(width, height)` (bilinear) with its non-crowd
    instances of known categories (`label_of`: category id -> label; others are skipped) as
    masks (nearest; empty ones dropped): `{image: [3, H, W] f32 0..1, masks: [G, H, W] u8,
    labels: [G] i64}`. `tools/ddp_train.py` loads its samples with it too."""
    info = coco.loadImgs(img_id)[0]
    img = Image.open(os.path.join(folder, "images", info["file_name"])).convert("RGB")
    w, h = dims(img.width, img.height)
    img = img.resize((w, h), Image.BILINEAR)
    masks, labels = [], []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
        if ann.get("iscrowd", 0) or ann["category_id"] not in label_of:
            continue
        m = Image.fromarray(coco.annToMask(ann)).resize((w, h), Image.NEAREST)
        m = np.asarray(m, dtype=np.uint8)
        if m.sum() == 0:
            continue
        masks.append(m)
        labels.append(label_of[ann["category_id"]])
    image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    masks_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
    return {"image": image, "masks": masks_t, "labels": torch.tensor(labels, dtype=torch.int64)}


def boxes_from_masks(masks):
    if masks.shape[0] == 0:
        return torch.zeros((0, 4))
    out = []
    for m in masks:
        ys, xs = torch.where(m > 0)
        out.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
    return torch.tensor(out, dtype=torch.float32)


def aspect_bin(w, h):
    bins = [2 ** x for x in np.linspace(-1, 1, 7)]
    return bisect.bisect_right(bins, w / h)


def epoch_batches(n, bins, batch_size, gen):
    return group_batches(torch.randperm(n, generator=gen).tolist(), bins, batch_size)


def group_batches(order, bins, batch_size):
    """Batches of `order` (sample indices, repeats allowed): torchvision's `GroupedBatchSampler`
    (a batch is emitted when one aspect-ratio bin has `batch_size` samples), the leftovers of all
    bins at the end in sampling order, so there are always ceil(len(order) / batch_size)
    batches (our sampler's rule; torchvision's pads the last ones by repeating samples instead).
    `bins` None: plain consecutive batches."""
    n = len(order)
    if bins is None:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    buffers, batches = {}, []
    for i in order:
        buf = buffers.setdefault(bins[i], [])
        buf.append(i)
        if len(buf) == batch_size:
            batches.append(buf[:])
            buf.clear()
    pos = {i: p for p, i in enumerate(order)}
    rest = sorted((i for b in buffers.values() for i in b), key=pos.get)
    batches += [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
    return batches


def build_model(cfg, weights):
    norm = partial(misc_nn_ops.FrozenBatchNorm2d, eps=cfg["frozen_bn_eps"])
    if cfg["backbone"] == "mobilenet_v2":
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v2",
            weights=None,
            fpn=True,
            trainable_layers=cfg["trainable_backbone_layers"],
            returned_layers=cfg["returned_layers"],
            norm_layer=norm,
        )
        prefix = "features."
    else:
        body = resnet50(weights=None, norm_layer=norm)
        backbone = _resnet_fpn_extractor(body, cfg["trainable_backbone_layers"], returned_layers=cfg["returned_layers"])
        prefix = ""
    if weights:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        missing, _ = backbone.body.load_state_dict(sd, strict=False)
        if missing:
            raise SystemExit(f"{weights}: backbone keys missing: {missing[:5]}")
    anchors = AnchorGenerator(
        sizes=tuple(tuple(s) for s in cfg["anchor_sizes"]),
        aspect_ratios=tuple(tuple(a) for a in cfg["aspect_ratios"]),
    )
    keys = [
        "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test", "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh",
        "rpn_batch_size_per_image", "rpn_positive_fraction", "rpn_score_thresh", "box_score_thresh",
        "box_nms_thresh", "box_detections_per_img", "box_fg_iou_thresh", "box_bg_iou_thresh",
        "box_batch_size_per_image", "box_positive_fraction", "image_mean", "image_std",
        "max_size", "size_divisible",
    ]
    return MaskRCNN(
        backbone,
        num_classes=cfg["num_classes"],
        min_size=tuple(cfg["min_size"]),
        rpn_anchor_generator=anchors,
        bbox_reg_weights=tuple(cfg["bbox_reg_weights"]),
        **{k: cfg[k] for k in keys},
    )


def evaluate(model, folder, cat_of, device=None):
    """Predictions on the original images (the model resizes; on `device` when given, else where
    the inputs are: the CPU), COCOeval segm and bbox."""
    coco = COCO(os.path.join(folder, "annotations.json"))
    results = []
    model.eval()
    with torch.no_grad():
        for img_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(img_id)[0]
            img = Image.open(os.path.join(folder, "images", info["file_name"])).convert("RGB")
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
            out = model([x if device is None else x.to(device)])[0]
            out = {k: v.cpu() for k, v in out.items()}
            masks = (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
            for k in range(len(out["scores"])):
                x1, y1, x2, y2 = out["boxes"][k].tolist()
                rle = mask_utils.encode(np.asfortranarray(masks[k]))
                rle["counts"] = rle["counts"].decode("ascii")
                results.append({
                    "image_id": img_id,
                    "category_id": cat_of[int(out["labels"][k])],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(out["scores"][k]),
                    "segmentation": rle,
                })
    stats = {}
    for iou_type in ("segm", "bbox"):
        if not results:
            stats[iou_type] = [0.0] * 12
            continue
        ev = COCOeval(coco, coco.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats[iou_type] = [float(v) for v in ev.stats]
    return stats, len(results)


def categories_by_name(folder):
    """`{name: category id}` of a COCO export folder."""
    with open(os.path.join(folder, "annotations.json")) as f:
        return {c["name"]: c["id"] for c in json.load(f)["categories"]}


def heldout_cat_of(train_folder, label_of, heldout_folder):
    """Label -> category id of the held-out export, matched to the training categories by name."""
    with open(os.path.join(train_folder, "annotations.json")) as f:
        name_of = {c["id"]: c["name"] for c in json.load(f)["categories"]}
    by_name = categories_by_name(heldout_folder)
    return {label: by_name.get(name_of[cat], -1) for cat, label in label_of.items()}


def timed_evaluate(model, folder, cat_of):
    """`evaluate()` plus its wall time in seconds; leaves the model in eval mode."""
    t0 = time.perf_counter()
    stats, n_dets = evaluate(model, folder, cat_of)
    return stats, n_dets, time.perf_counter() - t0


def epoch_row(epoch, losses, lr, train_s, heldout):
    row = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None, "lr": lr,
           "train_seconds": train_s}
    if heldout is not None:
        row["heldout_segm_ap"] = heldout["segm"][0]
        row["heldout_bbox_ap"] = heldout["bbox"][0]
    return row


class TutorialDataset(torch.utils.data.Dataset):
    """The tutorial's dataset over pre-resized samples: boxes from `masks_to_boxes`, then
    `v2.RandomHorizontalFlip(p)` (image, masks and boxes; `torch.rand(1) < p` flips). Instances
    whose box has no width or height after resizing are dropped (torchvision refuses degenerate
    boxes; the tutorial's data has none)."""

    def __init__(self, samples, hflip_prob):
        self.samples, self.p = samples, hflip_prob

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        img, masks, labels = s["image"], s["masks"], s["labels"]
        boxes = masks_to_boxes(masks) if masks.shape[0] else torch.zeros((0, 4))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, masks, labels = boxes[keep], masks[keep], labels[keep]
        if torch.rand(1) < self.p:
            w = img.shape[-1]
            img, masks = img.flip(-1), masks.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return img, {"boxes": boxes, "labels": labels, "masks": masks}


def train_tutorial(a, model, train, on_epoch):
    """The tutorial's `main` + `engine.train_one_epoch`; returns (images seen, steps, train
    seconds, divergence). A non-finite loss ends training as `engine.train_one_epoch` does
    (it exits, leaving no model); the divergence is then `{epoch, step, loss}`, else None."""
    loader = torch.utils.data.DataLoader(
        TutorialDataset(train, 0.5), batch_size=a.batch_size, shuffle=True, num_workers=0,
        collate_fn=lambda batch: tuple(zip(*batch)),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    seen, it, train_s = 0, 0, 0.0
    for epoch in range(a.epochs):
        model.train()
        warmup = None
        if epoch == 0:
            warmup_iters = min(1000, len(loader) - 1)
            warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / 1000, total_iters=warmup_iters)
        losses_seen, lr = [], opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        for images, targets in loader:
            lr = opt.param_groups[0]["lr"]
            loss_dict = model(list(images), list(targets))
            loss = sum(loss_dict.values())
            if not math.isfinite(loss.item()):
                print(f"epoch {epoch}: loss {loss.item()} at step {it}: diverged, training stops", file=sys.stderr)
                return seen, it, train_s + time.perf_counter() - t0, {"epoch": epoch, "step": it, "loss": str(loss.item())}
            opt.zero_grad()
            loss.backward()
            opt.step()
            if warmup is not None:
                warmup.step()
            seen += len(images)
            losses_seen.append(loss.item())
            it += 1
        step_lr.step()
        train_s += time.perf_counter() - t0
        print(f"epoch {epoch}: mean loss {np.mean(losses_seen):.4f}", file=sys.stderr)
        on_epoch(epoch, losses_seen, lr, train_s)
    return seen, it, train_s, None


def bundle_config(bundle):
    """torchvision constructor kwargs from a bundle's `model.json`, defaults as in Rust's
    `ModelSpec::resolved` + `ResolvedSpec::to_config` (training-only keys: torchvision's)."""
    with open(os.path.join(bundle, "model.json")) as f:
        spec = json.load(f)
    returned = spec.get("returned_layers") or [1, 2, 3, 4]
    sizes = [[32.0 * 2 ** (min(max(k, 1), 30) - 1)] for k in returned]
    sizes.append([sizes[-1][0] * 2 if sizes else 32.0])
    sizes = spec.get("anchor_sizes") or sizes
    cfg = {
        "backbone": spec["backbone"], "num_classes": spec["num_classes"], "returned_layers": returned,
        "trainable_backbone_layers": 3, "frozen_bn_eps": spec.get("frozen_bn_eps", 1e-5),
        "min_size": [spec.get("min_size", 800)], "max_size": spec.get("max_size", 1333), "size_divisible": 32,
        "image_mean": spec.get("image_mean", [0.485, 0.456, 0.406]),
        "image_std": spec.get("image_std", [0.229, 0.224, 0.225]),
        "anchor_sizes": [[int(round(s)) for s in level] for level in sizes],
        "aspect_ratios": spec.get("aspect_ratios") or [[0.5, 1.0, 2.0]] * len(sizes),
        "rpn_pre_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": spec.get("rpn_pre_nms_top_n_test", 1000),
        "rpn_post_nms_top_n_train": 2000, "rpn_post_nms_top_n_test": spec.get("rpn_post_nms_top_n_test", 1000),
        "rpn_nms_thresh": spec.get("rpn_nms_thresh", 0.7), "rpn_fg_iou_thresh": 0.7, "rpn_bg_iou_thresh": 0.3,
        "rpn_batch_size_per_image": 256, "rpn_positive_fraction": 0.5, "rpn_score_thresh": 0.0,
        "box_score_thresh": spec.get("box_score_thresh", 0.05), "box_nms_thresh": spec.get("box_nms_thresh", 0.5),
        "box_detections_per_img": spec.get("box_detections_per_img", 100), "box_fg_iou_thresh": 0.5,
        "box_bg_iou_thresh": 0.5, "box_batch_size_per_image": 512, "box_positive_fraction": 0.25,
        "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
    }
    with open(os.path.join(bundle, "labels.txt")) as f:
        labels = [line.rstrip("\n") for line in f if line.strip()]
    return cfg, labels


def eval_bundle(a):
    from safetensors.torch import load_file

    cfg, labels = bundle_config(a.eval_bundle)
    model = build_model(cfg, None)
    model.load_state_dict(load_file(os.path.join(a.eval_bundle, "model.safetensors")), strict=True)
    by_name = categories_by_name(a.heldout)
    missing = [n for n in labels if n not in by_name]
    if missing:
        raise SystemExit(f"{a.heldout}: no categories named {missing}")
    cat_of = {k + 1: by_name[n] for k, n in enumerate(labels)}
    stats, n_dets, seconds = timed_evaluate(model, a.heldout, cat_of)
    return {
        "heldout_segm_ap": stats["segm"][0],
        "heldout_bbox_ap": stats["bbox"][0],
        "segm_stats": stats["segm"],
        "bbox_stats": stats["bbox"],
        "heldout_detections": n_dets,
        "heldout_eval_seconds": seconds,
        "labels": labels,
        "threads": torch.get_num_threads(),
    }


def train_ours(a, model, train, on_epoch):
    """Our recipe (see the module docs); returns (images seen, steps, train seconds, last losses)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    bins = None if a.no_grouping else [aspect_bin(s["image"].shape[2], s["image"].shape[1]) for s in train]
    gen = torch.Generator().manual_seed(a.seed)
    plans = [epoch_batches(len(train), bins, a.batch_size, gen) for _ in range(a.epochs)]
    total = sum(len(p) for p in plans)
    model.train()
    it, seen, train_s, last_losses = 0, 0, 0.0, []
    for epoch, plan in enumerate(plans):
        last_losses = []
        lr = a.lr
        for batch in plan:
            t0 = time.perf_counter()
            lr = learning_rate(a, it, total)
            for g in opt.param_groups:
                g["lr"] = lr
            images, targets = [], []
            for i in batch:
                s = train[i]
                img, masks = s["image"], s["masks"]
                if torch.rand(1, generator=gen).item() < a.hflip_prob:
                    img, masks = img.flip(-1), masks.flip(-1)
                images.append(img)
                targets.append({"boxes": boxes_from_masks(masks), "labels": s["labels"], "masks": masks})
            losses = model(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss {loss.item()} at step {it}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_s += time.perf_counter() - t0
            seen += len(batch)
            last_losses.append(loss.item())
            it += 1
        print(f"epoch {epoch}: mean loss {np.mean(last_losses):.4f}", file=sys.stderr)
        if on_epoch(epoch, last_losses, lr, train_s):
            model.train()
    return seen, it, train_s


def main():
    a = parse_args()
    # pycocotools prints progress to stdout; keep stdout for the JSON line only.
    out, sys.stdout = sys.stdout, sys.stderr
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.eval_bundle is not None:
        print(json.dumps(eval_bundle(a)), file=out)
        return
    t_start = time.perf_counter()
    cfg = json.load(open(a.model_json))
    with open(os.path.join(a.train, "annotations.json")) as f:
        cats = sorted(c["id"] for c in json.load(f)["categories"])
    label_of = {c: i + 1 for i, c in enumerate(cats)}
    cat_of = {i + 1: c for i, c in enumerate(cats)}
    train = load_split(a.train, a.image_size, label_of)
    model = build_model(cfg, a.backbone_weights)
    load_s = time.perf_counter() - t_start
    heldout_cats = heldout_cat_of(a.train, label_of, a.heldout) if a.heldout else None
    epochs, heldout, eval_s = [], None, 0.0

    def on_epoch(epoch, losses, lr, train_s):
        """Records the epoch; evaluates --heldout (returns whether the model left train mode)."""
        nonlocal heldout, eval_s
        if heldout_cats is not None:
            heldout, _, seconds = timed_evaluate(model, a.heldout, heldout_cats)
            eval_s += seconds
            print(f"epoch {epoch}: held-out mask AP {heldout['segm'][0]:.4f} box AP {heldout['bbox'][0]:.4f}",
                  file=sys.stderr)
        epochs.append(epoch_row(epoch, losses, lr, train_s, heldout if heldout_cats is not None else None))
        return heldout_cats is not None

    diverged = None
    if a.recipe == "tutorial":
        seen, it, train_s, diverged = train_tutorial(a, model, train, on_epoch)
    else:
        seen, it, train_s = train_ours(a, model, train, on_epoch)
    result = {
        "recipe": a.recipe,
        "images_per_sec": seen / max(train_s, 1e-9),
        "train_seconds": train_s,
        "load_seconds": load_s,
        "images_seen": seen,
        "steps": it,
        "final_loss": epochs[-1]["loss"] if epochs else None,
        "epochs": epochs,
        "threads": torch.get_num_threads(),
    }
    if diverged is not None:
        # The tutorial's script would have exited: no model, so nothing to score.
        result["diverged"] = diverged
        heldout = {"segm": [0.0] * 12, "bbox": [0.0] * 12} if heldout_cats is not None else None
    if heldout is not None:
        result.update({
            "heldout_segm_ap": heldout["segm"][0],
            "heldout_bbox_ap": heldout["bbox"][0],
            "heldout_segm_stats": heldout["segm"],
            "heldout_bbox_stats": heldout["bbox"],
            "heldout_eval_seconds": eval_s,
        })
    if a.val is not None and diverged is None:
        stats, n_dets = evaluate(model, a.val, cat_of)
        result.update({
            "val_segm_ap": stats["segm"][0],
            "val_bbox_ap": stats["bbox"][0],
            "segm_stats": stats["segm"],
            "bbox_stats": stats["bbox"],
            "val_detections": n_dets,
        })
    print(json.dumps(result), file=out)


if __name__ == "__main__":
    main()
