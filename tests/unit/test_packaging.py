"""A plain (non-editable) `pip install .` must carry everything the package reads at run time.

The install goes into a throwaway venv built from a copy of the checkout, then runs from a
directory outside the repository, so nothing can be found through the checkout by accident.
The throwaway venv sees this interpreter's site-packages (torch, yaml, setuptools, ...) through a
.pth line, so the install needs no network (--no-index --no-build-isolation --no-deps).
(`venv --system-site-packages` would not do: made from a venv, it exposes the *base* Python's
site-packages, not this venv's.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What a fresh clone would not have: local environments and build leftovers.
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "demo", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "wandb", "test_logs")


def _run(args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", WANDB_MODE="offline")
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


class Installed:
    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.outside = root / "elsewhere"      # the working directory for every command
        self.outside.mkdir()

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return Path(self.run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())

    def run_python(self, code: str) -> str:
        done = _run([self.python, "-c", code], self.outside)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    inst = Installed(tmp_path_factory.mktemp("packaging"))
    source = inst.root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    made = _run([sys.executable, "-m", "venv", "--without-pip", inst.venv], inst.root)
    assert made.returncode == 0, made.stderr
    host = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    venv_site = Path(inst.run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # Plain path lines: this venv's own .pth files (the editable hook of mahler_dist) stay unprocessed.
    (venv_site / "_host_site_packages.pth").write_text("\n".join(sorted(host)) + "\n")
    pip = _run([inst.python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--quiet", source], inst.outside, timeout=300)
    assert pip.returncode == 0, f"pip install of a copy of the checkout failed:\n{pip.stdout}\n{pip.stderr}"
    shutil.rmtree(source)              # from here on, only the installed copy exists
    return inst


def test_installed_cli_describes_a_preset_from_outside_the_repository(installed):
    from mahler_dist.config import load_config
    from mahler_dist.model.summary import describe_text

    done = _run([installed.venv / "bin" / "mahler", "describe", "--config", "small"], installed.outside)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s+total\s+[\d,]+\s", done.stdout, re.M), done.stdout
    # the installed preset is the repository's configs/small.yaml
    assert done.stdout.strip() == describe_text(load_config(REPO / "configs" / "small.yaml")).strip()


def test_installed_presets_live_in_site_packages(installed):
    site = installed.site_packages
    out = installed.run_python(
        "import mahler_dist.config as c\n"
        "for name in ('tiny', 'small', 'mahlernet'): print(c.resolve_config_path(name).resolve())\n")
    paths = [Path(line) for line in out.splitlines()]
    assert len(paths) == 3
    for path in paths:
        assert path.is_file()
        assert path.is_relative_to(site.resolve()), f"{path} is not inside {site}"
        assert not path.is_relative_to(REPO), path


def test_installed_package_has_every_module_and_preset(installed):
    site = installed.site_packages
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mahler_dist").rglob("*.py")}
    shipped = {p.relative_to(site).as_posix() for p in (site / "mahler_dist").rglob("*.py")}
    assert modules - shipped == set(), "modules missing from the installed package"
    presets = {p.name for p in (REPO / "configs").glob("*.yaml")}
    shipped_presets = {p.name for p in (site / "mahler_dist" / "configs").glob("*.yaml")}
    assert presets and presets == shipped_presets
    page = site / "mahler_dist" / "serve" / "static" / "index.html"      # the service's web page
    assert page.read_bytes() == (REPO / "mahler_dist" / "serve" / "static" / "index.html").read_bytes()


def test_a_checkout_that_shadows_the_install_uses_its_own_presets(installed):
    """A Ray job's working_dir (or PYTHONPATH=.) puts an uninstalled checkout before the
    installed package: importing the config must still work and read the checkout's presets."""
    out = installed.run_python(
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "import mahler_dist, mahler_dist.config as c\n"
        "print(mahler_dist.__file__); print(c.resolve_config_path('small').resolve())\n")
    module, preset = (Path(line) for line in out.splitlines())
    assert module.is_relative_to(REPO)
    assert preset == (REPO / "configs" / "small.yaml").resolve()
