#!/usr/bin/env bash
# Installs Mask Studio for the current user, no root needed:
#   ~/.local/lib/maskstudio/          the app (binary, libraries, uninstall.sh, install-manifest.txt)
#   ~/.local/bin/maskstudio           a link to the binary (the command line)
#   ~/.local/share/applications/      the menu entry
#   ~/.local/share/icons/hicolor/     the icon, 16…256 px and scalable
#   ~/.local/share/mime/packages/     the project file type (project.sqlite opens in Mask Studio)
# ($XDG_DATA_HOME replaces ~/.local/share.) Every file and folder it creates is listed in
# install-manifest.txt; uninstall.sh removes exactly those. An earlier install is replaced.
#
#   ./install.sh [--prefix DIR]      (DIR instead of ~/.local, e.g. for a test)
set -euo pipefail

die() {
  echo "install.sh: $*" >&2
  exit 1
}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=$HOME/.local
share=${XDG_DATA_HOME:-$HOME/.local/share}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix)
      prefix=${2:?--prefix needs a folder}
      share=$prefix/share
      shift 2
      ;;
    -h | --help) sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -x "$src/bin/maskstudio" ] || die "run me from the unpacked package (no bin/maskstudio beside me)"
case "$prefix" in /*) ;; *) prefix=$PWD/$prefix ;; esac
case "$share" in /*) ;; *) share=$PWD/$share ;; esac
app=$prefix/lib/maskstudio
bin=$prefix/bin
case "$app$share" in *[\"\`\$\\\|\&]*) die "paths with \" \` \$ \\ | or & are not supported: $app" ;; esac

# A previous install (this or another version) is removed first, with its own manifest.
# Folders it created that stay (they hold generated caches) are still ours afterwards.
old_dirs=()
if [ -f "$app/install-manifest.txt" ] && [ -x "$app/uninstall.sh" ]; then
  mapfile -t old_dirs < <(grep '^d ' "$app/install-manifest.txt" || true)
  "$app/uninstall.sh" --quiet --no-refresh
fi
if [ -e "$bin/maskstudio" ] && [ "$(readlink "$bin/maskstudio" || true)" != "$app/bin/maskstudio" ]; then
  die "$bin/maskstudio exists and is not from a Mask Studio install; move it away first"
fi

manifest=()
# mkdir -p that records each folder it creates.
make_dirs() {
  local dir=$1 missing=()
  while [ ! -d "$dir" ]; do
    missing=("$dir" "${missing[@]}")
    dir=$(dirname "$dir")
  done
  for dir in "${missing[@]}"; do
    mkdir "$dir"
    manifest+=("d $dir")
  done
}
put() { # SRC DEST MODE
  make_dirs "$(dirname "$2")"
  install -m "$3" "$1" "$2"
  manifest+=("f $2")
}

# The app: everything in the package except the installer itself.
make_dirs "$app"
while IFS= read -r -d '' file; do
  rel=${file#"$src"/}
  [ "$rel" = install.sh ] && continue
  mode=0644
  [ -x "$file" ] && mode=0755
  put "$file" "$app/$rel" "$mode"
done < <(find "$src" -type f -print0 | sort -z)

# The command line.
make_dirs "$bin"
ln -sfn "$app/bin/maskstudio" "$bin/maskstudio"
manifest+=("l $bin/maskstudio")

# Menu entry (absolute Exec: ~/.local/bin is not on every desktop session's PATH), icons, type.
make_dirs "$share/applications"
sed "s|^Exec=.*|Exec=\"$app/bin/maskstudio-open\" %f|" "$src/share/applications/maskstudio.desktop" \
  >"$share/applications/maskstudio.desktop"
manifest+=("f $share/applications/maskstudio.desktop")
while IFS= read -r -d '' icon; do
  put "$icon" "$share/${icon#"$src"/share/}" 0644
done < <(find "$src/share/icons" -type f -print0 | sort -z)
put "$src/share/mime/packages/maskstudio.xml" "$share/mime/packages/maskstudio.xml" 0644

{
  echo "# Mask Studio install manifest: f file, l link, d folder created by install.sh"
  echo "share $share"
  printf '%s\n' "${manifest[@]}"
  for entry in "${old_dirs[@]}"; do
    [ -d "${entry:2}" ] && ! printf '%s\n' "${manifest[@]}" | grep -qxF "$entry" && echo "$entry"
  done
  echo "f $app/install-manifest.txt"
} >"$app/install-manifest.txt"

# Refresh the desktop's caches where the tools exist (they regenerate from the files above).
command -v update-mime-database >/dev/null && update-mime-database "$share/mime" >/dev/null 2>&1 || true
command -v update-desktop-database >/dev/null && update-desktop-database -q "$share/applications" || true
if [ -f "$share/icons/hicolor/icon-theme.cache" ] && command -v gtk-update-icon-cache >/dev/null; then
  gtk-update-icon-cache -q -t -f "$share/icons/hicolor" || true
fi

echo "Installed $(head -n1 "$src/BUILD-INFO" 2>/dev/null || echo "Mask Studio") in $app"
echo "Start it from the applications menu (Mask Studio) or run: $bin/maskstudio"
case ":$PATH:" in *":$bin:"*) ;; *) echo "(add $bin to PATH to type just \`maskstudio\`)" ;; esac
echo "Uninstall: $app/uninstall.sh   (your projects, settings and caches are kept)"
