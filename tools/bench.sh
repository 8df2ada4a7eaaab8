#!/usr/bin/env bash
# bench.sh: the standard benchmark set behind `make bench`.
#
#   1. bench-small (bf16 and fp8): depths 0, 4096, 16384, 65536, sparse
#      attention, prefill and decode; fp8 also decodes with dense attention
#      for the sparse-vs-dense curve.
#   2. bench-v32attn (the real V3.2 attention, 2 layers, a small MoE), fp8:
#      depths 4096 and 131072, sparse and dense alternating in one process.
#
# Models are synthesized once into $BUILD/bench-models (outside git) and
# reused while their config, dtype, seed and the synthesizer are unchanged.
# Results: $BUILD/bench/results.jsonl (one JSON object per measurement, as
# `dsv32 bench --json` prints them), $BUILD/bench/bench.log (the tables as
# they ran), docs/bench.md (markdown tables and the issue's targets) and
# docs/bench-decode.png (decode tok/s against depth, drawn by gnuplot, which
# is installed from Debian's gnuplot-nox when missing).
#
# With LLAMA_BENCH=/path/to/llama-bench and one or more GGUF files of the
# bench-small shape (LLAMA_GGUF_BF16, LLAMA_GGUF_Q8_0, LLAMA_GGUF_Q4_K_M),
# it also times llama.cpp against dsv32: llama-bench and `dsv32 bench` on
# the very same GGUF file, and dsv32 on its own safetensors of the same shape
# (bf16 beside BF16, fp8 beside Q8_0), with the same threads, depths and
# prefill/decode token counts, the engines alternated LLAMA_REPS times (the
# order reversed every other round, so drift in the machine's load falls on
# both). llama-bench's JSON lines (-o jsonl) are read with awk. The
# comparison's own section of docs/bench.md gives both engines' figures, the
# ratio, the machine, the llama.cpp commit and the commands; BENCH_STANDARD=0
# runs only the comparison (the standard section of docs/bench.md is then
# kept as it was, and the other way round without LLAMA_BENCH). Variables:
#   LLAMA_DEPTHS (0,4096)  LLAMA_PREFILL (512)  LLAMA_DECODE (32)
#   LLAMA_REPS (2)  LLAMA_FILL (random: how dsv32 reaches a depth; llama-bench
#   always prefills it, untimed)  LLAMA_ARGS (more llama-bench options)
# llama-bench prefills every depth for real, once per test and round: depth
# 16384 costs minutes per file, so it is not among the defaults. The defaults
# take about 15 minutes for three files on 2 idle cores, e.g.
#   make bench LLAMA_BENCH=$PEERS/llama.cpp/build/bin/llama-bench \
#       LLAMA_GGUF_BF16=bs-bf16.gguf LLAMA_GGUF_Q8_0=bs-q8_0.gguf LLAMA_GGUF_Q4_K_M=bs-q4_k_m.gguf
# (shared/tools/peers/ builds llama.cpp and writes such files: build-llamacpp.sh,
# make_gguf.py, then llama-quantize for Q8_0 and Q4_K_M).
#
# Depth is reached with random cache contents by default (decode timing is
# real either way): real prefill to 65536 tokens takes minutes per model
# even with the AMX kernels, and hours with the scalar reference ones. With
# the AMX kernels on 2 cores the whole set takes about 3 minutes; forcing the
# scalar kernels (DSV32_ISA=generic), lower the token counts, e.g.
#   DSV32_ISA=generic make bench BENCH_PREFILL=32 BENCH_DECODE=8 BENCH_DENSE_DECODE=4 BENCH_V32_DECODE=3
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
BIN=${DSV32_BIN:-$BUILD/dsv32}
MODELS=$BUILD/bench-models
OUT=${BENCH_OUT:-$BUILD/bench}       # results and logs
DOC=${BENCH_DOC:-docs/bench.md}     # the report (the tests point both elsewhere)
PREFILL=${BENCH_PREFILL:-512}       # tokens prefilled (timed) at each bench-small depth
DECODE=${BENCH_DECODE:-64}          # tokens decoded (timed) at each bench-small depth
DENSE_DECODE=${BENCH_DENSE_DECODE:-16}
V32_DECODE=${BENCH_V32_DECODE:-16} # dense attention at 131072: ~0.4 s a token (AMX), ~50 s (scalar)
FILL=${BENCH_FILL:-random}
THREADS=${BENCH_THREADS:-}          # empty: every online CPU
SEED=${BENCH_SEED:-0}
SMALL_DEPTHS=${BENCH_SMALL_DEPTHS:-0,4096,16384,65536}
V32_DEPTHS=${BENCH_V32_DEPTHS:-4096,131072}
STANDARD=${BENCH_STANDARD:-1}
LLAMA_BENCH=${LLAMA_BENCH:-}
CMP_DEPTHS=${LLAMA_DEPTHS:-0,4096}
CMP_PREFILL=${LLAMA_PREFILL:-512}
CMP_DECODE=${LLAMA_DECODE:-32}
CMP_REPS=${LLAMA_REPS:-2}
CMP_FILL=${LLAMA_FILL:-random}

