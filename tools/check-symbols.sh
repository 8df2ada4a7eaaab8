#!/bin/sh
# check-symbols.sh: the library exports only its API. Every symbol that an
# object file of the library defines as GLOBAL (or WEAK) with DEFAULT
# visibility must start with dsv_: the library is compiled with
# -fvisibility=hidden and exports what include/ marks DSV_API, so a name
# without the prefix (a helper someone forgot to make static, a server-only
# srv_* function) would otherwise leak into every program that links it.
# Usage: tools/check-symbols.sh OBJECT...   (run by `make test` on the
# library's objects). Prints each offender and exits 1 if there is one.
set -eu
[ "$#" -gt 0 ] || { echo "usage: $0 OBJECT..." >&2; exit 2; }
command -v readelf >/dev/null || { echo "check-symbols: readelf not found (binutils)" >&2; exit 2; }
bad=0
n=0
for o in "$@"; do
    [ -f "$o" ] || { echo "check-symbols: $o: no such object" >&2; exit 2; }
    # readelf -sW columns: Num Value Size Type Bind Vis Ndx Name
    out=$(readelf -sW "$o" | awk '($5 == "GLOBAL" || $5 == "WEAK") && $6 == "DEFAULT" && $7 != "UND" { print $8 }')
    for s in $out; do
        n=$((n + 1))
        case "$s" in
        dsv_*) ;;
        *) echo "check-symbols: $o exports '$s' (not dsv_; make it static or leave it without DSV_API)"; bad=1 ;;
        esac
    done
done
[ "$bad" -eq 0 ] && echo "check-symbols: ok ($n exported symbols in $# objects, all dsv_)"
exit "$bad"
