"""`mahler submit`'s runtime env: values come from the submitter's environment, never argv or files."""

from __future__ import annotations

import pytest

from mahler_dist.cli import main
from mahler_dist.errors import MahlerError
from mahler_dist.submit import EXCLUDES, job_runtime_env


def test_the_runtime_env_forwards_wandb_settings_and_named_variables(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k-123")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.5:9000")
    env = job_runtime_env(".", ["AWS_ENDPOINT_URL"])
    assert env["working_dir"] == "." and env["excludes"] == EXCLUDES and ".venv" in EXCLUDES
    assert env["env_vars"]["WANDB_API_KEY"] == "k-123" and env["env_vars"]["AWS_ENDPOINT_URL"] == "http://10.0.0.5:9000"
    assert "WANDB_ENTITY" not in env["env_vars"]   # unset here: not sent as an empty value


def test_a_named_variable_that_is_not_set_is_an_error_naming_it(monkeypatch):
    monkeypatch.delenv("MAHLER_NOT_SET", raising=False)
    with pytest.raises(MahlerError, match="--env MAHLER_NOT_SET: not set"):
        job_runtime_env(".", ["MAHLER_NOT_SET"])


def test_submit_without_a_command_or_cluster_says_what_is_missing(capsys, tmp_path):
    assert main(["submit"]) == 2
    assert "give the job's command after --" in capsys.readouterr().err
    assert main(["submit", "--working-dir", str(tmp_path / "nope"), "--", "python", "jobs/train.py"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_an_address_where_no_ray_answers_is_named(capsys):
    from mahler_dist.serve.probe import free_port

    address = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", "--address", address, "--", "python", "jobs/train.py"]) == 2
    assert f"--address {address}: no Ray Jobs API answers there" in capsys.readouterr().err
