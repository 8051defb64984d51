"""How much of real corpora the representation keeps, and how exactly (issue: foundation).

For scale: the original MahlerNet preprocessor kept only 86% (piano) and 60% (orchestral) of
these corpora's notes and said nothing about the rest. Here every note that is not kept is
counted under a reason, and the report is printed (pytest -s shows it).
"""

from collections import Counter

import numpy as np
import pytest

from mahler_dist.errors import MidiReadError
from mahler_dist.music.encode import encode_file

MIDI_SUFFIXES = {".mid", ".midi"}


def corpus_report(folder):
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)
    totals, rejected, errors = Counter(), Counter(), []
    for path in files:
        try:
            encoded = encode_file(path)
        except MidiReadError as e:
            rejected[e.reason.split(" (")[0]] += 1
            continue
        totals.update(encoded.stats)
        errors.append(encoded.piece.quantisation_error)
    return files, totals, rejected, np.concatenate(errors)


@pytest.mark.parametrize("corpus", ["piano_midi_de", "orchestral_symphonic"])
def test_corpus_fidelity(midi_dir, corpus):
    files, totals, rejected, errors = corpus_report(midi_dir / corpus)
    accepted = len(files) - sum(rejected.values())
    dropped = {k[len("dropped: "):]: v for k, v in totals.items() if k.startswith("dropped: ") and v}
    pitched = totals["source notes"] - totals["dropped: drum channel"]
    represented = totals["kept notes"] + totals["merged: unison doubling"]
    print(f"\n{corpus}: {accepted}/{len(files)} files accepted; rejected: {dict(rejected)}")
    print(f"  pitched non-drum notes {pitched}: kept {totals['kept notes']} "
          f"+ merged unison doublings {totals['merged: unison doubling']} = {represented / pitched:.2%}")
    print(f"  dropped by reason: {dropped}")
    print(f"  onset shift median {np.median(errors[:, 0]):.4f} beats (p95 {np.percentile(errors[:, 0], 95):.4f}); "
          f"duration change median {np.median(errors[:, 1]):.4f} beats (p95 {np.percentile(errors[:, 1], 95):.4f})")

    assert accepted >= 0.9 * len(files)
    # every source note is accounted for: kept, merged, or dropped under a named reason
    assert totals["kept notes"] + totals["merged: unison doubling"] + sum(dropped.values()) == totals["source notes"]
    assert represented >= 0.995 * pitched   # issue 14: additive metres keep 5/4, 7/8, ...
    assert np.median(errors[:, 0]) == 0.0
    assert np.median(errors[:, 1]) <= 0.05
