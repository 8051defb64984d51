"""`mahler serve NAME --root ROOT` and jobs/serve.py: deploy the generation app and keep it up.

On a local Ray (the default) the command serves until Ctrl-C or SIGTERM, then shuts Serve down.
With --address (or RAY_ADDRESS, as under `ray job submit`) it deploys onto that cluster; --detach
returns at once and leaves the app running there (`serve status`, `serve shutdown` manage it).
Everything a user can get wrong (ROOT, run name, port, replicas) is checked before Ray starts.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable

from mahler_dist.errors import MahlerError

APP_NAME = "mahler"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    num_gpus: float = 0.0
    cpus_per_replica: float = 1.0
    device: str = "auto"
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    request_timeout_s: float = 120.0
    detach: bool = False

    def check(self) -> None:
        errors = []
        if not 1 <= self.port <= 65535:
            errors.append(f"--port {self.port}: use 1..65535")
        if not 1 <= self.replicas <= 256:
            errors.append(f"--replicas {self.replicas}: use 1..256")
        if self.num_gpus < 0 or self.cpus_per_replica <= 0:
            errors.append("--num-gpus must be >= 0 and --cpus-per-replica > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            errors.append(f"--device {self.device!r}: use auto, cpu or cuda")
        if not 1 <= self.max_batch_size <= 256:
            errors.append(f"--max-batch-size {self.max_batch_size}: use 1 (off) .. 256")
        if self.request_timeout_s <= 0:
            errors.append("--request-timeout must be > 0 seconds")
        if errors:
            raise MahlerError("; ".join(errors))


def run_server(name: str, root: str, opts: ServeOptions, *, address: str | None = None,
               say: Callable[[str], None] = print, stop: threading.Event | None = None) -> None:
    from mahler_dist.ray_runtime import ray_runtime
    from mahler_dist import storage
    from mahler_dist.serve.catalog import ModelCatalog

    opts.check()
    root_path = storage.as_root(root)
    entry = ModelCatalog(root_path).lookup(name)          # a clear error before Ray starts
    with ray_runtime(address, say=say, log_to_driver=False):
        from ray import serve

        from mahler_dist.serve.app import GenerationService

        stop = stop or threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
            if threading.current_thread() is threading.main_thread() else None
        detached = False
        try:        # Ctrl-C at any point, deploying included, shuts down what was started
            serve.start(http_options={"host": opts.host, "port": opts.port,
                                      "request_timeout_s": opts.request_timeout_s})
            gpu = opts.num_gpus > 0
            app = GenerationService.options(
                num_replicas=opts.replicas,
                max_ongoing_requests=max(2 * opts.max_batch_size, 8),
                ray_actor_options={"num_cpus": opts.cpus_per_replica, "num_gpus": opts.num_gpus},
                user_config={"max_batch_size": opts.max_batch_size,
                             "batch_wait_timeout_s": opts.batch_wait_timeout_s},
            ).bind(str(root_path), entry.id, "cuda" if gpu and opts.device == "auto" else opts.device)
            serve.run(app, name=APP_NAME, route_prefix="/")
            url = f"http://{opts.host}:{opts.port}"
            say(f"serving {entry.id} ({opts.replicas} replica(s), {'GPU' if gpu else 'CPU'}) at {url}/  "
                f"- API: {url}/docs, models: {url}/v1/models")
            if opts.detach:
                detached = True
                say("detached: the app keeps running on the cluster (`serve shutdown` to stop it)")
                return
            # a shell's background job (`mahler serve ... &` in a script) starts with SIGINT
            # ignored, and Python keeps it so: say what does stop it
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
                say(f"SIGTERM to stop (kill {os.getpid()}): SIGINT is ignored in this background job")
            else:
                say("Ctrl-C to stop")
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if not detached:
                say("stopping the server")
                serve.shutdown()
