"""Jobs submitted as a user submits them: a Ray head started for this test on non-default ports
(`ray start --head --block`, stopped by its PID: `ray stop` would end every Ray on the machine),
then jobs/preprocess.py with `ray job submit --working-dir .` and jobs/train.py (tiny preset,
1 epoch) with `mahler submit` (the same submission, with the project's excludes and W&B settings
taken from the submitter's environment), each waited for and its outputs checked in ROOT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from mahler_dist.serve.probe import free_port
from mahler_dist.submit import EXCLUDES

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    temp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))   # short: Ray's socket paths have a length limit
    port, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "WANDB_MODE": "offline"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", "--num-cpus=4", "--include-dashboard=true",
         f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            break
        except OSError:
            assert head.poll() is None, head.stderr.read().decode()[-2000:]
            time.sleep(1)
    else:
        pytest.fail(f"the Ray head's dashboard {url} did not answer in 120 s")
    try:
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)   # the head and the processes it started, by our PID only
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(temp, ignore_errors=True)


def submit(url: str, env: dict, *job: str) -> str:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".",
           "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--", "python", *job]
    proc = subprocess.run(cmd, cwd=REPO, env={**env, "RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"},
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-4000:]
    return out


def test_preprocess_then_train_with_ray_job_submit(ray_head, tmp_path):
    url, env = ray_head
    root = tmp_path / "root"
    shutil.copytree(REPO / "examples" / "midi", root / "input", ignore=shutil.ignore_patterns("*.md"))
    out = submit(url, env, "jobs/preprocess.py", str(root), "--shard-samples", "64", "--val", "0.2", "--test", "0")
    assert "8 ok, 0 rejected" in out
    assert (root / "CURRENT").is_file()
    # The head runs with WANDB_MODE=offline; the submitter's WANDB_MODE=disabled must reach the job
    # through its runtime env (an offline run would leave RUN/wandb/).
    proc = subprocess.run(
        [str(BIN / "mahler"), "submit", "--address", url, "--", "python", "jobs/train.py", "submitted",
         "--root", str(root), "--config", "tiny", "--workers", "2", "--epochs", "1"],
        cwd=REPO, env={**env, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "run submitted: finished epoch 1" in out and " succeeded" in out, out[-4000:]
    run = root / "runs" / "submitted"
    assert (run / "checkpoint_epoch0001" / "state.pt").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1]
    assert not (run / "wandb").exists(), "the job ran with the head's WANDB_MODE, not the submitter's"
