#!/usr/bin/env bash
# The main job end to end on the bundled corpus: what `make demo` runs.
# Local Ray (embedded), W&B offline, the eight Piano-midi.de files in examples/midi.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${MAHLER_DEMO_ROOT:-demo}"
RUN="${MAHLER_DEMO_RUN:-demo-tiny}"
MAHLER=.venv/bin/mahler
export WANDB_MODE="${WANDB_MODE:-offline}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

mkdir -p "$ROOT/input"
cp -n examples/midi/*.mid "$ROOT/input/" 2>/dev/null || true

echo "== 1. What the representation makes of one file"
"$MAHLER" inspect examples/midi/scn15_7.mid --write-midi "$ROOT/scn15_7.roundtrip.mid"

echo; echo "== 2. Preprocess with Ray Data: $ROOT/input -> $ROOT/builds/ID (WebDataset shards), $ROOT/CURRENT"
"$MAHLER" preprocess "$ROOT" --val 0.25 --test 0

echo; echo "== 3. Train the tiny preset with Ray Train, 2 DDP workers (re-running resumes)"
"$MAHLER" train "$RUN" --root "$ROOT" --config tiny --workers 2 --epochs 3

echo; echo "== 4. Generate: 2 samples of 4 bars, and a reconstruction of bar 4 of a piece"
"$MAHLER" generate "$RUN" --root "$ROOT" --type pred --length 4 --samples 2 --units - --use-start-ctx --seed 1
"$MAHLER" generate "$RUN" --root "$ROOT" --type recon --file scn15_7 --units 4cz --seed 1

echo; echo "== 5. Training curves"
"$MAHLER" plot l "$RUN" "$ROOT/runs/$RUN" --out "$ROOT/runs/$RUN/curves_loss.png"
"$MAHLER" plot p "$RUN" "$ROOT/runs/$RUN" --out "$ROOT/runs/$RUN/curves_accuracy.png"

echo; echo "Done. Look in $ROOT/runs/$RUN: generated/ (MIDI + piano rolls), metrics.jsonl, curves_*.png, wandb/."
