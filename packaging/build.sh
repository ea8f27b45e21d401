#!/usr/bin/env bash
# Builds a self-contained Mask Studio package for Linux x86-64:
#   maskstudio-<version>-linux-x86_64-<variant>.tar.gz
# holding the stripped binary, exactly the libtorch (and, for cuda, NVIDIA) shared libraries it
# loads, with an rpath relative to the binary ($ORIGIN/../lib), the icon in every size, a desktop
# entry, the project file type, install.sh / uninstall.sh (per user, under ~/.local) and licences.
#
#   packaging/build.sh [--variant cpu|cuda] [--profile release|dev] [--out DIR] [--binary FILE]
#                      [--keep-dir]
#
# --variant cpu   libtorch_cpu only (the binary's libtorch_cuda entry is removed; CUDA is then
#                 simply unavailable). ~180 MB download.
# --variant cuda  also libtorch_cuda and the CUDA 13 / cuDNN / NCCL libraries from the venv's
#                 nvidia-* wheels; needs an NVIDIA driver at run time, falls back to the CPU.
# --profile       which cargo profile to build (dev reuses target/debug/maskstudio: seconds
#                 instead of a long release build; the binary is larger and slower).
# --binary FILE   package this already-built binary instead of building one.
# --keep-dir      keep the unpacked package folder beside the tarball.
#
# Needs patchelf, rsvg-convert, binutils (scripts/setup-system.sh installs them) and the
# libtorch the binary was linked against (its rpath, else $LIBTORCH, else the .libtorch link).
set -euo pipefail

die() {
  echo "packaging/build.sh: $*" >&2
  exit 1
}
usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
variant=cpu profile=release out="$repo/dist" binary="" keep_dir=0
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=${2:?--variant needs cpu or cuda}; shift 2 ;;
    --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --binary) binary=${2:?--binary needs a file}; shift 2 ;;
    --keep-dir) keep_dir=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done
case "$variant" in cpu | cuda) ;; *) die "--variant must be cpu or cuda, not $variant" ;; esac
case "$profile" in release | dev) ;; *) die "--profile must be release or dev, not $profile" ;; esac
for tool in patchelf rsvg-convert readelf strip ldd tar gzip; do
  command -v "$tool" >/dev/null ||
    die "$tool is missing: run scripts/setup-system.sh (apt-get install patchelf librsvg2-bin binutils)"
done

cd "$repo"
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"

# 1. The binary.
if [ -z "$binary" ]; then
  if [ "$profile" = release ]; then
    cargo build --release --bin maskstudio
    sub=release
  else
    cargo build --bin maskstudio
    sub=debug
  fi
  target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  binary=$target_dir/$sub/maskstudio
fi
[ -x "$binary" ] || die "$binary: no such executable"