fail() { echo "bench.sh: $*" >&2; exit 1; }
[ -x "$BIN" ] || fail "$BIN is missing (run make first)"
# Every number reaches a command line: checked here, with a message naming it.
for v in CMP_PREFILL CMP_DECODE CMP_REPS; do
    [[ ${!v} =~ ^[0-9]{1,7}$ ]] || fail "LLAMA_${v#CMP_}: expected an integer in [0, 9999999], got '${!v}'"
done
[[ $CMP_DEPTHS =~ ^[0-9]+(,[0-9]+)*$ ]] || fail "LLAMA_DEPTHS: expected comma-separated depths, got '$CMP_DEPTHS'"
[ "$CMP_REPS" -ge 1 ] || fail "LLAMA_REPS: at least 1"
[ "$CMP_PREFILL" -gt 0 ] || [ "$CMP_DECODE" -gt 0 ] || fail "LLAMA_PREFILL and LLAMA_DECODE are both 0"
case $CMP_FILL in random|real) ;; *) fail "LLAMA_FILL: expected random or real, got '$CMP_FILL'" ;; esac
case $STANDARD in 0|1) ;; *) fail "BENCH_STANDARD: expected 0 or 1, got '$STANDARD'" ;; esac
# The comparison: "LABEL FILE SAFETENSORS-MODEL" per GGUF given.
cmp_sets=()
if [ -n "$LLAMA_BENCH" ]; then
    [ -x "$LLAMA_BENCH" ] || fail "LLAMA_BENCH=$LLAMA_BENCH is not an executable"
    for set in "BF16 ${LLAMA_GGUF_BF16:-} bench-small-bf16" "Q8_0 ${LLAMA_GGUF_Q8_0:-} bench-small-fp8" \
               "Q4_K_M ${LLAMA_GGUF_Q4_K_M:-} -"; do
        read -r label file st <<< "$set"
        [ "$st" != "" ] || { st=$file; file=""; } # no file given: read put the model into $file
        [ -n "$file" ] || continue
        [ -f "$file" ] || fail "LLAMA_GGUF_$label=$file: no such file"
        case $file in *" "*) fail "LLAMA_GGUF_$label: a path with spaces is not supported" ;; esac
        cmp_sets+=("$label $file $st")
    done
    [ ${#cmp_sets[@]} -gt 0 ] || fail "LLAMA_BENCH is set but no GGUF is: give LLAMA_GGUF_BF16, LLAMA_GGUF_Q8_0 or LLAMA_GGUF_Q4_K_M"
elif [ "$STANDARD" = 0 ]; then
    fail "BENCH_STANDARD=0 without LLAMA_BENCH leaves nothing to run"
fi
mkdir -p "$MODELS" "$OUT" "$(dirname "$DOC")"
: > "$OUT/bench.log"

# synth NAME CONFIG DTYPE: (re)writes $MODELS/NAME unless its stamp matches.
synth() {
    local dir=$MODELS/$1 stamp
    stamp="$(sha256sum "$2" src/train/synth.c src/base/rng.h | sha256sum | cut -c1-16) $3 $SEED"
    if [ -f "$dir/config.json" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "reusing $dir"
        return
    fi
    rm -f "$dir/.stamp"
    "$BIN" synth -c "$2" -o "$dir" --dtype "$3" --seed "$SEED"
    echo "$stamp" > "$dir/.stamp"
}

# run NAME ARGS...: one `dsv32 bench` invocation, JSON appended to the results.
run() {
    local name=$1
    shift
    echo "== dsv32 bench -m $MODELS/$name $*" | tee -a "$OUT/bench.log" >&2
    # JSON to the results, the table to the log and the terminal.
    { "$BIN" bench -m "$MODELS/$name" --json --seed "$SEED" ${THREADS:+-t "$THREADS"} "$@" \
        2>&1 1>> "$OUT/results.jsonl"; } | tee -a "$OUT/bench.log" >&2
}

# The JSON lines are flat objects written by dsv32 bench (and llama-bench's,
# once "key": value is written "key":value); awk reads a field as the text
# between "key": and the next comma or brace (strings: between the quotes).
AWK_GET='function get(l, k,   v) {
    if (!match(l, "\"" k "\":(\"[^\"]*\"|[^,}]*)")) return ""
    v = substr(l, RSTART + length(k) + 3, RLENGTH - length(k) - 3); gsub(/"/, "", v); return v
}'
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
# the commit measured; "-dirty" when sources differ from it (not this script's own outputs)
commit=$(git describe --always 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!docs/bench.md' ':!docs/bench-decode.png' 2>/dev/null || commit="$commit-dirty"

# ---- the standard set -------------------------------------------------------
standard() {
# Other work on the machine skews every figure: the load is part of the record.
: > "$OUT/results.jsonl"
load_start=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
start=$(date +%s)
synth bench-small-bf16 bench/bench-small.config.json bf16
synth bench-small-fp8 bench/bench-small.config.json fp8
synth bench-v32attn-fp8 bench/bench-v32attn.config.json fp8

run bench-small-bf16 --depth "$SMALL_DEPTHS" --fill "$FILL" --prefill "$PREFILL" --decode "$DECODE"
run bench-small-fp8 --depth "$SMALL_DEPTHS" --fill "$FILL" --prefill "$PREFILL" --decode "$DECODE"
run bench-small-fp8 --depth "$SMALL_DEPTHS" --fill "$FILL" --prefill 0 --decode "$DENSE_DECODE" --dense
run bench-v32attn-fp8 --depth "$V32_DEPTHS" --fill random --prefill 0 --decode "$V32_DECODE" --attn both
elapsed=$(( $(date +%s) - start ))
load_end=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

first=$(head -n 1 "$OUT/results.jsonl")
kernels=$(awk "$AWK_GET"'{ print get($0, "kernels"); exit }' <<< "$first")
threads=$(awk "$AWK_GET"'{ print get($0, "threads"); exit }' <<< "$first")

{
echo "\`make bench\` ($commit, $(date -u +%Y-%m-%d)) on $cpu, $threads threads, kernels \`$kernels\`,"
echo "depth reached with \`--fill $FILL\`$([ "$FILL" = random ] || echo " (bench-v32attn: random)"), in $((elapsed / 60)) min $((elapsed % 60)) s."
echo "Load average (1 min) at start and end: $load_start, $load_end on $(nproc) CPUs. Read bandwidth and"
echo "AMX BF16 peak are measured by each \`dsv32 bench\` run, with the same threads."
echo "Times are per token, over all layers; *attn* = indexer + top-k + attention."
echo
echo "## Decode"
echo
echo "| model | mode | depth | tok/s | ms/tok | attn ms | indexer | top-k | attention | linear | MoE | other | weights MB/tok | GB/s | read GB/s | % of bound | KV B/tok |"
echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
awk "$AWK_GET"'get($0, "phase") == "decode" {
    printf "| %s | %s | %d | %.3f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f%% | %d |\n",
        get($0, "model"), get($0, "mode"), get($0, "depth"), get($0, "tok_s"), get($0, "ms_per_tok"),
        get($0, "attn_ms"), get($0, "indexer_ms"), get($0, "topk_ms"), get($0, "attention_ms"), get($0, "linear_ms"),
        get($0, "moe_ms"), get($0, "other_ms"), get($0, "weight_bytes_per_tok") / 1e6, get($0, "gbs"),
        get($0, "mem_gbs"), 100 * get($0, "gbs") / get($0, "mem_gbs"), get($0, "kv_bytes_per_tok")
}' "$OUT/results.jsonl"
echo
echo "*% of bound*: achieved weight GB/s over the measured read bandwidth, i.e. tok/s over the"
echo "weight-streaming bound (read bandwidth / weight bytes per token)."
echo
echo "## Prefill"
echo
echo "| model | depth | tokens | tok/s | ms/tok | attn ms | linear | MoE | other | linear TFLOPS | AMX BF16 peak | % of peak |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
awk "$AWK_GET"'get($0, "phase") == "prefill" {
    amx = get($0, "amx_tflops")
    printf "| %s | %d | %d | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %.4f | %s | %s |\n",
        get($0, "model"), get($0, "depth"), get($0, "tokens"), get($0, "tok_s"), get($0, "ms_per_tok"),
        get($0, "attn_ms"), get($0, "linear_ms"), get($0, "moe_ms"), get($0, "other_ms"), get($0, "linear_tflops"),
        (amx == "null" ? "n/a" : sprintf("%.2f", amx)), (amx == "null" ? "n/a" : sprintf("%.2f%%", 100 * get($0, "linear_tflops") / amx))
}' "$OUT/results.jsonl"
echo
echo "## Targets"
echo
awk "$AWK_GET"'
function key(m, mode, d) { return m "/" mode "/" d }
{ ph = get($0, "phase"); k = key(get($0, "model"), get($0, "mode"), get($0, "depth"))
  if (ph == "decode") { tps[k] = get($0, "tok_s") + 0; ms[k] = get($0, "ms_per_tok") + 0; attn[k] = get($0, "attn_ms") + 0
                        pct[k] = 100 * get($0, "gbs") / get($0, "mem_gbs") }
  if (ph == "prefill" && get($0, "depth") == 0 && get($0, "amx_tflops") != "null")
      lin[get($0, "model")] = 100 * get($0, "linear_tflops") / get($0, "amx_tflops") }
function yn(ok) { return ok ? "yes" : "**no**" }
END {
  print "| target | measured | met |"
  print "|---|---|---|"
  for (i = 1; i <= 2; i++) {
    m = i == 1 ? "bench-small-bf16" : "bench-small-fp8"
    a = key(m, "sparse", 0); b = key(m, "sparse", 16384)
    if (a in pct) printf "| %s decode at depth 0: >= 85%% of the weight-streaming bound | %.1f%% | %s |\n", m, pct[a], yn(pct[a] >= 85)
    if ((a in tps) && (b in tps)) printf "| %s decode at 16384 within 15%% of depth 0 | %.2f vs %.2f tok/s (%+.0f%%) | %s |\n", m, tps[b], tps[a], 100 * (tps[b] / tps[a] - 1), yn(tps[b] >= 0.85 * tps[a])
  }
  m = "bench-v32attn-fp8"; s = key(m, "sparse", 131072); d = key(m, "dense", 131072); s4 = key(m, "sparse", 4096)
  if ((s in attn) && (d in attn)) printf "| %s at 131072: attention side (attn ms) >= 10x faster sparse than dense | %.0f vs %.0f ms (%.1fx) | %s |\n", m, attn[s], attn[d], attn[d] / attn[s], yn(attn[d] >= 10 * attn[s])
  if ((s in ms) && (s4 in ms)) printf "| %s sparse decode at 131072 within 1.5x of 4096 | %.0f vs %.0f ms/tok (%.2fx) | %s |\n", m, ms[s], ms[s4], ms[s] / ms[s4], yn(ms[s] <= 1.5 * ms[s4])
  for (m in lin) printf "| %s prefill linear layers >= 50%% of the AMX BF16 peak | %.2f%% | %s |\n", m, lin[m], yn(lin[m] >= 50)
}' "$OUT/results.jsonl"
echo
echo "![decode tok/s against context depth](bench-decode.png)"
} > "$OUT/standard.md"
}

# ---- plot -----------------------------------------------------------------
plot() {
# One data block per (model, mode) series: x is the depth's rank among all
# depths measured (evenly spaced, roughly a log axis that keeps depth 0).
awk "$AWK_GET"'get($0, "phase") == "decode" { print get($0, "model"), get($0, "mode"), get($0, "depth"), get($0, "tok_s") }' \
    "$OUT/results.jsonl" > "$OUT/decode.txt"
depths=$(awk '{ print $3 }' "$OUT/decode.txt" | sort -n -u | tr '\n' ' ')
awk -v depths="$depths" '
BEGIN { n = split(depths, d, " "); for (i = 1; i <= n; i++) rank[d[i]] = i - 1 }
{ s = $1 " " $2; if (!(s in seen)) { seen[s] = ++ns; name[ns] = s }; rows[seen[s]] = rows[seen[s]] rank[$3] " " $3 " " $4 "\n" }
END { for (i = 1; i <= ns; i++) printf "# %s\n%s\n\n", name[i], rows[i] }' "$OUT/decode.txt" > "$OUT/decode.dat"

if ! command -v gnuplot > /dev/null; then
    echo "bench.sh: installing gnuplot-nox to draw the plot" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q > /dev/null && $SUDO apt-get install -y -q --no-install-recommends gnuplot-nox > /dev/null ||
        { echo "bench.sh: cannot install gnuplot-nox; results are in $OUT and docs/bench.md, no plot" >&2; return 1; }
fi
xtics=$(awk -v depths="$depths" 'BEGIN { n = split(depths, d, " ")
    for (i = 1; i <= n; i++) printf "%s\"%s\" %d", (i > 1 ? ", " : ""), (d[i] >= 1024 ? d[i] / 1024 "K" : d[i]), i - 1 }')
series=$(awk '/^# / { sub(/^# /, ""); printf "%s%s", n++ ? "|" : "", $0 }' "$OUT/decode.dat")
# A colour per model, solid for sparse and dashed for dense.
plot=""
i=0
declare -A colour=()
IFS='|' read -r -a names <<< "$series"
for s in "${names[@]}"; do
    model=${s% *}
    [ -n "${colour[$model]:-}" ] || colour[$model]=$(( ${#colour[@]} + 1 ))
    dash=1
    case $s in *dense) dash=2 ;; esac
    plot+="${plot:+, }'$OUT/decode.dat' index $i using 1:3 with linespoints lc ${colour[$model]} dt $dash lw 2 pt 7 title '$s'"
    i=$((i + 1))
done
gnuplot <<EOF
set terminal pngcairo size 900,560 font "sans,11"
set output "docs/bench-decode.png"
set title "dsv32 decode speed against context depth (kernels $kernels, $threads threads)"
set xlabel "context depth (tokens)"
set ylabel "decode tokens/s (log scale)"
set logscale y
set grid
set key top right box opaque
set xtics ($xtics)
set xrange [-0.3:$(( $(wc -w <<< "$depths") - 1 )).3]
plot $plot
EOF
}

# ---- against llama.cpp ------------------------------------------------------
# cmp_run LABEL ENGINE ROUND CMD...: one run, its JSON lines tagged with the
# file's label, the engine and the round, appended to compare.jsonl.
cmp_run() {
    local label=$1 engine=$2 round=$3
    shift 3
    echo "== $*" | tee -a "$OUT/bench.log" >&2
    # llama-bench writes "key": value; dsv32 bench "key":value.
    if ! { "$@" 2>&1 1>&3 | tee -a "$OUT/bench.log" >&2; } 3> "$OUT/cmp-run.jsonl"; then
        echo "bench.sh: failed: $*" | tee -a "$OUT/bench.log" >&2
        echo "{\"cmp\":\"$label\",\"engine\":\"$engine\",\"round\":$round,\"failed\":1}" >> "$OUT/compare.jsonl"
        return 0
    fi
    sed -e 's/": /":/g' -e "s/^{/{\"cmp\":\"$label\",\"engine\":\"$engine\",\"round\":$round,/" \
        "$OUT/cmp-run.jsonl" | grep '^{' >> "$OUT/compare.jsonl" || true
}

compare() {
    : > "$OUT/compare.jsonl"
    : > "$OUT/cmp-commands.txt"
    cmp_load_start=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
    cmp_start=$(date +%s)
    local set label file st r t=${THREADS:-$(nproc)}
    local llama_args=(-t "$t" -r 1 -p "$CMP_PREFILL" -n "$CMP_DECODE" -d "$CMP_DEPTHS" -o jsonl)
    local dsv_args=(--json --seed "$SEED" -t "$t" --depth "$CMP_DEPTHS" --prefill "$CMP_PREFILL"
                    --decode "$CMP_DECODE" --fill "$CMP_FILL")
    # LLAMA_ARGS is a list of options, split on spaces on purpose.
    # shellcheck disable=SC2206
    local extra=(${LLAMA_ARGS:-})
    for set in "${cmp_sets[@]}"; do
        read -r label file st <<< "$set"
        [ "$st" = - ] || synth "$st" bench/bench-small.config.json "$([ "$st" = bench-small-fp8 ] && echo fp8 || echo bf16)"
        # The commands as a reader would type them (file names without this machine's folders).
        {
            echo "llama-bench -m $(basename "$file") ${llama_args[*]}${extra[*]:+ ${extra[*]}}"
            echo "dsv32 bench -m $(basename "$file") ${dsv_args[*]}"
            [ "$st" = - ] || echo "dsv32 bench -m $st ${dsv_args[*]}"
        } >> "$OUT/cmp-commands.txt"
        for ((r = 1; r <= CMP_REPS; r++)); do
            # Odd rounds llama.cpp first, even rounds dsv32 first.
            if ((r % 2)); then
                cmp_run "$label" llama "$r" "$LLAMA_BENCH" -m "$file" "${llama_args[@]}" "${extra[@]}"
                cmp_run "$label" gguf "$r" "$BIN" bench -m "$file" "${dsv_args[@]}"
                [ "$st" = - ] || cmp_run "$label" st "$r" "$BIN" bench -m "$MODELS/$st" "${dsv_args[@]}"
            else
                [ "$st" = - ] || cmp_run "$label" st "$r" "$BIN" bench -m "$MODELS/$st" "${dsv_args[@]}"
                cmp_run "$label" gguf "$r" "$BIN" bench -m "$file" "${dsv_args[@]}"
                cmp_run "$label" llama "$r" "$LLAMA_BENCH" -m "$file" "${llama_args[@]}" "${extra[@]}"
            fi
        done
    done
    cmp_elapsed=$(( $(date +%s) - cmp_start ))
    cmp_load_end=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

    local j=$OUT/compare.jsonl llama_commit kern bw
    llama_commit=$(awk "$AWK_GET"'get($0, "engine") == "llama" && get($0, "build_commit") != "" { print get($0, "build_commit"); exit }' "$j")
    # The build tree's commit too, when llama-bench sits in LLAMA/build/bin.
    local tree="" root
    root=$(dirname "$LLAMA_BENCH")/../..
    if [ -f "$root/include/llama.h" ]; then tree=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true); fi
    kern=$(awk "$AWK_GET"'get($0, "engine") != "llama" && get($0, "kernels") != "" { print get($0, "kernels"); exit }' "$j")
    bw=$(awk "$AWK_GET"'get($0, "engine") != "llama" && get($0, "mem_gbs") != "" { s += get($0, "mem_gbs"); n++ }
                        END { if (n) printf "%.1f", s / n; else print "?" }' "$j")
    {
    echo "## Against llama.cpp"
    echo
    echo "\`make bench LLAMA_BENCH=...\` ($commit, $(date -u +%Y-%m-%d)) on $cpu, $t threads, dsv32 kernels"
    echo "\`${kern:-?}\`, read bandwidth ${bw} GB/s (mean of the \`dsv32 bench\` probes), llama.cpp"
    [ "$tree" != "${llama_commit:-}" ] || tree=""
    echo "${llama_commit:-?}${tree:+ (build tree at $tree)}, in $((cmp_elapsed / 60)) min $((cmp_elapsed % 60)) s. Load average (1 min) at start"
    echo "and end: $cmp_load_start, $cmp_load_end on $(nproc) CPUs. $CMP_REPS round(s), engines alternated (order"
    echo "reversed every other round); tok/s is the mean over rounds, (min–max) when more than one."
    echo "dsv32 reaches each depth with \`--fill $CMP_FILL\`; llama-bench prefills it (untimed)."
    echo "*same GGUF*: \`dsv32 bench\` on the file llama-bench ran; *safetensors*: dsv32 on its own"
    echo "checkpoint of the same shape (bf16 beside BF16, fp8 beside Q8_0). Ratio: dsv32 over llama.cpp."
    echo
    echo "| weights | test | depth | llama.cpp tok/s | dsv32, same GGUF | ratio | dsv32, safetensors | ratio |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|"
    awk "$AWK_GET"'
    { e = get($0, "engine"); c = get($0, "cmp")
      if (get($0, "failed") == 1) { failed[c, e] = 1; next }
      if (e == "llama") { ph = get($0, "n_gen") > 0 ? "decode" : "prefill"; d = get($0, "n_depth") + 0; v = get($0, "avg_ts") + 0 }
      else { ph = get($0, "phase"); d = get($0, "depth") + 0; v = get($0, "tok_s") + 0; if (e == "st") stl[c] = get($0, "dtype") }
      k = c SUBSEP ph SUBSEP d SUBSEP e
      if (!(k in n) || v < lo[k]) lo[k] = v
      if (!(k in n) || v > hi[k]) hi[k] = v
      n[k]++; sum[k] += v }
    function cell(k) { if (!(k in n)) return "—"
      return n[k] > 1 ? sprintf("%.2f (%.2f–%.2f)", sum[k] / n[k], lo[k], hi[k]) : sprintf("%.2f", sum[k]) }
    function ratio(a, b) { return (a in n) && (b in n) && sum[b] > 0 ? sprintf("%.2fx", (sum[a] / n[a]) / (sum[b] / n[b])) : "—" }
    END {
      nc = split("BF16 Q8_0 Q4_K_M", cs, " "); nd = split(depths, ds, ",")
      for (q = 1; q <= nd; q++) ds[q] += 0
      split("decode prefill", phs, " ")
      for (i = 1; i <= nc; i++) for (p = 1; p <= 2; p++) for (q = 1; q <= nd; q++) {
        c = cs[i]; ph = phs[p]; d = ds[q]; b = c SUBSEP ph SUBSEP d SUBSEP
        if (!((b "llama") in n) && !((b "gguf") in n) && !((b "st") in n)) continue
        printf "| %s | %s %d | %d | %s | %s | %s | %s | %s |\n", c, ph, ph == "decode" ? ndec : npre, d,
          cell(b "llama"), cell(b "gguf"), ratio(b "gguf", b "llama"),
          (b "st") in n ? cell(b "st") " (" stl[c] ")" : "—", ratio(b "st", b "llama")
      }
      for (k in failed) { split(k, f, SUBSEP); printf "\n%s: a %s run failed (see build/bench/bench.log).\n", f[1], f[2] == "llama" ? "llama-bench" : "dsv32 bench" }
    }' depths="$CMP_DEPTHS" ndec="$CMP_DECODE" npre="$CMP_PREFILL" "$j"
    echo
    echo "Commands (each once per round; \`-m\` takes the full path of the file, \`LLAMA_BENCH\` the path of llama-bench):"
    echo
    echo '```'
    cat "$OUT/cmp-commands.txt"
    echo '```'
    } > "$OUT/llama.md"
}

# ---- docs/bench.md -----------------------------------------------------------
# One section per set; a set not run this time keeps its section from before.
[ "$STANDARD" = 1 ] && standard
[ ${#cmp_sets[@]} -eq 0 ] || compare
old_standard=$OUT/old-standard.md old_llama=$OUT/old-llama.md
: > "$old_standard"
: > "$old_llama"
if [ -f "$DOC" ]; then
    awk 'NR > 2 && /^## Against llama.cpp/ { exit } NR > 2' "$DOC" > "$old_standard"
    awk '/^## Against llama.cpp/ { on = 1 } on' "$DOC" > "$old_llama"
fi
{
echo "# Benchmark results"
echo
if [ "$STANDARD" = 1 ]; then cat "$OUT/standard.md"; else cat "$old_standard"; fi
if [ ${#cmp_sets[@]} -gt 0 ]; then echo; cat "$OUT/llama.md"; elif [ -s "$old_llama" ]; then echo; cat "$old_llama"; fi
} | cat -s > "$OUT/bench.md"
cp "$OUT/bench.md" "$DOC"
[ "$STANDARD" = 1 ] && plot

cat "$DOC"
echo
echo "results: $OUT/results.jsonl$([ ${#cmp_sets[@]} -eq 0 ] || echo ", $OUT/compare.jsonl"), $OUT/bench.log; report: $DOC$([ "$STANDARD" = 0 ] || echo ", docs/bench-decode.png (${elapsed} s)")$([ ${#cmp_sets[@]} -eq 0 ] || echo "; llama.cpp comparison ${cmp_elapsed} s")"
