"""The typed HTTP contract of `POST /v1/generate` (pydantic; FastAPI turns it into the OpenAPI schema).

Every field is bounded (serve/limits.py), so a request the schema accepts costs at most
`max_work_bars` decoded bars. Which fields a mode needs is checked here too, so a mode/field
mismatch is a 422 naming the field, never an error deep in the model.

    {"mode": "pred", "bars": 8, "samples": 2, "seed": 7, "temperature": 0.9}
    {"mode": "continue", "midi": "<base64>", "bars": 4, "encode_z": true}
    {"mode": "recon", "piece": "chpn_op10_e01", "units": ["4cz", "5cz"]}
    {"mode": "intpol", "midi": "<base64>", "units": ["0z", "3z"], "steps": 5, "slerp": true}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mahler_dist.serve.limits import LIMITS

Mode = Literal["pred", "continue", "recon", "intpol"]
_MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,99})?$"
_UNIT = r"^(-|\d{1,6}(c|z|cz|zc))$"
_PIECE = r"^[A-Za-z0-9][A-Za-z0-9 _.,()'+\-]{0,199}$"
_METRE = r"^(\d{1,2}/\d{1,2}|[2346])$"
_B64 = r"^[A-Za-z0-9+/\r\n]*={0,2}\s*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PropertyTemperatures(Strict):
    """Per-property temperatures (0 = argmax); a property left out takes `temperature`."""

    offset: float | None = Field(None, ge=0.0, le=LIMITS.max_temperature)
    duration: float | None = Field(None, ge=0.0, le=LIMITS.max_temperature)
    pitch: float | None = Field(None, ge=0.0, le=LIMITS.max_temperature)
    instrument: float | None = Field(None, ge=0.0, le=LIMITS.max_temperature)


class GenerateRequest(Strict):
    mode: Mode = Field("pred", description="pred: new music; continue: an upload followed by new bars; "
                                           "recon: reconstruct units; intpol: walk from one unit to another")
    model: str | None = Field(None, pattern=_MODEL_ID,
                              description="RUN or RUN/CHECKPOINT from GET /v1/models (default: the server's); "
                                          "the header serve_multiplexed_model_id does the same")
    bars: int = Field(4, ge=1, le=LIMITS.max_bars, description="new bars per sample (pred, continue)")
    samples: int = Field(1, ge=1, le=LIMITS.max_samples, description="independent samples")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random seed (default: drawn; always returned)")
    context: Literal["start", "zeros"] = Field(
        "start", description="pred's first context: START (what every training piece starts from) or zeros")
    temperature: float | None = Field(None, ge=0.0, le=LIMITS.max_temperature,
                                      description="every property's temperature (default: the run's config)")
    temperatures: PropertyTemperatures | None = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=128)
    metre: str | None = Field(None, pattern=_METRE, description="metre of new bars, e.g. 3/4 (default 4/4, "
                                                                "or the upload's last bar's in continue)")
    midi: str | None = Field(None, max_length=LIMITS.max_upload_b64, pattern=_B64,
                             description="an uploaded MIDI file, base64 (continue, recon, intpol)")
    piece: str | None = Field(None, pattern=_PIECE,
                              description="a stored piece of the run's corpus: id or input file name (recon, intpol)")
    units: list[str] | None = Field(None, max_length=LIMITS.max_units,
                                    description="recon/intpol units in the original's syntax: 4cz, 9z, 3c")
    steps: int = Field(5, ge=1, le=LIMITS.max_steps, description="intpol steps between the two units")
    slerp: bool = Field(False, description="intpol: spherical instead of linear interpolation")
    encode_z: bool = Field(False, description="continue: the first new bar's z is the upload's last bar encoded")
    teacher_forcing: bool = Field(False, description="recon: predict each event from the true previous ones")

    @model_validator(mode="after")
    def _fits_mode(self) -> GenerateRequest:
        import re

        if self.units is not None:
            for u in self.units:
                if not re.match(_UNIT, u):
                    raise ValueError(f"units: {u!r} is not a unit (use <bar><c and/or z>, e.g. 4cz, or -)")
        needs_music = self.mode in ("continue", "recon", "intpol")
        if needs_music and self.midi is None and (self.piece is None or self.mode == "continue"):
            what = "midi" if self.mode == "continue" else "midi or piece"
            raise ValueError(f"mode {self.mode!r} needs {what}")
        if self.midi is not None and self.piece is not None:
            raise ValueError("give midi or piece, not both")
        if not needs_music and (self.midi is not None or self.piece is not None):
            raise ValueError("mode 'pred' takes no midi or piece (use mode 'continue' to extend an upload)")
        if self.mode in ("recon", "intpol"):
            if not self.units:
                raise ValueError(f"mode {self.mode!r} needs units, e.g. [\"0cz\", \"1cz\"]")
            if any(u == "-" for u in self.units):
                raise ValueError(f"units: '-' (no unit) has nothing to {self.mode}")
            if self.mode == "recon" and any("z" not in u for u in self.units):
                raise ValueError("units: recon encodes each unit's bar, so each needs z (e.g. 4cz)")
            if self.mode == "intpol" and (len(self.units) != 2 or any("z" not in u for u in self.units)):
                raise ValueError("units: intpol walks between exactly two z-units, e.g. [\"0cz\", \"3cz\"]")
            if self.mode == "intpol" and self.samples != 1:
                raise ValueError("intpol answers one path of steps + 1 bars: samples must be 1")
        elif self.units is not None:
            raise ValueError(f"mode {self.mode!r} takes no units")
        work = self.work_bars()
        if work > LIMITS.max_work_bars:
            raise ValueError(f"this request decodes {work} bars; the limit is {LIMITS.max_work_bars} "
                             "(fewer samples, bars or steps)")
        return self

    def work_bars(self) -> int:
        """Bars decoded, all samples together (the upload's own bars are encoded, not decoded)."""
        if self.mode == "intpol":
            return self.steps + 1
        if self.mode == "recon":
            return len(self.units or ()) * self.samples
        return self.bars * self.samples


class Event(BaseModel):
    """One note: times in ticks at 480 per quarter from the start of the answer's piece."""

    start: int
    end: int
    pitch: int
    instrument: int
    bar: int


class SampleOut(BaseModel):
    midi: str = Field(description="the sample as a MIDI file, base64")
    metres: list[str]
    bar_starts: list[int] = Field(description="tick of each bar line")
    events: list[Event]
    stats: dict[str, float | int]
    new_from_bar: int = Field(0, description="bars before it are the upload (continue) or its context")


class GenerateResponse(BaseModel):
    mode: Mode
    model: str
    seed: int
    samples: list[SampleOut]
    context: dict | None = Field(None, description="what the first decoded bar was conditioned on")
    recon: dict | None = Field(None, description="recon: accuracy of the reconstruction against the units' bars")
    batch_size: int = Field(1, description="requests decoded in the same batch as this one")
    instruments: list[str]


class ModelInfo(BaseModel):
    id: str
    run: str
    checkpoint: str
    epoch: int | None = None
    step: int | None = None
    val_score: float | None = None
    default: bool = False


class ErrorOut(BaseModel):
    error: str
    detail: list | None = None
