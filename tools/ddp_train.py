#!/usr/bin/env python3
"""Data-parallel training of torchvision's Mask R-CNN under `torchrun` (DDP) for
`maskstudio train --engine torchrun`: one process per rank, each reading the same job file.

Run (one command per node; the launcher writes the job, this script and `ref_train.py` into the
same folder):

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_train.py --job RUN/torchrun/job.json
    python -m torch.distributed.run --nnodes M --node-rank R --master-addr A --master-port Q \\
        --nproc-per-node N ddp_train.py --job RUN/torchrun/job.json

A single process (`--nproc-per-node 1`, or plain `python ddp_train.py --job ...` without torchrun's
environment) works too: it is a world of one.

The job (`"format": "maskstudio-torchrun-job/1"`, written by the Rust launcher) names the run
folder, two COCO export folders (`train`, `val` or null: `annotations.json` + `images/`), the
class names (label i+1 = classes[i]; COCO categories are matched BY NAME), the project image ids
of the training split (`train_ids`, = the COCO ids of the train export), the model (our
`MaskRcnnConfig` JSON, the kwargs `ref_train.build_model` takes), `init` (a safetensors file with
the full state dict in torchvision's names, loaded STRICTLY: the same initial weights as the
in-process trainer), `resume` (null or a `last.pth` this script wrote), the resolved recipe
(`TrainConfig` JSON), `device` ("cpu": gloo, "cuda": NCCL with LOCAL_RANK's GPU) and `threads`
(`torch.set_num_threads` per process). Any missing or malformed key stops every rank before
training with one line naming the file and the key.

Recipe semantics (torchvision's detection reference conventions):
- `batch_size` is PER PROCESS; the global batch is batch_size x world_size.
- Linear LR scaling (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1
  Hour", sec. 2.1; torchvision's references/detection/train.py states it for this model: "The
  default hyperparameters are tuned for training on 8 gpus and 2 images per gpu. --lr 0.02
  [...] If you use different number of gpus, the learning rate should be changed to
  0.02/8*$NGPU"): effective lr = recipe.lr x world_size (= recipe.lr x global batch / recipe
  batch, the recipe's batch being one process's).
- One step = one optimiser step of all ranks together (a global step); `warmup_iters` and
  `max_iters` count global steps. An epoch is one pass over the training images split across
  the ranks.
- Sampling: `DistributedSampler(shuffle=True, seed=recipe.seed, drop_last=False)` with
  `set_epoch(epoch)`. When the image count N is not divisible by the world size W it PADS: each
  rank gets ceil(N/W) indices, the shuffled list being extended with its own first
  W*ceil(N/W) - N entries, so that many images are trained twice in that epoch (on different
  ranks) and the `seen-rank<R>.txt` files then overlap in exactly those. Batches come from a
  `GroupedBatchSampler` over the rank's indices: torchvision's aspect-ratio grouping (its
  `create_aspect_ratio_groups(k=3)` bins, `references/detection/group_by_aspect_ratio.py` is
  not in the pip package: `ref_train.group_batches` implements it) with the leftovers of all
  bins forming the epoch's last batches, so every rank has exactly ceil(ceil(N/W)/batch_size)
  steps per epoch (equal counts are what keeps DDP's collectives in step). Grouping is on when
  `recipe.augment` is null or its `aspect_grouping` is true.
- Model: `ref_train.build_model` (FrozenBatchNorm2d, so no SyncBatchNorm is needed: frozen
  statistics are identical on every rank), `init` loaded strictly, wrapped in
  `DistributedDataParallel` (buffers synced at construction only: FrozenBatchNorm's never change).
  The RoI samplers and augmentations draw from torch's global generator, seeded per
  (seed, epoch, rank), so a resumed run redraws the same numbers from its next epoch on.
- Optimisers: `sgd` (torch.optim.SGD: momentum, weight_decay) and `adamw` (torch.optim.AdamW:
  adam_betas, weight_decay) over the parameters that require gradients after construction.
- Schedules (set per global step, as `src/train/optim.rs` `Schedule::lr` computes them, with the
  scaled lr): `cosine` = `ref_train.learning_rate` (linear warm-up from lr*warmup_factor over
  warmup_iters, then half cosine to 0 at the last step); `multistep` = the same warm-up, then
  lr*lr_gamma^k after k milestones passed (`lr_milestones` in epochs; empty: ceil(2E/3) and
  ceil(8E/9) of the E epochs the steps reach into); `one-cycle` = fastai's (no warm-up): cosine
  from lr/div up to lr over round(total*pct_start) steps (at least 1), then cosine down to
  lr/(div*final_div).
- `freeze_epochs`: `backbone.body.*` parameters do not require gradients in the first N epochs
  (the optimiser skips parameters without a gradient, as ours does). DDP is RE-WRAPPED when the
  set of trainable parameters changes (once, at epoch N): its reducer registers hooks and
  buckets only for parameters that require gradients at construction, so a wrapper built while
  frozen would never all-reduce the body's gradients later, and `find_unused_parameters=True`
  would not fix that (it still ignores parameters that did not require grad when wrapped) while
  costing an autograd-graph walk every step. Re-wrapping costs one parameter broadcast.
- `clip_grad_norm`: `torch.nn.utils.clip_grad_norm_` on the averaged gradients (identical on every
  rank). `amp`: autocast + GradScaler on CUDA; ignored on the CPU (as the in-process trainer).
- Validation: rank 0 scores `val` with pycocotools (`ref_train.evaluate`) every `eval_every`
  epochs and at the last epoch (0: never); `patience` stops after that many evaluations without a
  better mask AP (the decision is broadcast to every rank).
- Refused with an error naming the key: an unknown recipe key, optimizer/schedule names other than
  the above, `augment.repeat_threshold` (repeat-factor sampling is not implemented here).
  Ignored (the launcher's business, or carried by `model`/`init`): preset, image_size,
  val_fraction, device, pretrained_backbone, model_overrides, auto_config, user_set, refit.

Augmentation. `recipe.augment` null (or `enabled: false`): each image is resized to the size the
model's transform gives it (`model_dims`: shorter side min_size[-1] unless the longer would pass
max_size; for cpu-fast the longer side = image_size, exactly as ref_train) and flipped
horizontally with probability `hflip_prob`. With `augment` set (src/train/config/augmentation.rs),
in our order, on `torchvision.transforms.v2` tv_tensors (Image, Mask; boxes are recomputed from the
final masks as in our augmenter):
- decode with the longer side at max_size x `presize`;
- `hflip_prob` -> v2.RandomHorizontalFlip(p);
- `ssr_prob`, `shift_limit`, `scale_limit`, `rotate_limit` -> v2.RandomApply([v2.RandomAffine(
  degrees=rotate_limit, translate=(shift_limit, shift_limit), scale=(1-scale_limit,
  1+scale_limit), bilinear, fill=`fill`)], p=ssr_prob) (masks: nearest, filled with 0);
- `color_prob`, `brightness_limit`, `contrast_limit` -> v2.RandomApply([v2.ColorJitter(
  brightness, contrast)], p=color_prob) (ColorJitter's brightness is a factor 1 +- b, ours an
  offset +-b*255: the nearest v2 equivalent);
- `rgb_shift_prob`, `rgb_shift_limit` -> v2.RandomApply([RandomRGBShift], p) (no v2 equivalent:
  a v2.Transform here adding U(+-limit)/255 per channel, clamped);
- `crop_prob`, `crop_keep_all`, `crop_min_fraction` -> CropOrScaleJitter's bbox-safe crop
  (albumentations' RandomSizedBBoxSafeCrop as `augment::bbox_safe_crop_rect`: v2.RandomIoUCrop
  is SSD's IoU-constrained crop and may lose every instance, so ours is ported as a v2.Transform
  built on v2.functional.crop/resize);
- `scale_min`, `scale_max`, `pad_to_square`, `fill` -> CropOrScaleJitter's scale jitter (content
  at U(scale_min, scale_max) x the model size, padded with `fill` or cropped keeping one random
  instance inside, on a canvas of the model size or a max_size square); v2.ScaleJitter resizes
  only, without the pad/crop to a fixed canvas;
- `min_area` -> instances with fewer mask pixels are dropped, then boxes from the masks (pixel
  edges) and v2.SanitizeBoundingBoxes(min_size=1) drops degenerate boxes with their masks/labels;
- `aspect_grouping` -> the GroupedBatchSampler above; `workers` -> DataLoader num_workers,
  `prefetch_batches` -> its prefetch_factor; `repeat_threshold` -> refused.

Files (only global rank 0 writes into run_dir; tmp file + os.replace for every rewrite):
`metrics.csv` (one row per global step, losses averaged over ranks with all_reduce,
images_per_sec = global images / step wall time, memory_bytes = rank 0's RSS or CUDA peak;
flushed per row; on resume the rows of steps before the resumed step are kept), `epochs.csv`
(rewritten per epoch), `torchrun/last.pth` (torchvision reference layout: model, optimizer,
lr_scheduler, epoch, iter, args as argparse.Namespace, plus our history / early-stopping state
and the scaler), `torchrun/best.pth` ({model, epoch, val_segm_ap}; without validation written with
every last.pth), `torchrun/done.json` at a normal end. Every rank appends `epoch image_id` per
trained sample to `torchrun/seen-rank<R>.txt`. done.json's `epochs_completed` counts the epochs
that ran all their steps (as the in-process trainer's summary does; max_iters may cut the last).
Exit 0 on success; otherwise one line on stderr starting with `ddp_train: ` (the job's problems
name the file and the key; others name the rank) and exit 1; torchrun then stops the other ranks
and exits non-zero. SIGTERM (the launcher's cancel) exits 143 without leaving temporary files;
the next run with `resume` continues after the last finished epoch. Multi-node: every path in the
job must be valid on every node (a shared filesystem, or the same layout copied); ranks on other
nodes write their seen-rank files into their node's copy of the run folder.
"""
import argparse
import contextlib
import datetime
import gc
import inspect
import json
import math
import os
import signal
import sys
import time

