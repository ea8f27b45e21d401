#!/usr/bin/env python3
"""Golden fixtures for the Rust Mask R-CNN (tests/model_*.rs). Run manually, not in CI:

    /root/.cache/maskstudio/torch-2.13.0/venv/bin/python tools/gen_model_fixtures.py [OUT_DIR]

Needs torch 2.13.0 + torchvision 0.28.0 + safetensors (CPU is enough). Writes into
tests/fixtures/model/ (default):

  keys_resnet50.tsv, keys_mobilenet_v2.tsv   state_dict key, shape, param|buffer, train|frozen
  ops.safetensors                             op-level goldens (roi_align, nms, paste, anchors, ...)
  golden_{resnet50,mobilenet_v2}.json         weight recipe + config + detection/loss goldens
  golden_{resnet50,mobilenet_v2}.safetensors  input images, targets and expected tensors

Full-model weights are far too large to commit (R50 Mask R-CNN = 177 MB), so they are a *recipe*:
for the i-th state_dict key, `torch.manual_seed(SEED0 + i)` then `torch.randn(shape) * scale + offset`
(or `torch.rand`). libtorch's CPU generator is the same in tch, so the Rust test rebuilds identical
weights (it checks per-tensor sums from the JSON first).
"""
import json
import math
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, nms, roi_align
from torchvision.ops import misc as misc_nn_ops

assert torch.__version__.startswith("2.13"), torch.__version__
assert torchvision.__version__.startswith("0.28"), torchvision.__version__
torch.set_num_threads(1)
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "model")
os.makedirs(OUT, exist_ok=True)
SEED0 = 1000


def save(name, d):
    save_file({k: v.contiguous() for k, v in d.items()}, os.path.join(OUT, name))


# ----------------------------------------------------------------------------- models
def build(backbone, num_classes=91, **kw):
    if backbone == "resnet50":
        bb = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        bb = _resnet_fpn_extractor(bb, 3)
    else:
        bb = mobilenet_backbone(backbone_name="mobilenet_v2", fpn=True, returned_layers=[1, 2, 3, 4], weights=None,
                                norm_layer=misc_nn_ops.FrozenBatchNorm2d, trainable_layers=3)
    return MaskRCNN(bb, num_classes=num_classes, **kw)


def dump_keys(backbone):
    m = build(backbone)
    params = dict(m.named_parameters())
    with open(os.path.join(OUT, f"keys_{backbone}.tsv"), "w") as f:
        for k, v in m.state_dict().items():
            kind = "param" if k in params else "buffer"
            train = "train" if k in params and params[k].requires_grad else "frozen"
            f.write(f"{k}\t{list(v.shape)}\t{kind}\t{train}\n")


def recipe_for(key, shape):
    """(dist, scale, offset) of the random weight of `key`."""
    if key.endswith("running_var"):
        return "rand", 0.5, 0.75
    if key.endswith("running_mean"):
        return "randn", 0.1, 0.0
    last = key.rsplit(".", 1)[-1]
    if len(shape) == 1:
        # every 1-D tensor of backbone.body is a FrozenBatchNorm2d buffer; elsewhere conv/linear biases
        is_bn = key.startswith("backbone.body.")
        if is_bn and last == "weight":
            return "rand", 0.5, 0.25
        if key.startswith("roi_heads.box_predictor.cls_score"):
            return "randn", 1.0, 0.0
        return "randn", 0.1 if is_bn else 0.01, 0.0
    fan_in = math.prod(shape[1:])
    if key == "roi_heads.mask_predictor.conv5_mask.weight":  # [in, out, k, k]
        fan_in = shape[0] * shape[2] * shape[3] / 4
    std = math.sqrt(2.0 / fan_in)
    if key.startswith("roi_heads.box_predictor.cls_score"):
        std *= 8.0  # confident class scores: many softmax scores above box_score_thresh
    return "randn", std, 0.0


