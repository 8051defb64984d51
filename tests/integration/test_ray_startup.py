"""Ray start-up under real conditions: another Ray head on the machine, an address given, a wrong one.

The other head is a real `ray start --head` with its own temp dir; the commands under test run
with RAY_TMPDIR pointing at that dir's parent, so for them it is "the Ray this machine last
started" (what a colleague's `ray start` in the default /tmp/ray is), without touching the
/tmp/ray that other tests on this machine use. The head is stopped by its own PIDs (never `ray stop`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mahler_dist import ray_runtime as R

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
MULTIPLE = "multiple active Ray instances"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _pids_matching(*needles: str) -> list[int]:
    """PIDs of this user's processes whose command line holds one of `needles`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            out.append(int(d.name))
    return out


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env.update(RAY_AUTH_MODE="disabled", WANDB_MODE="offline", PYTHONPATH=str(REPO), **extra)
    return env


@pytest.fixture(scope="module")
def other_head():
    """A second Ray head: (its GCS address, RAY_TMPDIR that makes it the default, its session dir)."""
    base = tempfile.mkdtemp(prefix="rh", dir="/tmp")   # short: Ray's unix socket paths live here
    temp_dir = f"{base}/ray"
    port = _free_port()
    run = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1",
                          "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                         env=_env(), capture_output=True, text=True, timeout=180)
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
        session = Path(temp_dir, "session_latest").resolve()
        yield address, base, session
    finally:
        # this head only: every process whose command line names its temp dir or its port
        pids = _pids_matching(temp_dir, f":{port} ", f":{port}\0", f"={port}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tiny_root(midi_dir, tmp_path):
    (tmp_path / "input").mkdir()
    for f in sorted((midi_dir / "piano_midi_de").rglob("*.mid"))[:2]:
        shutil.copy(f, tmp_path / "input" / f.name)
    return tmp_path


def _drivers_of(session: Path) -> set[str]:
    """The drivers that connected to a session (each writes python-core-driver-*.log there)."""
    return {p.name for p in (session / "logs").glob("python-core-driver-*")}


def _mahler(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "mahler_dist.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_preprocess_starts_its_own_ray_beside_another_head(other_head, tiny_root):
    address, base, session = other_head
    before = _drivers_of(session)
    run = _mahler("preprocess", str(tiny_root), env=_env(RAY_TMPDIR=base))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert MULTIPLE not in out
    assert "starting a local Ray" in out
    assert _drivers_of(session) == before, "the command joined the other head instead of its own Ray"
    assert (tiny_root / "CURRENT").is_file()


def test_ray_train_beside_another_head_finds_its_own_cluster(other_head, tmp_path):
    """Ray Train's PlacementGroupCleaner asks the state API for "the" cluster; with two heads
    on the machine plain `ray.init()` made it log ConnectionError: Found multiple active Ray
    instances. Also: the start-up waits set by ray_runtime are what the raylet runs under."""
    _, base, _ = other_head
    script = f"""
import os, time, ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from mahler_dist.ray_runtime import ray_runtime
with ray_runtime(None, configure_logging=False, log_to_driver=True) as gcs:
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    env = dict(l.split("=", 1) for l in open(f"/proc/{{raylet}}/environ").read().split("\\0") if "=" in l)
    print("RAYLET", env.get("RAY_gcs_server_port_wait_time_s"), env.get("RAY_raylet_start_wait_time_s"))
    print("SAME", gcs == ray.get_runtime_context().gcs_address == os.environ["RAY_ADDRESS"])
    TorchTrainer(lambda c: time.sleep(2), scaling_config=ScalingConfig(num_workers=1),
                 run_config=RunConfig(name="t", storage_path={str(tmp_path)!r})).fit()
print("AFTER", os.environ.get("RAY_ADDRESS"))
"""
    run = subprocess.run([PY, "-c", script], env=_env(RAY_TMPDIR=base, MAHLER_RAY_START_WAIT_S="240"),
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert MULTIPLE not in out
    assert "RAYLET 240 240" in out and "SAME True" in out and "AFTER None" in out


def test_ray_address_connects_to_that_cluster(other_head, tiny_root):
    address, base, session = other_head
    before = _drivers_of(session)
    run = _mahler("preprocess", str(tiny_root), env=_env(RAY_ADDRESS=address))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert f"connecting to the Ray cluster at {address} (from RAY_ADDRESS)" in out
    assert len(_drivers_of(session) - before) == 1


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_unreachable_address_is_a_clear_error_at_once(how, tiny_root):
    dead = f"127.0.0.1:{_free_port()}"
    args, env = (["--address", dead], _env()) if how == "--address" else ([], _env(RAY_ADDRESS=dead))
    t0 = time.monotonic()
    run = _mahler("preprocess", str(tiny_root), *args, env=env, timeout=120)
    took = time.monotonic() - t0
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"cannot reach the Ray cluster at {dead} (from {how})" in run.stderr
    assert "Traceback" not in run.stderr
    assert took < 25, f"{took:.0f} s"


def test_start_wait_settings_resolve():
    assert R.local_start_env({}) == {n: "180" for n in R.RAY_WAIT_SETTINGS}
    assert R.local_start_env({R.START_WAIT_ENV: "300"}) == {n: "300" for n in R.RAY_WAIT_SETTINGS}
    mine = {R.START_WAIT_ENV: "300", "RAY_raylet_start_wait_time_s": "50"}
    assert R.local_start_env(mine)["RAY_raylet_start_wait_time_s"] == "50"   # the user's own wins
    with pytest.raises(Exception, match=R.START_WAIT_ENV):
        R.start_wait_s({R.START_WAIT_ENV: "soon"})
    # the names are the ones Ray 2.60 reads (node.py for the GCS port; RayConfig for the raylet)
    import inspect

    import ray._private.node as node
    assert "RAY_gcs_server_port_wait_time_s" in inspect.getsource(node)
    so = next(Path(node.__file__).parents[1].glob("_raylet*.so")).read_bytes()
    assert b"raylet_start_wait_time_s" in so


def test_address_precedence():
    assert R.requested_address("h:1", {"RAY_ADDRESS": "e:2"}) == ("h:1", "--address")
    assert R.requested_address(None, {"RAY_ADDRESS": "e:2"}) == ("e:2", "RAY_ADDRESS")
    assert R.requested_address(None, {}) == (None, "")