JOB_FORMAT = "maskstudio-torchrun-job/1"
# src/model LOSS_NAMES order (the in-process trainer's metrics.csv columns).
LOSS_NAMES = ("loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
METRICS_HEADER = "epoch,iter," + ",".join(LOSS_NAMES) + ",total,lr,images_per_sec,memory_bytes"
EPOCHS_HEADER = ("epoch,steps,mean_loss," + ",".join(LOSS_NAMES)
                 + ",lr,val_segm_ap,val_bbox_ap,seconds")
# src/train/trainer/mod.rs FROZEN_PREFIX.
FROZEN_PREFIX = "backbone.body."
# TrainConfig::default() (src/train/config/mod.rs) for the keys this script reads.
RECIPE_DEFAULTS = {
    "epochs": 12, "batch_size": 4, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
    "warmup_iters": 100, "warmup_factor": 0.001, "seed": 0, "hflip_prob": 0.5, "max_iters": None,
    "optimizer": "sgd", "adam_betas": [0.9, 0.999], "schedule": "cosine", "lr_milestones": [],
    "lr_gamma": 0.1, "one_cycle_pct_start": 0.25, "one_cycle_div_factor": 25.0,
    "one_cycle_final_div_factor": 1e4, "freeze_epochs": 0, "clip_grad_norm": None, "amp": False,
    "eval_every": 1, "patience": None, "augment": None,
}
# TrainConfig keys that the launcher resolves (or `model` / `init` carry): not read here.
RECIPE_IGNORED = ("preset", "image_size", "val_fraction", "device", "pretrained_backbone",
                  "model_overrides", "auto_config", "user_set", "refit")
# AugmentConfig::for_preset(CpuFast) (src/train/config/augmentation.rs): a partial `augment`
# object takes these, as serde's `#[serde(default)]` does.
AUGMENT_DEFAULTS = {
    "enabled": True, "presize": 1.0, "pad_to_square": False, "scale_min": 0.8, "scale_max": 1.2,
    "ssr_prob": 0.3, "shift_limit": 0.0625, "scale_limit": 0.1, "rotate_limit": 10.0,
    "crop_prob": 0.25, "crop_keep_all": True, "crop_min_fraction": 0.3, "color_prob": 0.5,
    "brightness_limit": 0.2, "contrast_limit": 0.2, "rgb_shift_prob": 0.0, "rgb_shift_limit": 10.0,
    "min_area": 4, "fill": [124, 116, 104], "aspect_grouping": True, "repeat_threshold": None,
    "workers": 1, "prefetch_batches": 2,
}
# A collective may wait this long for rank 0's validation (gloo's default is 30 min).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)

try:
    import numpy as np
    import torch
    import torch.distributed as dist
    from pycocotools.coco import COCO
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import ref_train
except ImportError as e:
    sys.exit(f"ddp_train: import failed: {e} (run it with the reference venv's python)")


class JobError(Exception):
    """A problem with the job or its inputs, reported as one line."""


def parse_args():
    """The command line: `--job FILE`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job", required=True, help="the job file (maskstudio-torchrun-job/1 JSON)")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# The job file


def _check(cond, path, key, what):
    """Raises a JobError naming `path` and `key` unless `cond`."""
    if not cond:
        raise JobError(f"{path}: {key}: {what}")


def _is_num(v):
    """A finite JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v):
    """A JSON integer (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _folder(job, path, key, nullable):
    """`job[key]`, checked to be a COCO export folder (or None when `nullable`)."""
    v = job.get(key)
    if v is None and nullable:
        return None
    _check(isinstance(v, str), path, key, "expected a folder path")
    _check(os.path.isfile(os.path.join(v, "annotations.json")), path, key,
           f"{v} is not a COCO export folder (no annotations.json)")
    return v


def read_recipe(recipe, path):
    """The recipe with defaults filled in, validated; errors name `recipe.<key>`."""
    _check(isinstance(recipe, dict), path, "recipe", "expected a JSON object")
    for k in recipe:
        _check(k in RECIPE_DEFAULTS or k in RECIPE_IGNORED, path, f"recipe.{k}",
               "unknown key (this script cannot honour it)")
    r = {k: recipe.get(k, v) for k, v in RECIPE_DEFAULTS.items()}
    for k in ("epochs", "batch_size"):
        _check(_is_int(r[k]) and r[k] >= 1, path, f"recipe.{k}", "must be an integer >= 1")
    for k in ("warmup_iters", "freeze_epochs", "eval_every", "seed"):
        _check(_is_int(r[k]) and r[k] >= 0, path, f"recipe.{k}", "must be an integer >= 0")
    _check(_is_num(r["lr"]) and r["lr"] > 0, path, "recipe.lr", "must be a positive number")
    _check(_is_num(r["momentum"]) and 0 <= r["momentum"] < 1, path, "recipe.momentum", "must be in [0, 1)")
    _check(_is_num(r["weight_decay"]) and r["weight_decay"] >= 0, path, "recipe.weight_decay",
           "must not be negative")
    _check(_is_num(r["warmup_factor"]), path, "recipe.warmup_factor", "must be a number")
    _check(_is_num(r["hflip_prob"]) and 0 <= r["hflip_prob"] <= 1, path, "recipe.hflip_prob", "must be in [0, 1]")
    _check(r["max_iters"] is None or (_is_int(r["max_iters"]) and r["max_iters"] >= 1), path,
           "recipe.max_iters", "must be null or an integer >= 1")
    _check(r["optimizer"] in ("sgd", "adamw"), path, "recipe.optimizer",
           f"{r['optimizer']!r} is not supported (sgd or adamw)")
    b = r["adam_betas"]
    _check(isinstance(b, list) and len(b) == 2 and all(_is_num(x) and 0 <= x < 1 for x in b), path,
           "recipe.adam_betas", "must be two numbers in [0, 1)")
    _check(r["schedule"] in ("cosine", "multistep", "one-cycle"), path, "recipe.schedule",
           f"{r['schedule']!r} is not supported (cosine, multistep or one-cycle)")
    m = r["lr_milestones"]
    _check(isinstance(m, list) and all(_is_int(x) and x >= 0 for x in m), path, "recipe.lr_milestones",
           "must be a list of epochs")
    _check(_is_num(r["lr_gamma"]) and r["lr_gamma"] > 0, path, "recipe.lr_gamma", "must be a positive number")
    _check(_is_num(r["one_cycle_pct_start"]) and 0 < r["one_cycle_pct_start"] < 1, path,
           "recipe.one_cycle_pct_start", "must be in (0, 1)")
    for k in ("one_cycle_div_factor", "one_cycle_final_div_factor"):
        _check(_is_num(r[k]) and r[k] >= 1, path, f"recipe.{k}", "must be at least 1")
    c = r["clip_grad_norm"]
    _check(c is None or (_is_num(c) and c > 0), path, "recipe.clip_grad_norm", "must be null or a positive number")
    _check(isinstance(r["amp"], bool), path, "recipe.amp", "must be true or false")
    pt = r["patience"]
    _check(pt is None or (_is_int(pt) and pt >= 1), path, "recipe.patience", "must be null or an integer >= 1")
    a = r["augment"]
    if a is not None:
        _check(isinstance(a, dict), path, "recipe.augment", "must be null or a JSON object")
        for k in a:
            _check(k in AUGMENT_DEFAULTS, path, f"recipe.augment.{k}", "unknown key")
        a = {k: a.get(k, v) for k, v in AUGMENT_DEFAULTS.items()}
        _check(a["repeat_threshold"] is None, path, "recipe.augment.repeat_threshold",
               "repeat-factor sampling is not supported by the torchrun engine (set it to null)")
        for k in ("ssr_prob", "crop_prob", "color_prob", "rgb_shift_prob", "brightness_limit", "contrast_limit"):
            _check(_is_num(a[k]) and 0 <= a[k] <= 1, path, f"recipe.augment.{k}", "must be in [0, 1]")
        _check(_is_num(a["presize"]) and 1 <= a["presize"] <= 4, path, "recipe.augment.presize", "must be in [1, 4]")
        _check(_is_num(a["scale_min"]) and _is_num(a["scale_max"]) and 0.1 <= a["scale_min"] <= a["scale_max"] <= 4,
               path, "recipe.augment.scale_min", "needs 0.1 <= scale_min <= scale_max <= 4")
        _check(_is_num(a["shift_limit"]) and 0 <= a["shift_limit"] < 1, path, "recipe.augment.shift_limit",
               "must be in [0, 1)")
        _check(_is_num(a["scale_limit"]) and 0 <= a["scale_limit"] < 0.9, path, "recipe.augment.scale_limit",
               "must be in [0, 0.9)")
        _check(_is_num(a["rotate_limit"]) and 0 <= a["rotate_limit"] <= 180, path, "recipe.augment.rotate_limit",
               "must be in [0, 180]")
        _check(_is_num(a["crop_min_fraction"]) and 0.05 <= a["crop_min_fraction"] <= 1, path,
               "recipe.augment.crop_min_fraction", "must be in [0.05, 1]")
        _check(_is_num(a["rgb_shift_limit"]) and 0 <= a["rgb_shift_limit"] <= 255, path,
               "recipe.augment.rgb_shift_limit", "must be in [0, 255]")
        _check(_is_int(a["min_area"]) and a["min_area"] >= 0, path, "recipe.augment.min_area", "must be an integer >= 0")
        f = a["fill"]
        _check(isinstance(f, list) and len(f) == 3 and all(_is_int(x) and 0 <= x <= 255 for x in f), path,
               "recipe.augment.fill", "must be three integers in 0..255")
        _check(_is_int(a["workers"]) and 1 <= a["workers"] <= 64, path, "recipe.augment.workers", "must be in 1..=64")
        _check(_is_int(a["prefetch_batches"]) and a["prefetch_batches"] >= 1, path,
               "recipe.augment.prefetch_batches", "must be at least 1")
        for k in ("enabled", "pad_to_square", "crop_keep_all", "aspect_grouping"):
            _check(isinstance(a[k], bool), path, f"recipe.augment.{k}", "must be true or false")
        r["augment"] = a
    return r


MODEL_KEYS = ("backbone", "num_classes", "returned_layers", "trainable_backbone_layers", "frozen_bn_eps",
              "min_size", "max_size", "anchor_sizes", "aspect_ratios", "bbox_reg_weights")


def read_job(path):
    """The validated job; raises JobError naming the file and the key."""
    try:
        with open(path) as f:
            job = json.load(f)
    except OSError as e:
        raise JobError(f"{path}: cannot read the job file: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise JobError(f"{path}: not valid JSON: {e}") from None
    _check(isinstance(job, dict), path, "(top level)", "expected a JSON object")
    _check(job.get("format") == JOB_FORMAT, path, "format", f"expected {JOB_FORMAT!r}, found {job.get('format')!r}")
    for k in ("run_dir", "train", "classes", "train_ids", "model", "init", "recipe", "device", "threads"):
        _check(k in job, path, k, "missing")
    _check(isinstance(job["run_dir"], str) and os.path.isdir(job["run_dir"]), path, "run_dir",
           f"{job['run_dir']!r} is not a folder")
    _folder(job, path, "train", False)
    _folder(job, path, "val", True)
    cl = job["classes"]
    _check(isinstance(cl, list) and cl and all(isinstance(c, str) and c for c in cl), path, "classes",
           "expected a non-empty list of class names")
    _check(len(set(cl)) == len(cl), path, "classes", "duplicate class names")
    ids = job["train_ids"]
    _check(isinstance(ids, list) and ids and all(_is_int(i) for i in ids), path, "train_ids",
           "expected a non-empty list of image ids")
    m = job["model"]
    _check(isinstance(m, dict), path, "model", "expected a MaskRcnnConfig JSON object")
    for k in MODEL_KEYS:
        _check(k in m, path, f"model.{k}", "missing")
    _check(m["backbone"] in ("mobilenet_v2", "resnet50"), path, "model.backbone",
           f"{m['backbone']!r} is not supported (mobilenet_v2 or resnet50)")
    _check(m["num_classes"] == len(cl) + 1, path, "model.num_classes",
           f"is {m['num_classes']}, but classes has {len(cl)} names (+1 for the background)")
    _check(isinstance(job["init"], str) and os.path.isfile(job["init"]), path, "init",
           f"{job['init']!r} is not a file")
    res = job.get("resume")
    _check(res is None or (isinstance(res, str) and os.path.isfile(res)), path, "resume",
           f"{res!r} is not a file")
    job["resume"] = res
    job["val"] = job.get("val")
    job["recipe"] = read_recipe(job["recipe"], path)
    _check(job["device"] in ("cpu", "cuda"), path, "device", f"{job['device']!r}: expected \"cpu\" or \"cuda\"")
    _check(_is_int(job["threads"]) and job["threads"] >= 1, path, "threads", "must be an integer >= 1")
    job["path"] = path
    return job


# ---------------------------------------------------------------------------------------------
# Learning rate


def schedule_lr(r, it, total, steps_per_epoch, lr):
    """Learning rate of global step `it` of a `total`-step schedule with peak `lr` (the scaled
    rate): `src/train/optim.rs` `Schedule::lr` with `start = 0` and equal epochs."""
    total = max(total, 1)
    i = min(it, total)
    if r["schedule"] == "one-cycle":
        up = max(round(total * r["one_cycle_pct_start"]), 1)
        start = lr / r["one_cycle_div_factor"]
        end = start / r["one_cycle_final_div_factor"]

        def cos(a, b, p):
            return b + (a - b) * 0.5 * (1 + math.cos(math.pi * p))

        if i < up:
            return cos(start, lr, i / up)
        down = max(total - up, 1)
        return cos(lr, end, min((i - up) / down, 1.0))
    warm = argparse.Namespace(lr=lr, warmup_iters=r["warmup_iters"], warmup_factor=r["warmup_factor"])
    if r["schedule"] == "multistep" and i >= min(r["warmup_iters"], total):
        spe = max(steps_per_epoch, 1)
        epochs = -(-total // spe)
        milestones = r["lr_milestones"] or [-(-epochs * 2 // 3), -(-epochs * 8 // 9)]
        passed = sum(1 for m in milestones if i >= m * spe)
        return lr * r["lr_gamma"] ** passed
    # Cosine (and multistep's warm-up): ours, as the reference trainer computes it.
    return ref_train.learning_rate(warm, i, total)


# ---------------------------------------------------------------------------------------------
# Data


def model_dims(w, h, min_side, max_side):
    """`augment::model_dims`: torchvision's GeneralizedRCNNTransform size rule, rounded."""
    short, long_ = max(min(w, h), 1), max(w, h, 1)
    s = min(min_side / short, max_side / long_)
    return max(1, round(w * s)), max(1, round(h * s))