def randomize(model):
    recipe = []
    sd = model.state_dict()
    with torch.no_grad():
        for i, (k, v) in enumerate(sd.items()):
            dist, scale, offset = recipe_for(k, list(v.shape))
            torch.manual_seed(SEED0 + i)
            t = (torch.randn(v.shape) if dist == "randn" else torch.rand(v.shape)) * scale + offset
            v.copy_(t)
            recipe.append({"key": k, "shape": list(v.shape), "dist": dist, "seed": SEED0 + i, "scale": scale,
                           "offset": offset, "sum": float(t.double().sum()), "abs_sum": float(t.double().abs().sum())})
    return recipe


# ----------------------------------------------------------------------------- samplers
def first_k_sampler(self, matched_idxs):
    """BalancedPositiveNegativeSampler.__call__ with 'first k by index' instead of randperm."""
    pos_idx, neg_idx = [], []
    for m in matched_idxs:
        positive = torch.where(m >= 1)[0]
        negative = torch.where(m == 0)[0]
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
        pm = torch.zeros_like(m, dtype=torch.uint8)
        nm = torch.zeros_like(m, dtype=torch.uint8)
        pm[positive[:num_pos]] = 1
        nm[negative[:num_neg]] = 1
        pos_idx.append(pm)
        neg_idx.append(nm)
    return pos_idx, neg_idx


det_utils.BalancedPositiveNegativeSampler.__call__ = first_k_sampler


# ----------------------------------------------------------------------------- data
def make_images():
    g = torch.Generator().manual_seed(7)
    imgs = []
    for (h, w) in [(64, 80), (72, 56)]:
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        base = torch.stack([yy, xx, (yy + xx) / 2])
        imgs.append((0.6 * base + 0.4 * torch.rand(3, h, w, generator=g)).clamp(0, 1))
    return imgs


def make_targets(imgs):
    h, w = imgs[0].shape[-2:]
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    masks[0, 10:40, 8:50] = 1
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks[1] = (((yy - 40) / 18.0) ** 2 + ((xx - 55) / 20.0) ** 2 <= 1).to(torch.uint8)
    masks[2, 30:62, 2:20] = 1
    boxes = []
    for m in masks:
        ys, xs = torch.where(m > 0)
        boxes.append([xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0])
    t0 = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 3, 2]), "masks": masks}
    h2, w2 = imgs[1].shape[-2:]
    t1 = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
          "masks": torch.zeros(0, h2, w2, dtype=torch.uint8)}
    return [t0, t1]


CFG = dict(min_size=64, max_size=100, box_detections_per_img=30)
NUM_CLASSES = 5


