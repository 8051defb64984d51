"""One run-name rule: train and generate (and serve) accept and refuse the same names."""

from __future__ import annotations

import pytest

from mahler_dist.errors import MahlerError
from mahler_dist.generate.runs import run_dir
from mahler_dist.train.launch import check_run_name as train_check

GOOD = ["small", "run-1", "Run_2.b", "a", "x" * 100, "v1.0", "9lives"]
BAD = ["", ".", "..", "a..b", "../x", "x/y", "x\\y", "/abs", ".hidden", "-rm", "_x", "x" * 101,
       "ünïcode", "名前", "tab\tname", "space name", "nl\n", "x\n", "C:", "a:b", "\x00"]


def _train_accepts(name: str) -> bool:
    try:
        train_check(name)
        return True
    except MahlerError:
        return False


def _generate_accepts(name: str, root) -> bool:
    """generate's check comes before its "no such run" check: an invalid name says so."""
    try:
        run_dir(root, name)
        return True
    except MahlerError as e:
        return "invalid run name" not in str(e)


@pytest.mark.parametrize("name", GOOD + BAD)
def test_train_and_generate_agree(name, tmp_path):
    assert _train_accepts(name) == _generate_accepts(name, tmp_path), name


@pytest.mark.parametrize("name", GOOD)
def test_good_names_are_accepted(name, tmp_path):
    assert _train_accepts(name)
    (tmp_path / "runs" / name).mkdir(parents=True)
    assert run_dir(tmp_path, name) == tmp_path / "runs" / name


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_naming_the_name(name, tmp_path):
    with pytest.raises(MahlerError, match="invalid run name"):
        train_check(name)
    with pytest.raises(MahlerError, match="invalid run name"):
        run_dir(tmp_path, name)
