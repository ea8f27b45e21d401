#!/usr/bin/env bash
# Measures Mask Studio's start time to a visible window under Xvfb: from exec until
# `xdotool search --onlyvisible --name "Mask Studio"` finds the mapped window.
#
#   packaging/measure-startup.sh [--cold] [--runs N] BINARY [ARGS…]
#
# --cold evicts the binary and the libraries beside it (../lib) from the page cache before each
# run (dd iflag=nocache, only those files), as after a reboot; otherwise the files are cached.
# Runs with an empty environment (PATH, a fresh HOME), like a desktop launcher. Needs Xvfb, xdotool.
set -euo pipefail
cold=0 runs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --cold) cold=1; shift ;;
    --runs) runs=${2:?}; shift 2 ;;
    *) break ;;
  esac
done
binary=$(readlink -f "${1:?usage: measure-startup.sh [--cold] [--runs N] BINARY [ARGS…]}")
shift
for tool in Xvfb xdotool; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install xvfb xdotool)" >&2; exit 1; }
done
work=$(mktemp -d)
# -displayfd: the server picks a free display number and writes it (no clash with other Xvfbs).
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$work/display" >/dev/null 2>&1 &
xvfb=$!
cleanup() {
  kill "$xvfb" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 200); do [ -s "$work/display" ] && break; sleep 0.05; done
[ -s "$work/display" ] || { echo "Xvfb did not start" >&2; exit 1; }
display=:$(head -n1 "$work/display")

now_ms() { echo $(($(date +%s%N) / 1000000)); }
times=()
for run in $(seq "$runs"); do
  if [ "$cold" = 1 ]; then
    for f in "$binary" "$(dirname "$binary")"/../lib/*; do
      [ -f "$f" ] && dd if="$f" iflag=nocache count=0 status=none
    done
  fi
  mkdir -p "$work/home$run"
  start=$(now_ms)
  env -i PATH=/usr/bin:/bin HOME="$work/home$run" DISPLAY="$display" "$binary" "$@" \
    >"$work/log$run" 2>&1 &
  app=$!
  shown=""
  while kill -0 "$app" 2>/dev/null; do
    if DISPLAY=$display xdotool search --onlyvisible --name "Mask Studio" >/dev/null 2>&1; then
      shown=$(($(now_ms) - start))
      break
    fi
    sleep 0.01
  done
  kill "$app" 2>/dev/null || true
  wait "$app" 2>/dev/null || true
  [ -n "$shown" ] || { echo "run $run: no window (log: $(tail -n3 "$work/log$run"))" >&2; exit 1; }
  echo "run $run: window visible after $shown ms"
  times+=("$shown")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  printf "median %d ms, min %d ms, max %d ms over %d runs\n", a[int((NR + 1) / 2)], a[1], a[NR], NR }'