def golden(backbone):
    torch.manual_seed(0)
    model = build(backbone, num_classes=NUM_CLASSES, **CFG)
    recipe = randomize(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    imgs = make_images()
    targets = make_targets(imgs)
    out = {f"image{i}": im for i, im in enumerate(imgs)}
    for k in ("boxes", "labels", "masks"):
        out[f"target0_{k}"] = targets[0][k]
        out[f"target1_{k}"] = targets[1][k]

    # ---- eval: batch of both images
    model.eval()
    captured = {}
    model.rpn.register_forward_hook(lambda m, i, o: captured.__setitem__("proposals", o[0]))
    with torch.no_grad():
        dets = model(imgs)
    summary = {"detections": []}
    for i, d in enumerate(dets):
        out[f"det{i}_boxes"] = d["boxes"]
        out[f"det{i}_scores"] = d["scores"]
        out[f"det{i}_labels"] = d["labels"]
        out[f"det{i}_masks"] = (d["masks"] > 0.5).to(torch.uint8)
        out[f"det{i}_mask_probs_sum"] = d["masks"].sum(dim=(1, 2, 3))
        out[f"proposals{i}"] = captured["proposals"][i]
        summary["detections"].append(int(d["boxes"].shape[0]))
    print(backbone, "detections per image", summary["detections"],
          "top scores", [round(float(d["scores"][0]), 3) if len(d["scores"]) else None for d in dets])

    # ---- train: losses with deterministic samplers, fresh model (poolers cache their scales)
    losses_all = {}
    for tag, batch in (("pair", [0, 1]), ("single", [0])):
        m2 = build(backbone, num_classes=NUM_CLASSES, **CFG)
        m2.load_state_dict(sd)
        m2.train()
        losses = m2([imgs[i] for i in batch], [targets[i] for i in batch])
        losses_all[tag] = {k: float(v) for k, v in losses.items()}
        total = sum(losses.values())
        total.backward()
        params = dict(m2.named_parameters())
        for name in ("rpn.head.cls_logits.weight", "roi_heads.box_predictor.cls_score.weight",
                     "roi_heads.mask_predictor.mask_fcn_logits.weight", "backbone.fpn.layer_blocks.0.0.bias",
                     "backbone.fpn.inner_blocks.3.0.bias"):
            out[f"grad_{tag}_{name}"] = params[name].grad.clone()
    print(backbone, "losses", losses_all)
    meta = {"backbone": backbone, "num_classes": NUM_CLASSES, "config": CFG, "recipe": recipe,
            "losses": losses_all, "summary": summary}
    with open(os.path.join(OUT, f"golden_{backbone}.json"), "w") as f:
        json.dump(meta, f, indent=0)
    save(f"golden_{backbone}.safetensors", out)


# ----------------------------------------------------------------------------- ops
def ops():
    torch.manual_seed(0)
    d = {}
    # RoIAlign forward + input gradient
    inp = torch.randn(2, 4, 12, 16)
    K = 40
    cx = torch.rand(K) * 32; cy = torch.rand(K) * 24
    w = torch.exp(torch.rand(K) * math.log(40.0)); h = torch.exp(torch.rand(K) * math.log(30.0))
    w[:4] *= 3; h[:4] *= 3; w[4:8] = torch.rand(4) * 0.8
    rois = torch.stack([torch.randint(0, 2, (K,)).float(), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    d["ra_input"] = inp; d["ra_rois"] = rois
    for aligned in (False, True):
        for sr in (2, -1):
            for (oh, ow) in ((7, 7), (5, 3)):
                x = inp.clone().requires_grad_(True)
                y = roi_align(x, rois, (oh, ow), 0.5, sr, aligned)
                go = torch.randn_like(y)
                (y * go).sum().backward()
                tag = f"a{int(aligned)}_sr{sr}_{oh}x{ow}"
                d[f"ra_out_{tag}"] = y.detach(); d[f"ra_gradout_{tag}"] = go; d[f"ra_gradin_{tag}"] = x.grad
    # project_masks_on_boxes (mask targets, adaptive sampling)
    gm = torch.zeros(3, 40, 50, dtype=torch.uint8)
    gm[0, 5:30, 4:40] = 1; gm[1, 20:38, 10:48] = 1; gm[2] = (torch.rand(40, 50) > 0.5).to(torch.uint8)
    pb = torch.rand(20, 4) * torch.tensor([50.0, 40.0, 50.0, 40.0])
    pb = torch.stack([torch.minimum(pb[:, 0], pb[:, 2]), torch.minimum(pb[:, 1], pb[:, 3]),
                      torch.maximum(pb[:, 0], pb[:, 2]) + 0.5, torch.maximum(pb[:, 1], pb[:, 3]) + 0.5], 1)
    pb[0] = torch.tensor([-3.0, -2.0, 60.0, 45.0])
    pidx = torch.randint(0, 3, (20,))
    d["pm_gt_masks"] = gm; d["pm_boxes"] = pb; d["pm_idx"] = pidx
    d["pm_out"] = project_masks_on_boxes(gm, pb, pidx, 28)
    # MultiScaleRoIAlign incl. level boundaries
    feats = {str(i): torch.randn(2, 3, 64 >> i, 80 >> i) for i in range(4)}
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    sizes = torch.tensor([10.0, 111.9, 112.0, 223.9, 224.0, 448.0, 30.0, 60.0])
    bx = torch.stack([torch.full_like(sizes, 5.0), torch.full_like(sizes, 3.0), 5.0 + sizes, 3.0 + sizes], 1)
    bx2 = bx.flip(0) * 0.5
    d.update({f"ms_feat{i}": feats[str(i)] for i in range(4)})
    d["ms_boxes0"] = bx; d["ms_boxes1"] = bx2
    d["ms_out"] = pooler(feats, [bx, bx2], [(250, 320), (256, 300)])
    # NMS / batched NMS (trick path <= 1000 boxes, vanilla path above), with exact score ties
    def rand_boxes(n, W=200.0, H=150.0):
        x1 = torch.rand(n) * W; y1 = torch.rand(n) * H
        bw = torch.rand(n) * 60 + 1; bh = torch.rand(n) * 60 + 1
        return torch.stack([x1, y1, x1 + bw, y1 + bh], 1)
    for n, ncls in ((300, 4), (1500, 5)):
        b = rand_boxes(n); s = torch.rand(n); s[10:20] = s[0]; c = torch.randint(0, ncls, (n,))
        d[f"nms_boxes_{n}"] = b; d[f"nms_scores_{n}"] = s; d[f"nms_idxs_{n}"] = c
        d[f"nms_keep_{n}"] = nms(b, s, 0.5)
        d[f"bnms_keep_{n}"] = batched_nms(b, s, c, 0.5)
    # paste_masks_in_image
    pmk = torch.rand(20, 1, 28, 28)
    pbx = rand_boxes(20, 60, 50); pbx[:3, :2] = 0.0; pbx[3:6, 2] = 60.0; pbx[3:6, 3] = 50.0
    pbx[6:9, 2:] = pbx[6:9, :2] + 0.3
    d["paste_masks"] = pmk; d["paste_boxes"] = pbx
    d["paste_out"] = paste_masks_in_image(pmk, pbx, (50, 60), padding=1)
    # anchors (default sizes/ratios) for a padded 96x128 batch
    ag = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    il = ImageList(torch.zeros(1, 3, 96, 128), [(90, 120)])
    fm = [torch.zeros(1, 1, 96 // s, 128 // s) for s in (4, 8, 16, 32)] + [torch.zeros(1, 1, 2, 2)]
    d["anchors"] = ag(il, fm)[0]
    # box coder, IoU, matcher
    props = rand_boxes(50); gtb = props + torch.randn(50, 4) * 3
    gtb = torch.stack([torch.minimum(gtb[:, 0], gtb[:, 2] - 1), torch.minimum(gtb[:, 1], gtb[:, 3] - 1), gtb[:, 2], gtb[:, 3]], 1)
    coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
    d["bc_props"] = props; d["bc_gt"] = gtb
    d["bc_encoded"] = coder.encode_single(gtb, props)
    rel = torch.randn(50, 12) * 3; rel[:5, 2] = 40.0; rel[5:10, 7] = 30.0
    d["bc_rel"] = rel; d["bc_decoded"] = coder.decode_single(rel, props)
    b1 = rand_boxes(6); b2 = rand_boxes(40); b2[0] = b1[0]; b2[1] = b1[0]
    iou = box_iou(b1, b2)
    d["iou_b1"] = b1; d["iou_b2"] = b2; d["iou"] = iou
    d["match_lq"] = det_utils.Matcher(0.7, 0.3, True)(iou)
    d["match_noq"] = det_utils.Matcher(0.5, 0.5, False)(iou)
    # transform: sizes, values, batch padding
    tr = GeneralizedRCNNTransform(64, 100, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tr.eval()
    ims = [torch.rand(3, 37, 53), torch.rand(3, 64, 80), torch.rand(3, 200, 90)]
    il, _ = tr(ims)
    for i, im in enumerate(ims):
        d[f"tf_image{i}"] = im
    d["tf_batch"] = il.tensors
    d["tf_sizes"] = torch.tensor(il.image_sizes)
    save("ops.safetensors", d)


if __name__ == "__main__":
    dump_keys("resnet50")
    dump_keys("mobilenet_v2")
    ops()
    for bb in ("resnet50", "mobilenet_v2"):
        golden(bb)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")
