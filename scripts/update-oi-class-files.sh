#!/usr/bin/env bash
# Downloads the three Open Images class files into src/openimages/builtin/ (embedded in the
# binary), refusing any whose size or MD5 differs from the official values (docs/openimages.md
# §2.1). Needs internet access to storage.googleapis.com.
set -euo pipefail
cd "$(dirname "$0")/../src/openimages/builtin"
base="${MASKSTUDIO_OI_GCS_BASE:-https://storage.googleapis.com/openimages}"
fetch() { # remote-path local-name bytes md5
    local tmp
    tmp="$(mktemp "./.$2.XXXXXX")"
    curl -fsSL --retry 3 -o "$tmp" "$base/$1"
    local size md5
    size="$(stat -c %s "$tmp")"
    md5="$(md5sum "$tmp" | cut -d' ' -f1)"
    if [[ "$size" != "$3" || "$md5" != "$4" ]]; then
        rm -f "$tmp"
        echo "$1: got $size bytes, md5 $md5; expected $3 bytes, md5 $4" >&2
        return 1
    fi
    mv "$tmp" "$2"
    echo "$2: $size bytes, md5 $md5, sha256 $(sha256sum "$2" | cut -d' ' -f1)"
}
fetch v5/class-descriptions-boxable.csv class-descriptions-boxable.csv 12011 9846fd22fd2e68b45e3f3810a4c2a32a
fetch v5/classes-segmentation.txt classes-segmentation.txt 3352 f53e4734bb4132b256e8eb408f761108
fetch 2018_04/bbox_labels_600_hierarchy.json bbox_labels_600_hierarchy.json 89038 5b66e7516ed4a83632f0eb53ba85cbb0
