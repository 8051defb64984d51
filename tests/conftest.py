"""Shared fixtures: where the team's MIDI corpora are, and one real local Ray per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """One torch thread in the test process: on a 2-core box that also runs Ray's processes,
    OpenMP threads spin-wait for a busy core and small models get ~20x slower (measured).
    (Ray train workers get OMP_NUM_THREADS=1 from their 1-CPU reservation already.)"""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def shared_midi_dir() -> Path:
    """../shared/data/midi beside the checkout (CI lays out the same), or $MAHLER_SHARED_DATA."""
    env = os.environ.get("MAHLER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "midi"


@pytest.fixture(scope="session")
def midi_dir() -> Path:
    path = shared_midi_dir()
    if not path.is_dir():
        pytest.skip(f"shared MIDI corpora not found at {path} (set MAHLER_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray for the whole session. 4 logical CPUs on a 2-core box leave room for
    Ray Data's read tasks next to actors or train workers (Ray notes 1.3: deadlocks otherwise)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")   # ray_runtime.SERVE_PROXY_WAIT
    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=400 * 1024 * 1024,
             log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
