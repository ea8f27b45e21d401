#!/usr/bin/env bash
# Screenshots of each studio tab, taken from the real window under Xvfb (software rendering),
# with coco128-seg imported into a fresh project: docs/screenshots/<tab>.png, plus welcome.png
# (no project: the first run). Without network access the Classes tab shows its offline state.
#
#   scripts/screenshots.sh [DATASET]      # default ../shared/data/coco128-seg
#
# Needs xvfb (scripts/setup-system.sh) and imagemagick's `import` (apt-get install imagemagick).
# SHOT_WAIT (seconds, default 8) is how long each window runs before its screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset="${1:-../shared/data/coco128-seg}"
out=docs/screenshots
wait_s="${SHOT_WAIT:-8}"
for tool in Xvfb import; do
  command -v "$tool" >/dev/null || {
    echo "screenshots: $tool is missing (xvfb: scripts/setup-system.sh; import: apt-get install imagemagick)" >&2
    exit 1
  }
done
[ -d "$dataset" ] || { echo "screenshots: dataset $dataset not found" >&2; exit 1; }

# MASKSTUDIO_BIN: use this binary instead of building one.
bin="${MASKSTUDIO_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --bin maskstudio
  bin="${CARGO_TARGET_DIR:-target}/debug/maskstudio"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/maskstudio-shots.XXXXXX")"
xvfb_pid=""
app_pid=""
cleanup() {
  [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

project="$work/coco128-seg"
"$bin" import --project "$project" "$dataset"
# A short CPU training run so the Train tab lists a run with its metrics (SHOT_TRAIN_STEPS=0 skips).
steps="${SHOT_TRAIN_STEPS:-6}"
if [ "$steps" -gt 0 ]; then
  "$bin" train --project "$project" --runs-dir "$project/runs" --epochs 1 --max-iters "$steps" \
    --image-size 192 --batch-size 2 --device cpu
fi

# A private settings folder (recent list, theme) and runtime dir for this run only.
export MASKSTUDIO_CONFIG="$work/config"
export XDG_RUNTIME_DIR="$work/xdg"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

display=":$(( 90 + RANDOM % 100 ))"
Xvfb "$display" -screen 0 1200x800x24 -nolisten tcp >/dev/null 2>&1 &
xvfb_pid=$!
sleep 1

mkdir -p "$out"
# welcome: the first run, no project (what a new user sees first); the others with the project.
for tab in welcome classes download review train predict; do
  if [ "$tab" = welcome ]; then
    DISPLAY="$display" "$bin" gui >"$work/$tab.log" 2>&1 &
  else
    DISPLAY="$display" "$bin" gui --project "$project" --tab "$tab" >"$work/$tab.log" 2>&1 &
  fi
  app_pid=$!
  sleep "$wait_s"
  DISPLAY="$display" import -window root "$work/$tab.png"
  # 256 colours keep the PNGs small enough to commit.
  convert "$work/$tab.png" -colors 256 "PNG8:$out/$tab.png"
  kill "$app_pid" 2>/dev/null || true
  wait "$app_pid" 2>/dev/null || true
  app_pid=""
  echo "screenshots: $out/$tab.png"
done
