#!/usr/bin/env bash
# Installs the Debian packages the studio window and its headless tests need at run time, and the
# few tools packaging/build.sh uses (building the app needs none: X11/Wayland/Vulkan/GL/fontconfig
# are dlopened; see shared docs/gui.md).
# Idempotent: only missing packages are installed.
set -euo pipefail
packages=(
  libx11-6 libxkbcommon-x11-0 libxcursor1 libxi6 libxrandr2 libfontconfig1 libdbus-1-3
  libegl1 libgl1 libgl1-mesa-dri libvulkan1 mesa-vulkan-drivers   # wgpu: Vulkan (lavapipe) or GL
  xvfb xauth                                                       # headless window tests
  patchelf librsvg2-bin binutils                                   # packaging/build.sh (and its test)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "maskstudio: installing system packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