class RandomRGBShift(v2.Transform):
    """albumentations `RGBShift`: adds U(-limit, limit) (0..255 units) to each channel of the
    image (0..1 floats here), clamped; masks unchanged."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def make_params(self, flat_inputs):
        """The per-channel shift of this call."""
        return {"shift": (torch.rand(3) * 2 - 1) * self.limit / 255}

    def transform(self, inpt, params):
        """Shifts an Image; passes anything else through."""
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap((inpt + params["shift"].view(3, 1, 1)).clamp(0, 1), like=inpt)
        return inpt


def _pixel_box(m):
    """`[x0, y0, x1, y1)` of a mask, None when empty."""
    ys, xs = torch.where(m > 0)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _below(n):
    """A uniform integer in `0..n` (0 when n <= 1) from torch's global generator."""
    return int(torch.randint(n, ()).item()) if n > 1 else 0


def _safe_span(length, keep0, keep1, min_len):
    """`augment::safe_span`: `[a, b)` inside `0..length` containing `[keep0, keep1)`, at least
    `min_len` long where possible (uniform ends)."""
    a = math.floor(keep0 * torch.rand(()).item())
    b = min(keep1 + math.ceil((length - keep1) * torch.rand(()).item()), length)
    if b - a < min_len:
        need = min_len - (b - a)
        left = min(need // 2, a)
        a -= left
        b = min(b + need - left, length)
        if b - a < min_len:
            a = max(a - (min_len - (b - a)), 0)
    return a, max(b, a + 1)


def _jitter_offset(content, canvas, keep):
    """`augment::jitter_offset`: uniform padding offset, or a crop offset keeping `keep` inside."""
    if content <= canvas:
        return _below(canvas - content + 1)
    slack = content - canvas
    if keep is None:
        lo, hi = 0, slack
    elif keep[1] - keep[0] <= canvas:
        lo, hi = max(keep[1] - canvas, 0), min(keep[0], slack)
    else:
        start = min(max((keep[0] + keep[1]) // 2 - canvas // 2, 0), slack)
        lo, hi = start, start
    lo = min(lo, hi)
    return -(lo + _below(hi - lo + 1))


class CropOrScaleJitter(v2.Transform):
    """The last geometric step of our augmenter (`Augmenter::apply`): with probability
    `crop_prob` a bbox-safe crop (every instance's box, or one random instance's, stays whole)
    resized to the model size; otherwise the content resized to U(scale_min, scale_max) x the
    model size and placed at a random offset on the canvas (padding with `fill`, or cropping with
    one random instance kept inside). The canvas is the model size, or a max_size square with
    `pad_to_square`."""

    def __init__(self, a, min_side, max_side):
        super().__init__()
        self.a, self.min_side, self.max_side = a, min_side, max_side

    def _fit(self, w, h, scale):
        """The model size of a `w` x `h` image with both size bounds scaled by `scale`."""
        return model_dims(w, h, max(round(self.min_side * scale), 1), max(round(self.max_side * scale), 1))

    def make_params(self, flat_inputs):
        """Crop rectangle (or None), content size, canvas size and offset of this call."""
        a = self.a
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        masks = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        h, w = image.shape[-2:]
        boxes = [b for b in (_pixel_box(m) for m in masks)] if masks is not None else []
        boxes = [b for b in boxes if b is not None]
        square = (self.max_side, self.max_side)
        if torch.rand(()).item() < a["crop_prob"]:
            if not boxes:
                x, y = _below(w), _below(h)
                keep = [x, y, x + 1, y + 1]
            elif a["crop_keep_all"]:
                keep = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                        max(b[2] for b in boxes), max(b[3] for b in boxes)]
            else:
                keep = boxes[_below(len(boxes))]
            min_w = min(max(math.ceil(w * a["crop_min_fraction"]), 1), w)
            min_h = min(max(math.ceil(h * a["crop_min_fraction"]), 1), h)
            x0, x1 = _safe_span(w, keep[0], keep[2], min_w)
            y0, y1 = _safe_span(h, keep[1], keep[3], min_h)
            fitted = self._fit(x1 - x0, y1 - y0, 1.0)
            return {"crop": (y0, x0, y1 - y0, x1 - x0), "content": fitted,
                    "canvas": square if a["pad_to_square"] else fitted, "offset": (0, 0)}
        scale = a["scale_min"] + (a["scale_max"] - a["scale_min"]) * torch.rand(()).item()
        fitted, content = self._fit(w, h, 1.0), self._fit(w, h, scale)
        canvas = square if a["pad_to_square"] else fitted
        keep = None
        if boxes:
            b = boxes[_below(len(boxes))]
            sx, sy = content[0] / w, content[1] / h
            keep = [math.floor(b[0] * sx), math.floor(b[1] * sy),
                    min(math.ceil(b[2] * sx), content[0]), min(math.ceil(b[3] * sy), content[1])]
        ox = _jitter_offset(content[0], canvas[0], None if keep is None else (keep[0], keep[2]))
        oy = _jitter_offset(content[1], canvas[1], None if keep is None else (keep[1], keep[3]))
        return {"crop": None, "content": content, "canvas": canvas, "offset": (ox, oy)}

    def transform(self, inpt, params):
        """Crops, resizes and places an Image or Mask; passes anything else through."""
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        is_image = isinstance(inpt, tv_tensors.Image)
        t = inpt
        if params["crop"] is not None:
            t = TF.crop(t, *params["crop"])
        (cw, ch), (W, H), (ox, oy) = params["content"], params["canvas"], params["offset"]
        if t.shape[0] and tuple(t.shape[-2:]) != (ch, cw):
            t = TF.resize(t, [ch, cw], antialias=True)  # bilinear image, nearest masks
        if (W, H) == (cw, ch) and (ox, oy) == (0, 0):
            return t
        if is_image:
            fill = torch.tensor(self.a["fill"], dtype=t.dtype) / 255
            out = fill.view(3, 1, 1).expand(3, H, W).clone()
        else:
            out = torch.zeros((t.shape[0], H, W), dtype=t.dtype)
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + cw, W), min(oy + ch, H)
        if x1 > x0 and y1 > y0 and t.shape[0]:
            out[:, y0:y1, x0:x1] = t[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        return tv_tensors.wrap(out, like=inpt)


class TrainSet(torch.utils.data.Dataset):
    """The training images of a COCO export (ids in `image_ids`, in that order), decoded and
    resized by `ref_train.load_sample`, then transformed. An item is
    `(image [3, H, W] f32 0..1, target {boxes [G, 4], labels [G], masks [G, H, W] u8}, image_id)`."""

    def __init__(self, folder, image_ids, label_of, model_cfg, augment, hflip_prob):
        with contextlib.redirect_stdout(sys.stderr):
            self.coco = COCO(os.path.join(folder, "annotations.json"))
        self.folder, self.ids, self.label_of = folder, list(image_ids), label_of
        self.min_side, self.max_side = int(model_cfg["min_size"][-1]), int(model_cfg["max_size"])
        self.augment = augment if augment is not None and augment["enabled"] else None
        a = self.augment
        if a is None:
            self.min_area = 1
            self.transform = v2.RandomHorizontalFlip(hflip_prob)
        else:
            self.min_area = max(a["min_area"], 1)
            fill = [f / 255 for f in a["fill"]]
            self.transform = v2.Compose([
                v2.RandomHorizontalFlip(hflip_prob),
                v2.RandomApply([v2.RandomAffine(
                    degrees=a["rotate_limit"], translate=(a["shift_limit"], a["shift_limit"]),
                    scale=(1 - a["scale_limit"], 1 + a["scale_limit"]),
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill={tv_tensors.Image: fill, tv_tensors.Mask: 0})], p=a["ssr_prob"]),
                v2.RandomApply([v2.ColorJitter(brightness=a["brightness_limit"], contrast=a["contrast_limit"])],
                               p=a["color_prob"]),
                v2.RandomApply([RandomRGBShift(a["rgb_shift_limit"])], p=a["rgb_shift_prob"]),
                CropOrScaleJitter(a, self.min_side, self.max_side),
            ])
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1)

    def __len__(self):
        return len(self.ids)

    def size(self, i):
        """(width, height) of item `i` as the export records it (no decoding)."""
        info = self.coco.loadImgs(self.ids[i])[0]
        return info["width"], info["height"]

    def _dims(self, w, h):
        """Decode size of a `w` x `h` image (module docs: the model size, or max_size x presize)."""
        if self.augment is None:
            return model_dims(w, h, self.min_side, self.max_side)
        return ref_train.fitted(w, h, round(self.max_side * self.augment["presize"]))

    def __getitem__(self, i):
        img_id = self.ids[i]
        s = ref_train.load_sample(self.coco, self.folder, img_id, self.label_of, self._dims)
        image, masks, labels = tv_tensors.Image(s["image"]), tv_tensors.Mask(s["masks"]), s["labels"]
        if masks.shape[0]:
            image, masks = self.transform(image, masks)
        else:
            # No instance: transform the image alone (v2 kernels want a non-empty mask batch).
            image = self.transform(image)
            masks = tv_tensors.Mask(torch.zeros((0, *image.shape[-2:]), dtype=torch.uint8))
        if self.augment is None:
            w, h = model_dims(image.shape[-1], image.shape[-2], self.min_side, self.max_side)
            if (h, w) != tuple(image.shape[-2:]):  # images arrive at this size already
                image = TF.resize(image, [h, w], antialias=True)
                masks = TF.resize(masks, [h, w]) if masks.shape[0] else masks.new_zeros((0, h, w))
        keep = masks.flatten(1).sum(1) >= self.min_area if masks.shape[0] else torch.zeros(0, dtype=torch.bool)
        masks, labels = masks[keep], labels[keep]
        boxes = tv_tensors.BoundingBoxes(ref_train.boxes_from_masks(masks), format="XYXY",
                                         canvas_size=tuple(image.shape[-2:]))
        out = self.sanitize({"image": image, "boxes": boxes, "masks": tv_tensors.Mask(masks), "labels": labels})
        target = {"boxes": out["boxes"].as_subclass(torch.Tensor),
                  "labels": out["labels"], "masks": out["masks"].as_subclass(torch.Tensor)}
        return image.as_subclass(torch.Tensor), target, img_id


class GroupedBatchSampler(torch.utils.data.Sampler):
    """torchvision's detection-reference GroupedBatchSampler over a (distributed) sampler:
    batches of one aspect-ratio group, leftovers last (`ref_train.group_batches`); `group_ids`
    None gives plain consecutive batches. Always ceil(len(sampler) / batch_size) batches."""

    def __init__(self, sampler, group_ids, batch_size):
        super().__init__()
        self.sampler, self.group_ids, self.batch_size = sampler, group_ids, batch_size

    def __iter__(self):
        return iter(ref_train.group_batches(list(self.sampler), self.group_ids, self.batch_size))

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)


