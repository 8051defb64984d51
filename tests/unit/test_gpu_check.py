"""bench/gpu_check.py is the one script a GPU session runs, on a machine whose Python has
PyTorch and numpy only: CI runs it here with exactly those two (and torch's own requirements)
importable, on the CPU, in its --quick form."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _requirements(dist: str, seen: set[str]) -> set[str]:
    """`dist` and what it requires (no extras), recursively."""
    key = dist.lower().replace("_", "-")
    if key in seen:
        return seen
    seen.add(key)
    for req in metadata.requires(dist) or ():
        if "extra ==" in req:
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue   # a platform-only requirement (e.g. CUDA wheels) not installed here
        _requirements(name, seen)
    return seen


def _torch_numpy_only(tmp: Path) -> Path:
    """A folder holding links to torch, numpy and torch's requirements, nothing else."""
    site = tmp / "site"
    site.mkdir()
    for dist_name in _requirements("torch", set()) | {"numpy"}:
        dist = metadata.distribution(dist_name)
        tops = (dist.read_text("top_level.txt") or "").split()
        files = [str(f) for f in dist.files or ()]
        tops = tops or sorted({f.split("/")[0].removesuffix(".py") for f in files
                               if not f.split("/")[0].endswith((".dist-info", ".data")) and "__pycache__" not in f})
        for top in tops:
            for candidate in (top, f"{top}.py", f"{top}.libs"):
                src = Path(dist.locate_file(candidate))
                if src.exists() and not (site / candidate).exists():
                    (site / candidate).symlink_to(src)
    return site


def test_gpu_check_runs_with_torch_and_numpy_only(tmp_path):
    site = _torch_numpy_only(tmp_path)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-S", "-c", "import yaml"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "PyYAML must not be importable in this environment"
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-S", str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {(r["preset"], r["precision"]) for r in report["train"]} == \
           {(p, x) for p in ("small", "mahlernet") for x in ("bf16", "fp32")}
    for row in report["train"]:
        assert row["nan_free"] and row["events_per_s"] > 0 and row["lstm_dtype"] == ["torch.float32"]
    assert set(report["generate"]) == {"small", "mahlernet"}
    assert report["allreduce"]["correct"] and report["allreduce"]["backend"] == "gloo"
