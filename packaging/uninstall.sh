#!/usr/bin/env bash
# Removes what install.sh put, exactly (the files, links and folders in install-manifest.txt),
# then refreshes the desktop's file-type and menu caches. Projects, settings
# ($XDG_CONFIG_HOME/maskstudio), the cache (~/.cache/maskstudio: weights, Open Images index) and
# the sample project are user data and stay.
#
#   uninstall.sh [--prefix DIR]     (run from the installed app folder, or from the unpacked
#                                    package to remove the install under DIR, default ~/.local)
set -euo pipefail

die() {
  echo "uninstall.sh: $*" >&2
  exit 1
}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=$HOME/.local quiet=0 refresh=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --no-refresh) refresh=0; shift ;;
    -h | --help) sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
manifest=$here/install-manifest.txt
[ -f "$manifest" ] || manifest=$prefix/lib/maskstudio/install-manifest.txt
[ -f "$manifest" ] || die "no Mask Studio install found (no $manifest)"

share=$(sed -n 's/^share //p' "$manifest")
mapfile -t entries < <(grep -E '^[fld] ' "$manifest")
[ ${#entries[@]} -gt 0 ] || die "$manifest lists nothing"

# Files and links first (only if they still are a file / a link), then folders, deepest first,
# and only when empty: anything the user put there keeps its folder.
for entry in "${entries[@]}"; do
  path=${entry:2}
  case "${entry:0:1}" in
    f) [ -f "$path" ] && [ ! -L "$path" ] && rm -f "$path" ;;
    l) [ -L "$path" ] && rm -f "$path" ;;
  esac
done
created() { printf '%s\n' "${entries[@]}" | grep -qxF "d $1"; }

if [ "$refresh" = 1 ] && [ -n "$share" ]; then
  # The MIME database under share/mime is generated from share/mime/packages; when we created
  # that folder and no other package is left in it, the generated files are ours too.
  if created "$share/mime" && [ -z "$(ls -A "$share/mime/packages" 2>/dev/null)" ]; then
    rm -rf "$share/mime"
  elif command -v update-mime-database >/dev/null && [ -d "$share/mime" ]; then
    update-mime-database "$share/mime" >/dev/null 2>&1 || true
  fi
  if created "$share/applications" && ! ls "$share/applications"/*.desktop >/dev/null 2>&1; then
    rm -f "$share/applications/mimeinfo.cache"
  elif command -v update-desktop-database >/dev/null && [ -d "$share/applications" ]; then
    update-desktop-database -q "$share/applications" || true
  fi
  if [ -f "$share/icons/hicolor/icon-theme.cache" ] && command -v gtk-update-icon-cache >/dev/null; then
    gtk-update-icon-cache -q -t -f "$share/icons/hicolor" || true
  fi
fi

# Reverse name order puts every folder before its parent.
while IFS= read -r dir; do
  [ -d "$dir" ] && rmdir "$dir" 2>/dev/null || true
done < <(printf '%s\n' "${entries[@]}" | sed -n 's/^d //p' | sort -r)
[ "$quiet" = 1 ] || echo "Mask Studio removed (projects, settings and caches were kept)."
