"""A real Ray Serve app on 127.0.0.1 over a ROOT with two tiny trained runs, for the serve tests.

    from serve_fixture import serve_app   # a module-scoped fixture: {"url", "root", "midi"}

ROOT is examples/midi preprocessed (real Ray Data); run "a" has two checkpoints (epochs 1, 2),
run "b" one, trained from another seed, so two models answer differently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mahler_dist.serve.probe import free_port, wait_http  # noqa: F401 - the serve tests import them from here

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "midi"
SEED_PIECE = EXAMPLES / "scn15_6.mid"      # 33 bars of 3/4


@pytest.fixture(scope="module")
def serve_app(ray_session, tmp_path_factory):
    from ray import serve

    from mahler_dist.serve.app import build_app
    from tiny_runs import preprocessed_examples, train_tiny_run

    root = preprocessed_examples(tmp_path_factory.mktemp("serve_root"), val_fraction=0.0, test_fraction=0.0,
                                 shard_samples=64)
    train_tiny_run(root, "a", steps=20, seed=0, epochs=(1, 2))
    train_tiny_run(root, "b", steps=20, seed=1)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    serve.run(build_app({"root": str(root), "model": "a"}), name="mahler", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    try:
        yield {"url": url, "root": root, "midi": SEED_PIECE.read_bytes()}
    finally:
        serve.shutdown()
