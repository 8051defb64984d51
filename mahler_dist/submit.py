"""`mahler submit -- python jobs/train.py ...`: `ray job submit --working-dir .` with what this
project needs, so a user does not assemble it by hand:

- the working dir is uploaded without .git, .venv, demo output, W&B folders and tests (Ray 2.60
  fails the job when it honours .gitignore - "Failed to download runtime_env file package" - so the
  upload ignores it and these `excludes` keep the package small: the upload cap is ~512 MiB);
- W&B credentials and settings (WANDB_API_KEY, ...) and any `--env NAME` are copied from the
  submitter's environment into the job's runtime env: never typed on a command line (where `ps`
  shows them) and never written to a file;
- the job's logs are followed until it ends, and the exit status is the job's. Ctrl-C leaves the
  job running on the cluster (jobs outlive their client) and says how to stop it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys

from mahler_dist.errors import MahlerError

#: not uploaded with the working dir (patterns as the runtime env's `excludes`, gitignore syntax)
EXCLUDES = [".git", ".venv", "demo", "wandb", "**/__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis",
            "tests", "bench/gpu_bars.npz"]
#: copied from the submitter's environment into the job's when set there
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_MODE", "WANDB_BASE_URL")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def job_runtime_env(working_dir: str = ".", env_names: tuple[str, ...] | list[str] = ()) -> dict:
    """The runtime env of a submitted job: the working dir, its excludes, and the named variables
    (FORWARDED_ENV plus `env_names`) that are set here, with their values from this environment."""
    missing = [n for n in env_names if n not in os.environ]
    if missing:
        raise MahlerError(f"--env {missing[0]}: not set in this environment (its value is read from here)")
    names = dict.fromkeys([*FORWARDED_ENV, *env_names])
    env_vars = {n: os.environ[n] for n in names if n in os.environ}
    return {"working_dir": working_dir, "excludes": list(EXCLUDES), **({"env_vars": env_vars} if env_vars else {})}


def submit(entrypoint: list[str], *, address: str | None = None, working_dir: str = ".",
           env_names: tuple[str, ...] | list[str] = (), wait: bool = True, submission_id: str | None = None,
           out=sys.stdout) -> int:
    """Submit `entrypoint` (argv) as a Ray job; follow its logs unless not `wait`. Returns 0 when
    the job succeeded (or was submitted, without `wait`), 1 when it failed or was stopped."""
    if not entrypoint:
        raise MahlerError("nothing to submit: give the job's command after --, e.g. "
                          "`mahler submit -- python jobs/train.py NAME --root ROOT`")
    if not os.path.isdir(working_dir):
        raise MahlerError(f"--working-dir {working_dir}: not a folder")
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    from ray.job_submission import JobStatus, JobSubmissionClient

    os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"   # read by the upload below (see the docstring)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MahlerError(f"--address {address}: no Ray Jobs API answers there ({e}); start or forward "
                          "the cluster's dashboard (e.g. `ray dashboard ray_cluster.yaml`)") from e
    job = client.submit_job(entrypoint=shlex.join(entrypoint), submission_id=submission_id,
                            runtime_env=job_runtime_env(working_dir, env_names))
    print(f"mahler submit: job {job} submitted to {address}", file=out, flush=True)
    if not wait:
        print(f"  follow it: ray job logs --follow {job} --address {address}", file=out, flush=True)
        return 0
    try:
        asyncio.run(_follow(client, job, out))
    except KeyboardInterrupt:
        print(f"\nmahler submit: stopped following; job {job} keeps running. Stop it with "
              f"`ray job stop {job} --address {address}`", file=out, flush=True)
        return 130
    status = client.get_job_status(job)
    print(f"mahler submit: job {job} {str(status.value).lower()}", file=out, flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


async def _follow(client, job: str, out) -> None:
    async for lines in client.tail_job_logs(job):
        print(lines, end="", file=out, flush=True)
