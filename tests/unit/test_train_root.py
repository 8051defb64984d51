"""`mahler train` with an object-store ROOT: a clear refusal, not a local folder named "s3:"."""

from __future__ import annotations

import os

import pytest

from mahler_dist.errors import MahlerError


@pytest.mark.parametrize("root", ["s3://bucket/mahler", "gs://bucket/mahler"])
def test_an_object_store_root_is_refused_by_name(root, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from mahler_dist.train.launch import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MahlerError, match=r"(s3|gs)://bucket/mahler: training needs a local"):
        train("run", root, "tiny")
    assert os.listdir(tmp_path) == []   # nothing was made under the working directory