def collate(batch):
    """`(images, targets, image_ids)` tuples of a batch (torchvision's `utils.collate_fn`)."""
    return tuple(zip(*batch))


def label_maps(job):
    """`{train category id: label}` and `{label: val category id}` (matched by class name)."""
    path = job["path"]
    by_name = ref_train.categories_by_name(job["train"])
    missing = [c for c in job["classes"] if c not in by_name]
    _check(not missing, path, "classes", f"{job['train']}/annotations.json has no categories named {missing}")
    label_of = {by_name[c]: i + 1 for i, c in enumerate(job["classes"])}
    cat_of = None
    if job["val"] is not None:
        val_names = ref_train.categories_by_name(job["val"])
        # A class absent from the validation export gets a category id no annotation has.
        cat_of = {i + 1: val_names.get(c, -1) for i, c in enumerate(job["classes"])}
    return label_of, cat_of


def train_image_ids(job):
    """`train_ids`, checked against the train export's images."""
    with open(os.path.join(job["train"], "annotations.json")) as f:
        have = {im["id"] for im in json.load(f)["images"]}
    missing = [i for i in job["train_ids"] if i not in have]
    _check(not missing, job["path"], "train_ids",
           f"{len(missing)} ids are not images of {job['train']}/annotations.json (first: {missing[:3]})")
    return list(job["train_ids"])


