#!/bin/sh
# check-cycles.sh: no two files of the library depend on each other in a
# loop. Two graphs over src/: object A -> object B when A uses a symbol B
# defines (from `nm` of the objects in BUILD), and file A -> file B when A
# #includes B. Prints the files of each loop (a strongly connected part of
# either graph) with the edges inside it, and exits 1 if there is one. Run
# by `make check-cycles` (part of `make test`) on the library's objects.
#   usage: tools/check-cycles.sh [OBJECT.o ...]   (default: build/src/*/*.o)
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Symbol edges: "user definer" per line.
if [ $# -gt 0 ]; then objs="$*"; else objs=$(ls build/src/*/*.o 2>/dev/null || true); fi
[ -n "$objs" ] || { echo "check-cycles: no objects (build first)"; exit 1; }
for o in $objs; do
    f=src/${o#*src/}
    nm -g --defined-only "$o" | awk -v f="$f" 'NF >= 3 { print "D", $3, f }'
    nm -u "$o" | awk -v f="$f" '{ print "U", $NF, f }'
done > "$tmp/syms"
awk '$1 == "D" { def[$2] = $3 } $1 == "U" { use[++n] = $3 " " $2 }
     END { for (i = 1; i <= n; i++) { split(use[i], u, " "); if ((u[2] in def) && def[u[2]] != u[1]) print u[1], def[u[2]] } }' \
    "$tmp/syms" | sort -u > "$tmp/calls"

# Include edges: quoted includes, resolved against the file's folder, then src/.
for f in src/*/*.c src/*/*.h; do
    d=$(dirname "$f")
    sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | while read -r inc; do
        if [ -f "$d/$inc" ]; then echo "$f $d/$inc"; elif [ -f "src/$inc" ]; then echo "$f src/$inc"; fi
    done
done | sort -u > "$tmp/includes"

# Strongly connected parts by transitive closure (a few dozen files).
cycles() {
    awk -v what="$1" '
    { if (!($1 in id)) { id[$1] = ++n; name[n] = $1 }
      if (!($2 in id)) { id[$2] = ++n; name[n] = $2 }
      r[id[$1], id[$2]] = 1; e[++m] = $1 " -> " $2; ea[m] = id[$1]; eb[m] = id[$2] }
    END {
      for (k = 1; k <= n; k++) for (i = 1; i <= n; i++) if ((i, k) in r) for (j = 1; j <= n; j++) if ((k, j) in r) r[i, j] = 1
      bad = 0
      for (i = 1; i <= n; i++) {
        if (done[i] || !((i, i) in r)) continue
        line = ""
        for (j = 1; j <= n; j++) if ((i, j) in r && (j, i) in r) { done[j] = 1; grp[j] = i; line = line " " name[j] }
        print "check-cycles: " what " loop:" line
        for (x = 1; x <= m; x++) if (grp[ea[x]] == i && grp[eb[x]] == i) print "    " e[x]
        bad = 1
      }
      exit bad }' "$2"
}
st=0
cycles "call" "$tmp/calls" || st=1
cycles "include" "$tmp/includes" || st=1
[ "$st" -eq 0 ] && echo "check-cycles: ok ($(wc -l < "$tmp/calls") call and $(wc -l < "$tmp/includes") include edges between files of src/, no loop)"
exit "$st"
