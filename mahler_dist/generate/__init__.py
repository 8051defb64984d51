"""Generation: sampling, reconstruction and interpolation with a trained MahlerNet, batched.

    units.py      the original's unit syntax ("10cz", "9z", "3c", "-") with errors naming the unit
    sampler.py    the batched core loop (torch only), END-of-bar rule, masks, counter-based RNG
    generator.py  `Generator`: checkpoint -> arrays-in, rows-out API (what Ray Serve calls)
    output.py     rows -> Piece -> MIDI bytes / files (+ piano roll), metre parsing
    metrics.py    step-aligned accuracy, note-set F1, perplexity
    modes.py      `mahler generate` modes: pred, recon, n_recon, intpol, n_pred
    runs.py       a run's checkpoints: "best", "latest" or a checkpoint folder name

No Ray here: the same code runs from the CLI, on a GPU box and inside a Serve replica.
"""

from mahler_dist.generate.generator import Generator, Reconstruction, SampleRequest
from mahler_dist.generate.output import parse_metre, rows_to_midi_bytes
from mahler_dist.generate.sampler import Decoding, Temperatures
from mahler_dist.generate.units import Unit, UnitError, parse_unit, parse_units
from mahler_dist.music.rows import rows_to_piece   # the one decoder, re-exported

__all__ = ["Decoding", "Generator", "Reconstruction", "SampleRequest", "Temperatures", "Unit", "UnitError",
           "parse_metre", "parse_unit", "parse_units", "rows_to_midi_bytes", "rows_to_piece"]
