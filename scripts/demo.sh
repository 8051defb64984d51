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

echo; echo "== 6. Serve the run with Ray Serve, ask it for 4 bars of MIDI over HTTP, stop it"
PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$MAHLER" serve "$RUN" --root "$ROOT" --port "$PORT" > "$ROOT/serve.log" 2>&1 &
SERVER=$!
# SIGTERM, not SIGINT: a script's background job ignores SIGINT (POSIX), so Ctrl-C's signal would not stop it
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 180); do grep -q "to stop" "$ROOT/serve.log" && break; kill -0 $SERVER 2>/dev/null || break; sleep 1; done
.venv/bin/python - "$PORT" "$ROOT/runs/$RUN/served.mid" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/generate", method="POST",
                             data=json.dumps({"mode": "pred", "bars": 4, "seed": 1}).encode(),
                             headers={"Content-Type": "application/json", "Accept": "audio/midi"})
with urllib.request.urlopen(req, timeout=120) as r:
    open(sys.argv[2], "wb").write(r.read())
    print(f"wrote {sys.argv[2]} (seed {r.headers['X-Mahler-Seed']}); the web page was at http://127.0.0.1:{sys.argv[1]}/")
PY
kill -TERM $SERVER; wait $SERVER || true; trap - EXIT
echo "(run it yourself: $MAHLER serve $RUN --root $ROOT, then open http://127.0.0.1:8000/)"

echo; echo "Done. Look in $ROOT/runs/$RUN: generated/ (MIDI + piano rolls), served.mid, metrics.jsonl, curves_*.png, wandb/."
