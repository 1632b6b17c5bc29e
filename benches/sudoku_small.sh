#!/bin/sh
# The small Sudoku run of issue 31 (about 10 minutes of one CPU core): 20 blanks, the tiny model, 4 minutes
# of training for each model, 40 held-out puzzles. Writes docs/quality_results/sudoku/small.json.
set -e
OUT=${OUT:-runs/sudoku-small}
python benches/sudoku.py data --blanks 20 --train 5000 --heldout 200 --out $OUT/pairs.jsonl
python benches/sudoku.py train --data $OUT/pairs.jsonl --heldout 200 --objective masked --minutes 4 --ema 0.99 --run-dir $OUT/ddm
python benches/sudoku.py train --data $OUT/pairs.jsonl --heldout 200 --objective autoregressive --minutes 4 --ema 0.99 --run-dir $OUT/ar
python benches/sudoku.py eval --ddm $OUT/ddm --ar $OUT/ar --data $OUT/pairs.jsonl --heldout 200 --puzzles 40 \
    --decoders "margin,random (plain)" --out docs/quality_results/sudoku/small.json
