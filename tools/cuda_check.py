"""CUDA check on a lent GPU machine (run by hand through the device tool, never in CI).

The device machine has torch 2.11 + torchvision 0.26 and no Rust toolchain, and libtorch 2.13
with its CUDA libraries is far over what can be carried there, so our Rust binary cannot run on
it; this script measures the torchvision reference with the same model shapes we implement
(MobileNetV2-FPN as `mobilenet_backbone("mobilenet_v2", fpn=True, returned_layers=[1,2,3,4])`,
and ResNet-50-FPN), a few training steps and eval images at 384 px, CPU vs CUDA.

    python3 tools/cuda_check.py [steps]
"""
import sys
import time

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone
from torchvision.models import resnet50
from torchvision.ops import misc as misc_nn_ops

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SIZE = 384


def build(backbone):
    if backbone == "resnet50":
        # Trainable BatchNorm: from random weights a FrozenBatchNorm2d ResNet-50 diverges to NaN at
        # once (no proposals survive, which would make the timing meaningless).
        bb = _resnet_fpn_extractor(resnet50(weights=None), 3)
    else:
        bb = mobilenet_backbone(backbone_name="mobilenet_v2", fpn=True, returned_layers=[1, 2, 3, 4],
                                weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d, trainable_layers=3)
    return MaskRCNN(bb, num_classes=3, min_size=SIZE, max_size=SIZE)


def batch(device, n=2):
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, SIZE, SIZE, generator=g).to(device))
        boxes = torch.tensor([[20.0, 30.0, 200.0, 220.0], [150.0, 100.0, 350.0, 300.0], [50, 250, 120, 370]])
        masks = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2, 1]).to(device),
                        "masks": masks.to(device)})
    return images, targets


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(backbone, device):
    torch.manual_seed(0)
    model = build(backbone).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    images, targets = batch(device)
    model.train()
    losses = []
    for step in range(STEPS + 2):  # 2 warm-up steps
        if step == 2:
            sync(device)
            t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    sync(device)
    train_s = (time.perf_counter() - t0) / STEPS
    model.eval()
    with torch.no_grad():
        model(images[:1])
        sync(device)
        t0 = time.perf_counter()
        for _ in range(STEPS):
            model(images[:1])
        sync(device)
    eval_s = (time.perf_counter() - t0) / STEPS
    return train_s, eval_s, losses


def main():
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}, "
          f"cpu threads {torch.get_num_threads()}")
    rows = []
    for backbone in ["mobilenet_v2", "resnet50"]:
        for device in ["cpu", "cuda"]:
            train_s, eval_s, losses = measure(backbone, device)
            rows.append((backbone, device, train_s, eval_s))
            print(f"{backbone:13} {device:5} train step (2 imgs) {train_s*1000:8.1f} ms   eval (1 img) "
                  f"{eval_s*1000:7.1f} ms   loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    for backbone in ["mobilenet_v2", "resnet50"]:
        cpu = next(r for r in rows if r[0] == backbone and r[1] == "cpu")
        gpu = next(r for r in rows if r[0] == backbone and r[1] == "cuda")
        print(f"{backbone:13} cuda speed-up: train x{cpu[2]/gpu[2]:.1f}, eval x{cpu[3]/gpu[3]:.1f}")


if __name__ == "__main__":
    main()