# ---------------------------------------------------------------------------------------------
# Files


TMP_SUFFIX = ".tmp-ddp"


def _replace_via_tmp(path, write):
    """Calls `write(tmp)` on a temporary file beside `path`, then renames it over `path`; the
    temporary file is removed when writing fails (or SIGTERM interrupts it)."""
    tmp = f"{path}{TMP_SUFFIX}{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file beside it and a rename."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _replace_via_tmp(path, write)


def save_atomic(obj, path):
    """`torch.save` through a temporary file and a rename."""
    _replace_via_tmp(path, lambda tmp: torch.save(obj, tmp))


def remove_stale_tmp(*folders):
    """Removes temporary files a killed earlier process left in `folders` (SIGKILL skips the
    cleanup of `_replace_via_tmp`)."""
    for d in folders:
        for name in os.listdir(d):
            if TMP_SUFFIX in name:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(d, name))


def open_metrics(path, resume_iter):
    """metrics.csv for appending: fresh (header only), or on resume the header and the rows of
    steps before `resume_iter` (later rows belong to an epoch that did not finish)."""
    if resume_iter is None or not os.path.isfile(path):
        write_atomic(path, METRICS_HEADER + "\n")
    else:
        with open(path) as f:
            lines = f.read().splitlines()
        kept = [METRICS_HEADER]
        for line in lines[1:]:
            cells = line.split(",")
            if len(cells) > 1 and cells[1].strip().isdigit() and int(cells[1]) < resume_iter:
                kept.append(line)
        write_atomic(path, "\n".join(kept) + "\n")
    return open(path, "a")


