#!/usr/bin/env bash
# Shared environment for Mask Studio scripts: where the per-user cache lives and which
# versions are pinned. Sourced by scripts/setup.sh, ./studio and ./test-all.
TORCH_VERSION="2.13.0"        # tch 0.26 / torch-sys 0.26 pins libtorch 2.13.0
TORCHVISION_VERSION="0.28.0"  # the torchvision release built against torch 2.13.0
MASKSTUDIO_CACHE="${MASKSTUDIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/maskstudio}"
MASKSTUDIO_VENV="$MASKSTUDIO_CACHE/torch-$TORCH_VERSION/venv"
export MASKSTUDIO_CACHE MASKSTUDIO_VENV TORCH_VERSION TORCHVISION_VERSION
