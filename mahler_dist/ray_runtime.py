"""Which Ray a command runs on: the one every command (preprocess, train, jobs/*.py) enters.

    with ray_runtime(address, say=print):      # address: --address, else $RAY_ADDRESS, else None
        ...

1. Ray already initialised in this process (tests, a notebook): use it, leave it running.
2. An address (--address, else RAY_ADDRESS, as `ray job submit` sets): connect there. An
   unreachable address is a MahlerError naming it, after a short TCP check, not Ray's retries
   and traceback.
3. Otherwise start a NEW embedded local Ray (`address="local"`) and shut it down afterwards.
   Plain `ray.init()` would instead join the cluster that the last `ray start` on this machine
   recorded, someone else's.

Two things Ray 2.60 gets wrong on a machine that runs another Ray (read in the installed wheel):
- Ray Train's PlacementGroupCleaner (and other state-API callers) look the cluster up with
  `canonicalize_bootstrap_address_or_die(None)`, which greps `ps` for GCS processes and raises
  "ConnectionError: Found multiple active Ray instances" when there are two. So the job's
  runtime_env sets RAY_ADDRESS to our own GCS for every worker and actor, and this process gets
  it too while the runtime is open. For that, a local start picks its GCS port and node IP first.
- A local start waits a fixed 30 s for the GCS port file (ray/_private/node.py,
  RAY_gcs_server_port_wait_time_s) and the C++ side 30 s for the raylet
  (RAY_raylet_start_wait_time_s); on a loaded machine that is not enough. Both are raised to
  MAHLER_RAY_START_WAIT_S (default 180 s) unless the user set them. One 30 s wait is a literal in
  node.py (the raylet registering with the GCS) and cannot be set; when it fires the error says so.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Callable, Iterator

from mahler_dist.errors import MahlerError

START_WAIT_ENV = "MAHLER_RAY_START_WAIT_S"
DEFAULT_START_WAIT_S = 180
REACH_TIMEOUT_S = 5.0
# Ray's own names for its start-up waits (env RAY_<config name>), in seconds.
RAY_WAIT_SETTINGS = ("RAY_gcs_server_port_wait_time_s", "RAY_raylet_start_wait_time_s")
# Serve kills and restarts an HTTP proxy that is not ready in 5 s, which on a loaded 2-core
# machine fails `serve.start` ("actor killed by ray.kill"); 30 s unless the user sets it
SERVE_PROXY_WAIT = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")


def start_wait_s(environ: dict | None = None) -> int:
    """The start-up wait for a local Ray: $MAHLER_RAY_START_WAIT_S or 180 s."""
    environ = os.environ if environ is None else environ
    raw = environ.get(START_WAIT_ENV, "")
    if not raw:
        return DEFAULT_START_WAIT_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise MahlerError(f"{START_WAIT_ENV}={raw!r}: give a whole number of seconds > 0")
    return value


def local_start_env(environ: dict | None = None) -> dict[str, str]:
    """The Ray wait settings a local start runs under: the user's where set, else ours."""
    environ = os.environ if environ is None else environ
    wait = str(start_wait_s(environ))
    return {name: environ.get(name) or wait for name in RAY_WAIT_SETTINGS}


def requested_address(address: str | None, environ: dict | None = None) -> tuple[str | None, str]:
    """(address, where it came from): --address wins over RAY_ADDRESS; (None, "") for a local Ray."""
    environ = os.environ if environ is None else environ
    if address:
        return address, "--address"
    if environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""


def check_reachable(address: str, source: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """A TCP connect to HOST:PORT, so that a wrong address fails in seconds with its name.
    ("auto" and ray:// client addresses are left to Ray.)"""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MahlerError(f"Ray address {address!r} (from {source}): expected HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise MahlerError(f"cannot reach the Ray cluster at {address} (from {source}): {e}; "
                          "is its head running (`ray start --head`) and the port open?") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block; restore what was there before."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_runtime(address: str | None = None, *, say: Callable[[str], None] | None = None,
                **init_kwargs) -> Iterator[str]:
    """Enter the Ray this command runs on (see the module docstring); yields its GCS address.
    `init_kwargs` go to `ray.init` (logging options; num_cpus etc. only apply to a local start)."""
    import ray

    if ray.is_initialized():
        yield ray.get_runtime_context().gcs_address
        return
    target, source = requested_address(address)
    if target is not None:
        with _connected(ray, target, source, say, init_kwargs) as gcs:
            yield gcs
    else:
        with _local(ray, say, init_kwargs) as gcs:
            yield gcs


@contextlib.contextmanager
def _connected(ray, target: str, source: str, say, init_kwargs: dict) -> Iterator[str]:
    check_reachable(target, source)
    if say:
        say(f"connecting to the Ray cluster at {target} (from {source})")
    local_only = {"num_cpus", "num_gpus", "object_store_memory", "resources", "include_dashboard"}
    kwargs = {k: v for k, v in init_kwargs.items() if k not in local_only}
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        raise MahlerError(f"cannot connect to the Ray cluster at {target} (from {source}): {e}") from None
    try:
        gcs = ray.get_runtime_context().gcs_address
        with _env({"RAY_ADDRESS": gcs}):
            yield gcs
    finally:
        ray.shutdown()   # disconnects this driver; the cluster keeps running


@contextlib.contextmanager
def _local(ray, say, init_kwargs: dict) -> Iterator[str]:
    from ray._private.services import build_address, get_node_ip_address

    waits = local_start_env()
    ip = get_node_ip_address()
    gcs = build_address(ip, _free_port())
    if say:
        say(f"starting a local Ray (start-up wait {waits[RAY_WAIT_SETTINGS[0]]} s; "
            "--address or RAY_ADDRESS to use a cluster)")
    runtime_env = {"env_vars": {"RAY_ADDRESS": gcs}}
    # RAY_GCS_SERVER_PORT fixes the port Ray's Node gives the GCS, so RAY_ADDRESS is known first.
    proxy_wait = {SERVE_PROXY_WAIT[0]: os.environ.get(SERVE_PROXY_WAIT[0]) or SERVE_PROXY_WAIT[1]}
    with _env({**waits, **proxy_wait, "RAY_GCS_SERVER_PORT": gcs.rpartition(":")[2]}):
        try:
            ray.init(address="local", _node_ip_address=ip, runtime_env=runtime_env, **init_kwargs)
        except Exception as e:
            if "timed out during startup" in str(e):
                raise MahlerError(
                    f"the local Ray did not start: {e} (Ray waits a fixed 30 s for the raylet to "
                    "register; the machine is too loaded: retry, or start a head with `ray start "
                    "--head` and pass --address)") from None
            raise
    try:
        with _env({"RAY_ADDRESS": ray.get_runtime_context().gcs_address}):
            yield gcs
    finally:
        ray.shutdown()