def open_seen(path, start_epoch):
    """seen-rank<R>.txt for appending, keeping only the lines of epochs before `start_epoch`."""
    kept = []
    if start_epoch > 0 and os.path.isfile(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) < start_epoch:
                    kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(kept))
    return open(path, "a")


def fmt(v):
    """A CSV cell: empty for None, else Python's shortest round-trip text."""
    return "" if v is None else repr(float(v)) if isinstance(v, float) else str(v)


def epochs_csv(history):
    """epochs.csv's text for the epoch records `history`."""
    rows = [EPOCHS_HEADER]
    for r in history:
        cells = [r["epoch"], r["steps"], r["mean_loss"], *[r["losses"][k] for k in LOSS_NAMES],
                 r["lr"], r["val_segm_ap"], r["val_bbox_ap"], r["seconds"]]
        rows.append(",".join(fmt(c) for c in cells))
    return "\n".join(rows) + "\n"


def memory_bytes(device):
    """Rank 0's resident memory (CPU) or CUDA peak allocation, None where unknown."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def epoch_seed(seed, epoch, rank):
    """Seed of torch's global generator for (`seed`, `epoch`, `rank`): augmentation and the RoI
    samplers differ between ranks and epochs and repeat on resume."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + 1) % (2**63)


# ---------------------------------------------------------------------------------------------
# Training


