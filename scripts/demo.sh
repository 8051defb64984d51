#!/usr/bin/env bash
# The main job on the bundled corpus: what `make demo` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${MAHLER_DEMO_ROOT:-demo}"
MAHLER=.venv/bin/mahler
mkdir -p "$ROOT"

echo "== The representation of each bundled file (examples/midi, Piano-midi.de, CC BY-SA)"
for f in examples/midi/*.mid; do
  "$MAHLER" inspect "$f" --write-midi "$ROOT/$(basename "$f" .mid).roundtrip.mid"
  echo
done
echo "Round-tripped MIDI files are in $ROOT/."
