"""The service's request rules without Ray: the schema's bounds and mode rules, the upload limits
(checked before the work they bound), the model catalog (ids matched, never joined onto paths), and
answers that JSON can carry."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import mido
import numpy as np
import pytest
from pydantic import ValidationError

from mahler_dist.serve import engine
from mahler_dist.serve.catalog import ModelCatalog, UnknownModel
from mahler_dist.serve.limits import ServeLimits
from mahler_dist.serve.schemas import GenerateRequest
from midi_bytes import smf_of_messages

REPO = Path(__file__).resolve().parents[2]
SEED = (REPO / "examples" / "midi" / "scn15_6.mid").read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("body, reason", [
    ({"bars": 65}, "less than or equal to 64"),
    ({"samples": 8, "bars": 33}, "decodes 264 bars"),
    ({"mode": "intpol", "piece": "x", "units": ["0z", "1z"], "samples": 2}, "samples must be 1"),
    ({"mode": "recon", "piece": "x", "units": ["-"]}, "nothing to recon"),
    ({"mode": "recon", "piece": "x", "units": ["3q"]}, "not a unit"),
    ({"mode": "pred", "midi": b64(SEED)}, "takes no midi"),
    ({"mode": "recon", "midi": b64(SEED), "piece": "x", "units": ["1z"]}, "not both"),
    ({"mode": "pred", "units": ["1z"]}, "takes no units"),
    ({"model": "a/b/c"}, "pattern"),
    ({"temperature": float("nan")}, "finite"),
    ({"seed": 2**31}, "less than or equal"),
])
def test_the_schema_refuses_what_the_service_cannot_do(body, reason):
    with pytest.raises(ValidationError, match=reason):
        GenerateRequest.model_validate(body)


def test_decode_work_counts_every_decoded_bar():
    assert GenerateRequest(bars=8, samples=4).work_bars() == 32
    assert GenerateRequest(mode="intpol", piece="p", units=["0z", "2z"], steps=9).work_bars() == 10
    assert GenerateRequest(mode="recon", piece="p", units=["0z", "1cz", "2z"], samples=3).work_bars() == 9


def test_an_upload_is_read_by_the_projects_reader_into_bars():
    windows = engine.upload_windows(b64(SEED))
    assert len(windows) == 33 and windows[0].metre == "3/4"


def test_an_upload_is_quantised_with_the_models_data_options():
    from mahler_dist.music.quantize_options import QuantizeOptions

    # a chord whose second note enters 38 ticks late: one onset by default, two with the first
    # quantiser (the late one on the 32nd point after the beat)
    late = smf_of_messages([(0, mido.Message("note_on", note=60, velocity=64)),
                            (38, mido.Message("note_on", note=64, velocity=64)),
                            (470, mido.Message("note_off", note=60)), (470, mido.Message("note_off", note=64))])
    later = lambda windows: int((windows[0].inputs[:, 0] > 0).sum())   # rows after the first onset
    assert later(engine.upload_windows(b64(late))) == 0
    assert later(engine.upload_windows(b64(late), quantize=QuantizeOptions.first())) == 1


def _long_file(quarters: int) -> bytes:
    notes = [(0, mido.Message("note_on", note=60, velocity=64)),
             (quarters * 480, mido.Message("note_off", note=60))]
    return smf_of_messages(notes)


def test_upload_limits_are_checked_while_reading_not_after():
    small = ServeLimits(max_upload_bytes=len(SEED) - 1)
    with pytest.raises(engine.RequestError, match="over") as e:
        engine.upload_windows(b64(SEED), limits=small)
    assert e.value.status == 413
    short = ServeLimits(max_upload_quarters=64)
    assert engine.upload_windows(b64(_long_file(60)), limits=short)
    with pytest.raises(engine.RequestError, match="upload 'midi'") as e:
        engine.upload_windows(b64(_long_file(4096)), limits=short)
    assert e.value.status == 400


@pytest.mark.parametrize("data, reason", [(b"", "empty file"), (b"MThd\x00\x00", "upload 'midi'"),
                                          (SEED[:200], "upload 'midi'")])
def test_a_bad_upload_names_the_field_and_the_reason(data, reason):
    with pytest.raises(engine.RequestError, match=reason):
        engine.upload_windows(b64(data))


def test_not_base64_is_a_400():
    with pytest.raises(engine.RequestError, match="not base64") as e:
        engine.upload_windows("abc")
    assert e.value.status == 400


def _run(root: Path, name: str, *checkpoints: str) -> None:
    for c in checkpoints:
        d = root / "runs" / name / c
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(b"x")


def test_the_catalog_matches_ids_against_what_exists(tmp_path):
    _run(tmp_path, "piano", "checkpoint_epoch0001", "checkpoint_step00000500")
    _run(tmp_path, "empty")                                     # no checkpoint: not servable
    (tmp_path / "runs" / "bad name").mkdir()
    catalog = ModelCatalog(tmp_path)
    ids = {e.id for e in catalog.entries()}
    assert ids == {"piano/best", "piano/latest", "piano/checkpoint_epoch0001", "piano/checkpoint_step00000500"}
    assert catalog.lookup("piano").id == "piano/best"
    for hostile in ("../piano", "piano/../../etc", "/etc/passwd", "piano/state.pt", "empty"):
        with pytest.raises(UnknownModel, match="no such run"):
            catalog.lookup(hostile)
    _run(tmp_path, "later", "checkpoint_epoch0002")             # written after the server started
    assert catalog.lookup("later/checkpoint_epoch0002").info.epoch == 2


def test_answers_hold_only_what_json_can_carry():
    assert engine.finite({"a": float("nan"), "b": [np.float32(1.5), np.int64(3)], "c": math.inf}) == \
        {"a": None, "b": [1.5, 3], "c": None}