class World:
    """Rank, world size and devices of this process."""

    def __init__(self, job):
        env = os.environ
        self.distributed = "WORLD_SIZE" in env and "RANK" in env
        self.rank = int(env.get("RANK", 0))
        self.world = int(env.get("WORLD_SIZE", 1))
        self.local_rank = int(env.get("LOCAL_RANK", 0))
        if job["device"] == "cuda":
            if not torch.cuda.is_available():
                raise JobError(f"{job['path']}: device: \"cuda\" but torch sees no CUDA device here")
            if self.local_rank >= torch.cuda.device_count():
                raise JobError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} CUDA devices")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            backend = "nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        if self.distributed:
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        # Collectives' tensors: NCCL needs them on the GPU.
        self.comm = self.device

    def all_sum(self, t):
        """`t` summed over the ranks (in place)."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def broadcast(self, t):
        """`t` as rank 0 has it (in place)."""
        if self.distributed:
            dist.broadcast(t, 0)
        return t

    def close(self):
        """Leaves the process group."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def set_frozen(model, trainable, frozen):
    """`backbone.body.*` parameters (of those trainable at construction) stop / start requiring
    gradients."""
    for name, p in model.named_parameters():
        if name.startswith(FROZEN_PREFIX) and name in trainable:
            p.requires_grad_(not frozen)


def wrap(model, world):
    """The DDP wrapper (or the model itself in a world of one without torchrun)."""
    if not world.distributed:
        return model
    ids = [world.local_rank] if world.device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    # FrozenBatchNorm's buffers never change: synced once at construction, not every forward
    # (torch 2.13 renamed `broadcast_buffers` to `forward_sync_buffers`).
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:
        return ddp(model, device_ids=ids, forward_sync_buffers=False)
    return ddp(model, device_ids=ids, broadcast_buffers=False)