# 2. The libtorch it was linked against: its own rpath (build.rs embeds it), else $LIBTORCH.
torch_lib=""
rpath=$(readelf -d "$binary" | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p' | head -n1)
IFS=: read -r -a rpath_dirs <<<"$rpath"
for d in "${rpath_dirs[@]}"; do
  if [ -f "$d/libtorch_cpu.so" ]; then torch_lib=$(readlink -f "$d"); break; fi
done
if [ -z "$torch_lib" ]; then
  libtorch=${LIBTORCH:-$repo/.libtorch}
  case "$libtorch" in /*) ;; *) libtorch=$repo/$libtorch ;; esac
  torch_lib=$(readlink -f "$libtorch/lib" || true)
fi
[ -f "$torch_lib/libtorch_cpu.so" ] ||
  die "no libtorch found (binary rpath '$rpath', LIBTORCH '${LIBTORCH:-}'): run scripts/setup-venv.sh"
site=$(dirname "$(dirname "$torch_lib")") # …/site-packages
search_dirs=("$torch_lib")
for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && search_dirs+=("$d"); done

# Libraries every Linux desktop has (glibc, the GCC runtime, zlib) and the NVIDIA driver's own
# libcuda: never bundled.
is_system_lib() {
  [[ "$1" =~ ^(libc|libm|libdl|libpthread|librt|libutil|libresolv|libz|libstdc\+\+|libgcc_s|ld-linux-x86-64|libcuda|libnvidia-ml)\.so ]]
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
find_lib() {
  local d
  for d in "${search_dirs[@]}"; do
    if [ -f "$d/$1" ]; then
      echo "$d/$1"
      return 0
    fi
  done
  return 1
}

name=maskstudio-$version-linux-x86_64-$variant
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$out/$name
rm -rf "$stage" "$out/$name.tar.gz"
mkdir -p "$stage/bin" "$stage/lib" "$stage/share/doc/maskstudio/licenses"
started=$(date +%s)

# 3. Strip (debug info only: function names stay for panic backtraces), point the rpath into the
#    package, and for cpu drop libtorch_cuda (build.rs keeps it linked with --no-as-needed only so
#    that CUDA is available; the binary references none of its symbols).
strip --strip-debug -o "$stage/bin/maskstudio" "$binary"
patchelf --set-rpath '$ORIGIN/../lib' "$stage/bin/maskstudio"
if [ "$variant" = cpu ]; then
  patchelf --remove-needed libtorch_cuda.so "$stage/bin/maskstudio"
elif ! needed "$stage/bin/maskstudio" | grep -qx libtorch_cuda.so; then
  die "$binary does not link libtorch_cuda.so (built against a CPU-only libtorch?); use --variant cpu"
fi

# 4. The libraries: the NEEDED closure of the binary, plus (cuda) what libtorch_cuda and cuDNN
#    dlopen: the linear-algebra and NVRTC helpers, cuDNN's engine libraries, NVRTC's builtins.
queue=()
mapfile -t queue < <(needed "$stage/bin/maskstudio")
if [ "$variant" = cuda ]; then
  queue+=(libtorch_cuda_linalg.so libcaffe2_nvrtc.so)
  for d in "${search_dirs[@]}"; do
    for f in "$d"/libcudnn_*.so.* "$d"/libnvrtc-builtins.so.*; do
      [ -f "$f" ] && queue+=("$(basename "$f")")
    done
  done
fi
declare -A seen=()
bundled=()
while [ ${#queue[@]} -gt 0 ]; do
  lib=${queue[0]}
  queue=("${queue[@]:1}")
  [ -n "${seen[$lib]:-}" ] && continue
  seen[$lib]=1
  is_system_lib "$lib" && continue
  src=$(find_lib "$lib") || die "$lib is needed but is neither in ${search_dirs[*]} nor a system library"
  cp -L "$src" "$stage/lib/$lib"
  chmod 0755 "$stage/lib/$lib"
  bundled+=("$src")
  # The wheel's rpaths point at ../../nvidia/…, outside the package: keep only $ORIGIN.
  lib_rpath=$(readelf -d "$stage/lib/$lib" | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p')
  if [ -n "$lib_rpath" ] && [ "$lib_rpath" != '$ORIGIN' ] && [ "$lib_rpath" != '${ORIGIN}' ]; then
    patchelf --set-rpath '$ORIGIN' "$stage/lib/$lib"
  fi
  mapfile -t more < <(needed "$stage/lib/$lib")
  queue+=("${more[@]}")
done

# Every dependency of the binary resolves inside the package or to a system library.
unresolved=$(env -u LD_LIBRARY_PATH ldd "$stage/bin/maskstudio" | grep -E 'not found' || true)
[ -z "$unresolved" ] || die "unresolved libraries: $unresolved"
while read -r resolved; do
  case "$resolved" in
    "$stage"/bin/../lib/* | /lib/* | /lib64/* | /usr/lib/* | /usr/lib64/*) ;;
    *) die "$resolved: resolved outside the package and the system library folders" ;;
  esac
done < <(env -u LD_LIBRARY_PATH ldd "$stage/bin/maskstudio" | awk '/=> \// {print $3}')

# 5. Icons, desktop entry, file type, launcher, scripts, notes.
for size in 16 32 48 64 128 256; do
  dir=$stage/share/icons/hicolor/${size}x${size}/apps
  mkdir -p "$dir"
  rsvg-convert -w "$size" -h "$size" "$repo/assets/maskstudio.svg" -o "$dir/maskstudio.png"
done
mkdir -p "$stage/share/icons/hicolor/scalable/apps" "$stage/share/applications" "$stage/share/mime/packages"
cp "$repo/assets/maskstudio.svg" "$stage/share/icons/hicolor/scalable/apps/maskstudio.svg"
cp "$here/maskstudio.desktop" "$stage/share/applications/maskstudio.desktop"
cp "$here/maskstudio-mime.xml" "$stage/share/mime/packages/maskstudio.xml"
install -m 0755 "$here/maskstudio-open" "$stage/bin/maskstudio-open"
install -m 0755 "$here/install.sh" "$stage/install.sh"
install -m 0755 "$here/uninstall.sh" "$stage/uninstall.sh"
cp "$here/README.txt" "$stage/README.txt"

# Licences of what is bundled: libtorch (BSD-3-Clause) and each NVIDIA wheel a library came from.
for f in "$site"/torch-*.dist-info/licenses/* "$site"/torch-*.dist-info/LICENSE; do
  [ -f "$f" ] || continue
  mkdir -p "$stage/share/doc/maskstudio/licenses/torch"
  cp "$f" "$stage/share/doc/maskstudio/licenses/torch/"
done
for dist in "$site"/nvidia_*.dist-info; do
  [ -f "$dist/RECORD" ] || continue
  for src in "${bundled[@]}"; do
    case "$src" in "$site"/nvidia/*) ;; *) continue ;; esac
    if grep -q "^nvidia/.*/$(basename "$src")," "$dist/RECORD"; then
      dest=$stage/share/doc/maskstudio/licenses/$(basename "$dist" .dist-info)
      mkdir -p "$dest"
      cp "$dist"/licenses/* "$dest/" 2>/dev/null || cp "$dist"/License.txt "$dest/" 2>/dev/null || true
      break
    fi
  done
done

glibc=$(objdump -T "$stage/bin/maskstudio" "$stage"/lib/*.so* 2>/dev/null |
  grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)
{
  echo "Mask Studio $version ($variant variant, $profile profile)"
  echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "libtorch: $(basename "$site"/torch-*.dist-info .dist-info) from $torch_lib"
  echo "needs: Linux x86-64 with ${glibc/_/ } or newer, X11 or Wayland with Vulkan or OpenGL"
  [ "$variant" = cpu ] || echo "CUDA: needs an NVIDIA driver for CUDA 13 (libcuda.so.1); without one it runs on the CPU"
  echo "bundled libraries:"
  for f in "$stage"/lib/*; do echo "  $(basename "$f")"; done
} >"$stage/BUILD-INFO"

# 6. The tarball (sorted, owner-less, fixed mtime: the same inputs give the same archive).
unpacked=$(du -sb "$stage" | cut -f1)
mtime=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
gz=(gzip -n -6)
command -v pigz >/dev/null && gz=(pigz -n -6)
tar -C "$out" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" -cf - "$name" |
  "${gz[@]}" >"$out/$name.tar.gz.part"
mv "$out/$name.tar.gz.part" "$out/$name.tar.gz"
compressed=$(stat -c %s "$out/$name.tar.gz")
[ "$keep_dir" = 1 ] || rm -rf "$stage"
mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1e6 }'; }
echo "packaged $out/$name.tar.gz: $(mb "$compressed") compressed, $(mb "$unpacked") unpacked," \
  "${#bundled[@]} libraries, $(($(date +%s) - started)) s"
