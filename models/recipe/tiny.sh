#!/bin/sh
# tiny.sh: builds models/tiny end to end with DeepSeek's DSA recipe, scaled
# down: the King James Bible from Debian's bible-kjv package (Genesis..Jude
# to train, Revelation to validate), a 4096-token byte-level BPE, then
#   1 dense pre-training, 2 indexer warm-up, 3 sparse training,
# then export in bf16 and fp8 and keep fp8 if its Revelation perplexity is
# within 2% of bf16's. Run from the repository root (make tiny-model).
#   tiny.sh [all|corpus|train|export]   (default all)
# Work files go to $WORK (default build/tiny); the model to $OUT (models/tiny).
set -eu
DSV32=${DSV32:-build/dsv32}
WORK=${WORK:-build/tiny}
OUT=${OUT:-models/tiny}
RECIPE=$(dirname "$0")
phase=${1:-all}
mkdir -p "$WORK"

corpus() {
    if ! command -v bible >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then apt-get install -y bible-kjv; else sudo apt-get install -y bible-kjv; fi
    fi
    # One verse per line, "Book1:2 text"; the reference is dropped.
    bible -f gen1:1-rev22:21 > "$WORK/kjv.txt"
    [ "$(wc -l < "$WORK/kjv.txt")" -eq 31102 ] || { echo "tiny.sh: unexpected bible output" >&2; exit 1; }
    grep -v '^Rev' "$WORK/kjv.txt" | sed 's/^[^ ]* //' > "$WORK/train.txt"
    grep '^Rev' "$WORK/kjv.txt" | sed 's/^[^ ]* //' > "$WORK/valid.txt"
    "$DSV32" bpe -f "$WORK/train.txt" -o "$WORK/tok" --vocab 4096
}

train() {
    common="-f $WORK/train.txt -t $WORK/tok --valid $WORK/valid.txt --batch 8 --ctx 1024"
    # shellcheck disable=SC2086
    "$DSV32" train --config "$RECIPE/config.json" $common -o "$WORK/stage1.ckpt" \
        --stage 1 --steps 560 --lr 2e-3 --warmup 40 --bias-rate 1e-2 --eval-every 50 --save-every 100
    # shellcheck disable=SC2086
    "$DSV32" train --init "$WORK/stage1.ckpt" $common -o "$WORK/stage2.ckpt" \
        --stage 2 --steps 60 --lr 2e-3 --warmup 10 --eval-every 30 --save-every 30
    # shellcheck disable=SC2086
    "$DSV32" train --init "$WORK/stage2.ckpt" $common -o "$WORK/stage3.ckpt" \
        --stage 3 --steps 100 --lr 2e-4 --warmup 10 --bias-rate 1e-2 --eval-every 50 --save-every 50
}

export_model() {
    "$DSV32" export -i "$WORK/stage3.ckpt" -o "$WORK/bf16" -t "$WORK/tok"
    "$DSV32" export -i "$WORK/stage3.ckpt" -o "$WORK/fp8" -t "$WORK/tok" --fp8
    p16=$("$DSV32" ppl -m "$WORK/bf16" -f "$WORK/valid.txt" --ctx 1024 --quiet)
    p8=$("$DSV32" ppl -m "$WORK/fp8" -f "$WORK/valid.txt" --ctx 1024 --quiet)
    echo "Revelation perplexity (sparse, ctx 1024): bf16 $p16, fp8 $p8"
    if awk "BEGIN { exit !($p8 <= 1.02 * $p16) }"; then pick=fp8; else pick=bf16; fi
    echo "shipping $pick"
    mkdir -p "$OUT"
    cp "$WORK/$pick/config.json" "$WORK/$pick/model.safetensors" "$WORK/$pick/tokenizer.json" \
       "$WORK/$pick/tokenizer_config.json" "$OUT/"
}

case $phase in
    corpus) corpus ;;
    train) train ;;
    export) export_model ;;
    all) corpus; train; export_model ;;
    *) echo "usage: tiny.sh [all|corpus|train|export]" >&2; exit 2 ;;
esac