def load_resume(path, job, world, model, opt, scaler):
    """Restores model, optimiser, scaler and the loop state from a last.pth of this script."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise JobError(f"{path}: cannot read the checkpoint: {e}") from None
    for k in ("model", "optimizer", "epoch", "iter", "history", "args"):
        _check(k in ck, path, k, "missing from the checkpoint")
    was = getattr(ck["args"], "world_size", None)
    _check(was == world.world, path, "args.world_size",
           f"written by {was} processes; resume with the same number (now {world.world}): the steps per "
           "epoch and the scaled learning rate depend on it")
    model.load_state_dict(ck["model"], strict=True)
    opt.load_state_dict(ck["optimizer"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    return ck


def run(job, world):
    """Trains as the job says (module docs); rank 0 writes the run folder's files."""
    r = job["recipe"]
    rank, W, device = world.rank, world.world, world.device
    torch.set_num_threads(job["threads"])
    run_dir = job["run_dir"]
    tr_dir = os.path.join(run_dir, "torchrun")
    os.makedirs(tr_dir, exist_ok=True)
    if rank == 0:
        remove_stale_tmp(run_dir, tr_dir)

    label_of, cat_of = label_maps(job)
    ids = train_image_ids(job)
    from safetensors.torch import load_file

    try:
        model = ref_train.build_model(job["model"], None)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise JobError(f"{job['path']}: model: torchvision cannot build it: {e}") from None
    try:
        state = load_file(job["init"])
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise JobError(f"{job['init']}: cannot read the initial weights: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise JobError(f"{job['init']}: does not match the model: {' '.join(first[:3])[:400]}") from None
    model.to(device)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = [p for n, p in model.named_parameters() if n in trainable]
    lr = r["lr"] * W  # linear scaling rule (module docs)
    if r["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=r["momentum"], weight_decay=r["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(r["adam_betas"]), weight_decay=r["weight_decay"])
    amp = r["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None

    start_epoch, it, history, resumed_stop = 0, 0, [], False
    best_ap, best_epoch, evals_since_best = None, None, 0
    if job["resume"] is not None:
        ck = load_resume(job["resume"], job, world, model, opt, scaler)
        start_epoch, it, history = ck["epoch"] + 1, ck["iter"], list(ck["history"])
        best_ap, best_epoch = ck.get("best_segm_ap"), ck.get("best_epoch")
        evals_since_best = ck.get("evals_since_best", 0)
        # An early stop decided at the checkpoint's epoch holds (done.json may not have been
        # written when the run was interrupted).
        resumed_stop = bool(ck.get("stopped_early", False))

    augment = r["augment"]
    dataset = TrainSet(job["train"], ids, label_of, job["model"], augment, r["hflip_prob"])
    grouping = augment is None or augment["aspect_grouping"]
    groups = [ref_train.aspect_bin(*dataset.size(i)) for i in range(len(dataset))] if grouping else None
    sampler = torch.utils.data.distributed.DistributedSampler(
        dataset, num_replicas=W, rank=rank, shuffle=True, seed=r["seed"], drop_last=False)
    batches = GroupedBatchSampler(sampler, groups, r["batch_size"])
    workers = augment["workers"] if augment is not None else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        prefetch_factor=augment["prefetch_batches"] if workers else None)
    steps_per_epoch = len(batches)
    planned = r["epochs"] * steps_per_epoch
    total = min(r["max_iters"], planned) if r["max_iters"] else planned

    metrics = open_metrics(os.path.join(run_dir, "metrics.csv"), it if job["resume"] else None) if rank == 0 else None
    seen = open_seen(os.path.join(tr_dir, f"seen-rank{rank}.txt"), start_epoch)
    if rank == 0:
        print(f"ddp_train: {W} process(es), {len(dataset)} training images, {steps_per_epoch} steps per epoch, "
              f"{total} steps, lr {lr:g} (= {r['lr']:g} x {W})"
              + (f", resuming at epoch {start_epoch} step {it}" if job["resume"] else ""), file=sys.stderr)
    args = argparse.Namespace(
        job=job["path"], data_path=job["train"], val=job["val"], model=job["model"]["backbone"],
        device=job["device"], world_size=W, distributed=world.distributed, lr=lr, recipe_lr=r["lr"],
        batch_size=r["batch_size"], epochs=r["epochs"], steps_per_epoch=steps_per_epoch, total_iters=total,
        **{k: v for k, v in r.items() if k not in ("lr", "batch_size", "epochs")})

    ddp, ddp_frozen, stopped_early, final_loss = None, None, resumed_stop, None
    if history:
        final_loss = history[-1]["mean_loss"]
    epoch = start_epoch
    while epoch < r["epochs"] and it < total and not stopped_early:
        frozen = epoch < r["freeze_epochs"]
        set_frozen(model, trainable, frozen)
        if ddp is None or frozen != ddp_frozen:
            # Drop the old wrapper first: its reducer's gradient hooks go with it.
            ddp = None
            gc.collect()
            ddp, ddp_frozen = wrap(model, world), frozen
            if frozen and rank == 0:
                print(f"ddp_train: epoch {epoch}: backbone body frozen", file=sys.stderr)
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(r["seed"], epoch, rank))
        ddp.train()
        steps, loss_sum, part_sums, seconds, ep_lr = 0, 0.0, dict.fromkeys(LOSS_NAMES, 0.0), 0.0, lr
        for images, targets, img_ids in loader:
            if it >= total:
                break
            t0 = time.perf_counter()
            ep_lr = schedule_lr(r, it, total, steps_per_epoch, lr)
            for g in opt.param_groups:
                g["lr"] = ep_lr
            images = [x.to(device, non_blocking=True) for x in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device_type="cuda", enabled=amp):
                loss_dict = ddp(images, targets)
            loss = sum(loss_dict.values())
            # Averaged over ranks before backward, so a non-finite loss stops every rank together.
            vals = torch.tensor([float(loss_dict[k].detach()) for k in LOSS_NAMES]
                                + [float(loss.detach()), len(images)], dtype=torch.float64, device=world.comm)
            vals = world.all_sum(vals).cpu()
            parts = {k: float(vals[i]) / W for i, k in enumerate(LOSS_NAMES)}
            total_loss, n_global = float(vals[len(LOSS_NAMES)]) / W, int(vals[-1])
            if not math.isfinite(total_loss):
                detail = ", ".join(f"{k}={v}" for k, v in parts.items())
                raise JobError(f"the loss became {total_loss} at step {it} (epoch {epoch}; {detail}); training stopped"
                               " (the last finished epoch's checkpoint is kept). Lower the learning rate or set"
                               " clip_grad_norm.")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if r["clip_grad_norm"] is not None:
                norm = float(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                                            r["clip_grad_norm"]))
                if not math.isfinite(norm) and scaler is None:
                    raise JobError(f"the gradient norm became {norm} at step {it} (epoch {epoch}); training stopped."
                                   " Lower the learning rate.")
            if scaler is not None:
                scaler.step(opt)  # skips the step on overflow and lowers the scale
                scaler.update()
            else:
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            for i in img_ids:
                seen.write(f"{epoch} {i}\n")
            if metrics is not None:
                cells = [epoch, it, *[parts[k] for k in LOSS_NAMES], total_loss, ep_lr,
                         n_global / max(dt, 1e-9), memory_bytes(device)]
                metrics.write(",".join(fmt(c) for c in cells) + "\n")
                metrics.flush()
            steps += 1
            loss_sum += total_loss
            for k in LOSS_NAMES:
                part_sums[k] += parts[k]
            seconds += dt
            it += 1
        seen.flush()
        if steps == 0:
            break
        final_loss = loss_sum / steps
        last_epoch = epoch + 1 >= r["epochs"] or it >= total
        stop = torch.zeros(1, dtype=torch.float64, device=world.comm)
        if rank == 0:
            rec = {"epoch": epoch, "steps": steps, "mean_loss": final_loss,
                   "losses": {k: v / steps for k, v in part_sums.items()}, "lr": ep_lr,
                   "val_segm_ap": None, "val_bbox_ap": None, "seconds": seconds}
            history.append(rec)
            if not all(torch.isfinite(p).all() for p in params):
                raise JobError(f"the weights became non-finite in epoch {epoch}; training stopped"
                               " (the previous epoch's checkpoint is kept)")
            every = r["eval_every"]
            validating = cat_of is not None and every > 0
            if validating and ((epoch + 1) % every == 0 or last_epoch):
                t_eval = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):
                    stats, _ = ref_train.evaluate(model, job["val"], cat_of, device)
                model.train()
                rec["val_segm_ap"], rec["val_bbox_ap"] = stats["segm"][0], stats["bbox"][0]
                print(f"ddp_train: epoch {epoch}: val mask AP {rec['val_segm_ap']:.4f} box AP "
                      f"{rec['val_bbox_ap']:.4f} ({time.perf_counter() - t_eval:.1f} s)", file=sys.stderr)
                if best_ap is None or rec["val_segm_ap"] > best_ap:
                    best_ap, best_epoch, evals_since_best = rec["val_segm_ap"], epoch, 0
                    save_atomic({"model": model.state_dict(), "epoch": epoch, "val_segm_ap": best_ap},
                                os.path.join(tr_dir, "best.pth"))
                else:
                    evals_since_best += 1
                    if r["patience"] is not None and evals_since_best >= r["patience"]:
                        stop[0] = 1
            elif not validating:
                save_atomic({"model": model.state_dict(), "epoch": epoch, "val_segm_ap": None},
                            os.path.join(tr_dir, "best.pth"))
            save_atomic({
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "lr_scheduler": {"last_step": it, "total_iters": total, "steps_per_epoch": steps_per_epoch,
                                 "schedule": r["schedule"], "base_lr": lr},
                "epoch": epoch, "iter": it, "args": args, "history": history,
                "best_segm_ap": best_ap, "best_epoch": best_epoch, "evals_since_best": evals_since_best,
                "stopped_early": bool(stop[0]), "scaler": scaler.state_dict() if scaler is not None else None,
            }, os.path.join(tr_dir, "last.pth"))
            write_atomic(os.path.join(run_dir, "epochs.csv"), epochs_csv(history))
            print(f"ddp_train: epoch {epoch}: {steps} steps, mean loss {final_loss:.4f}, {seconds:.1f} s",
                  file=sys.stderr)
        # Every rank waits here for rank 0's epoch end and learns whether to stop early.
        stopped_early = bool(world.broadcast(stop)[0])
        epoch += 1

    seen.close()
    if rank == 0:
        metrics.close()
        if stopped_early:
            print(f"ddp_train: early stopping: val mask AP did not improve for {evals_since_best} evaluations "
                  f"(best {best_ap:.4f} at epoch {best_epoch})", file=sys.stderr)
        # As the in-process trainer counts them: epochs that ran all their steps (max_iters may
        # cut the last one short).
        completed = sum(1 for h in history if h["steps"] == steps_per_epoch)
        done = {"iterations": it, "epochs_completed": completed, "final_loss": final_loss,
                "best_epoch": best_epoch, "best_segm_ap": best_ap, "stopped_early": stopped_early,
                "world_size": W, "lr": lr}
        write_atomic(os.path.join(tr_dir, "done.json"), json.dumps(done, indent=2) + "\n")


def main():
    """Reads the job, joins the process group, trains; errors as one `ddp_train: ` line."""
    a = parse_args()
    # The launcher cancels with SIGTERM to the process group: unwind (removing half-written
    # temporary files) and exit quietly; torchrun reports the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    world = None
    try:
        job = read_job(a.job)
        world = World(job)
        run(job, world)
    except JobError as e:
        print(f"ddp_train: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - one line for the launcher, whatever failed
        rank = os.environ.get("RANK", "0")
        msg = " ".join(str(e).split())[:600]
        print(f"ddp_train: rank {rank}: {type(e).__name__}: {msg}", file=sys.stderr)
        sys.exit(1)
    finally:
        if world is not None:
            world.close()


if __name__ == "__main__":
    main()
