#!/bin/sh
# check-layers.sh: the library's folders are layers, bottom up
#   base kernels format model text gen dist server train
# and a file may include only headers of its own layer or of layers below it
# (and the public headers in include/). Prints every include that reaches up
# and exits 1 if there is one. Run by `make check-layers` (part of `make test`).
set -eu
cd "$(dirname "$0")/.."
LAYERS="base kernels format model text gen dist server train"
rank() {
    i=0
    for l in $LAYERS; do
        [ "$l" = "$1" ] && { echo $i; return; }
        i=$((i + 1))
    done
    echo -1
}
bad=0
for f in src/*/*.c src/*/*.h; do
    dir=$(basename "$(dirname "$f")")
    me=$(rank "$dir")
    if [ "$me" -lt 0 ]; then
        echo "check-layers: $f: folder '$dir' is not a layer ($LAYERS)"
        bad=1
        continue
    fi
    # Includes that name a folder: "layer/header.h".
    for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([a-z0-9_]*\)\/[^"]*".*/\1/p' "$f" | sort -u); do
        them=$(rank "$inc")
        if [ "$them" -lt 0 ]; then
            echo "check-layers: $f includes from '$inc/', which is not a layer"
            bad=1
        elif [ "$them" -gt "$me" ]; then
            echo "check-layers: $f ($dir) includes $inc/, a higher layer"
            bad=1
        fi
    done
done
[ "$bad" -eq 0 ] && echo "check-layers: ok (src/: $LAYERS)"
exit "$bad"
