"""Serve load: POST /v1/generate at a fixed concurrency on loopback, batching off against on.

    .venv/bin/python bench/serve_load.py [--root ROOT --model RUN] [--requests 300] [--concurrency 16]
        [--rounds 2] [--bars 8] [--batch 16] [--wait 0.02] [--out /tmp/serve_load.json]

The real Ray Serve app (mahler_dist/serve/app.py, one GenerationService replica on CPU) on a local
Ray started here (num_cpus=4, 127.0.0.1, a free port). Without --root/--model it builds a temporary
ROOT the way tests/serve_fixture.py does: examples/midi preprocessed (Ray Data), one tiny trained run
"tiny" (tests/tiny_runs.py), removed at the end. Each variant is the same deployment with another
user_config, applied in place by `reconfigure`:

  off   max_batch_size 1                      (every request decodes alone)
  on    max_batch_size --batch, batch_wait_timeout_s --wait

Each measurement: a few warm-up requests, then --requests {"mode": "pred", "bars": B, "samples": 1,
"seed": i} from a pool of --concurrency threads (one keep-alive HTTP session each). The variants
alternate over --rounds (off,on | on,off | ...) so drift on a noisy machine hits both. Reported:

  req/s          requests answered / wall-clock of the measurement
  p50/p90/p99    request latency in ms, as the client sees it (proxy + queue + batch wait + decode)
  errors         non-200 answers or failed requests (goal 0)
  batch (resp)   mean of the responses' batch_size (per request: how many shared its batch)
  batch (hz)     mean batch size from /healthz's counts (per batch), the measurement's delta only
  ratio          on/off of req/s (goal >= 3x) and of p50 latency, over all rounds together

Torch threads: the replica is one process with num_cpus=1, so Ray gives it OMP_NUM_THREADS=1 and
torch's default is one intra-op thread; this script leaves that alone (as `mahler serve` does).
The client threads share the machine with the replica, the proxy and the controller: on a 2-core
box the absolute figures are low, compare the ratio measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from mahler_dist.serve.probe import free_port, wait_http  # noqa: E402

EXAMPLES = REPO / "examples" / "midi"
APP_NAME = "mahler-bench"


def build_root(tmp: Path, steps: int) -> tuple[Path, str]:
    """examples/midi preprocessed + one tiny trained run (as tests/serve_fixture.py builds it)."""
    import torch

    from mahler_dist.config import DataConfig
    from mahler_dist.data.preprocess import preprocess
    from tiny_runs import train_tiny_run

    root = tmp / "root"
    shutil.copytree(EXAMPLES, root / "input", ignore=shutil.ignore_patterns("*.md"))
    t0 = time.perf_counter()
    preprocess(root, DataConfig(val_fraction=0.0, test_fraction=0.0, shard_samples=64), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # a busy small box: spin-waiting OpenMP threads slow it down
    try:
        train_tiny_run(root, "tiny", steps=steps, seed=0)
    finally:
        torch.set_num_threads(threads)
    print(f"temporary ROOT {root}: preprocessed and trained run 'tiny' ({steps} steps) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return root, "tiny"


def healthz_batches(url: str) -> dict[int, int]:
    import requests

    r = requests.get(url + "/healthz", timeout=30)
    r.raise_for_status()
    return {int(k): int(v) for k, v in r.json().get("batches", {}).items()}


def fire(url: str, n: int, concurrency: int, bars: int, seed0: int, timeout_s: float) -> dict:
    """n pred requests from `concurrency` threads; per-request latency, status and batch_size."""
    import requests

    local = threading.local()

    def one(i: int) -> tuple[float, int, int | None, str | None]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        body = {"mode": "pred", "bars": bars, "samples": 1, "seed": seed0 + i}
        t = time.perf_counter()
        try:
            r = local.session.post(url + "/v1/generate", json=body, timeout=timeout_s)
        except requests.RequestException as e:
            return time.perf_counter() - t, -1, None, f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t
        if r.status_code != 200:
            return dt, r.status_code, None, r.text[:300]
        try:
            return dt, 200, int(r.json().get("batch_size", 0)), None
        except ValueError as e:
            return dt, -2, None, f"unparsable 200 answer: {e}"

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "latency_s": [r[0] for r in results], "status": [r[1] for r in results],
            "batch_size": [r[2] for r in results if r[2] is not None],
            "error_messages": [m for m in (r[3] for r in results) if m][:5]}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(name: str, runs: list[dict]) -> dict:
    """Figures of one variant over its measurements (one per round)."""
    lat = [x for r in runs for x in r["latency_s"]]
    ok = sum(1 for r in runs for s in r["status"] if s == 200)
    n = sum(len(r["status"]) for r in runs)
    elapsed = sum(r["elapsed_s"] for r in runs)
    sizes = [b for r in runs for b in r["batch_size"]]
    hz: dict[int, int] = {}
    for r in runs:
        for k, v in r["healthz_delta"].items():
            hz[k] = hz.get(k, 0) + v
    batches = sum(hz.values())
    return {"variant": name, "requests": n, "ok": ok, "errors": n - ok, "elapsed_s": elapsed,
            "req_per_s": ok / elapsed if elapsed else 0.0,
            "p50_ms": 1000 * percentile(lat, 50), "p90_ms": 1000 * percentile(lat, 90),
            "p99_ms": 1000 * percentile(lat, 99),
            "mean_batch_resp": sum(sizes) / len(sizes) if sizes else float("nan"),
            "mean_batch_healthz": sum(k * v for k, v in hz.items()) / batches if batches else float("nan"),
            "max_batch_seen": max(hz) if hz else 0, "healthz_batches": {str(k): v for k, v in sorted(hz.items())}}


def row(label: str, rnd: str, s: dict) -> str:
    return (f"{label:<5} {rnd:>5} {s['requests']:>5} {s['req_per_s']:>7.2f} {s['p50_ms']:>8.0f} {s['p90_ms']:>8.0f} "
            f"{s['p99_ms']:>8.0f} {s['errors']:>6} {s['mean_batch_resp']:>7.2f} {s['mean_batch_healthz']:>7.2f} "
            f"{s['max_batch_seen']:>5}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="a preprocessed ROOT with a trained run (default: a temporary one)")
    ap.add_argument("--model", help="RUN or RUN/CHECKPOINT in --root (needed with --root)")
    ap.add_argument("--requests", type=int, default=300, help="measured requests per variant and round")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the variants' order alternates")
    ap.add_argument("--bars", type=int, default=8,
                    help="bars per request (8: a phrase; 2 is dominated by per-request HTTP work)")
    ap.add_argument("--batch", type=int, default=16, help="max_batch_size of the 'on' variant")
    ap.add_argument("--wait", type=float, default=0.02, help="batch_wait_timeout_s of the 'on' variant")
    ap.add_argument("--warmup", type=int, default=8, help="warm-up requests per measurement")
    ap.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, seconds")
    ap.add_argument("--tiny-steps", type=int, default=20, help="training steps of the temporary run")
    ap.add_argument("--out", default="/tmp/serve_load.json", help="the figures as JSON")
    args = ap.parse_args()
    if (args.root is None) != (args.model is None):
        ap.error("give --root and --model together (or neither, for a temporary ROOT)")
    if min(args.requests, args.concurrency, args.rounds, args.bars, args.batch) < 1:
        ap.error("--requests, --concurrency, --rounds, --bars and --batch must be >= 1")
    if os.environ.get("RAY_ADDRESS"):
        sys.exit("RAY_ADDRESS is set: this benchmark starts (and shuts down) its own local Ray; unset it")

    os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] = "30"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray import serve

    from mahler_dist.ray_runtime import ray_runtime

    variants = {"off": {"max_batch_size": 1, "batch_wait_timeout_s": args.wait},
                "on": {"max_batch_size": args.batch, "batch_wait_timeout_s": args.wait}}
    order = [v for r in range(args.rounds) for v in (("off", "on") if r % 2 == 0 else ("on", "off"))]
    load_before = os.getloadavg()
    tmp = None if args.root else Path(tempfile.mkdtemp(prefix="serve_load_"))
    measured: dict[str, list[dict]] = {"off": [], "on": []}
    t_all = time.perf_counter()
    try:
        # a NEW local Ray (address="local", the project's raised start-up waits), shut down on exit
        with ray_runtime(None, num_cpus=4, include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING"):
            try:
                if tmp is not None:
                    root, model = build_root(tmp, args.tiny_steps)
                else:
                    root, model = Path(args.root).resolve(), args.model
                from mahler_dist.serve.app import GenerationService

                port = free_port()
                serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
                url = f"http://127.0.0.1:{port}"
                print(f"serving {root} model {model} at {url}; order {','.join(order)}; {args.requests} "
                      f"requests x {args.bars} bars at concurrency {args.concurrency}", flush=True)
                for i, name in enumerate(order):
                    cfg = variants[name]
                    app = GenerationService.options(user_config=cfg).bind(str(root), model, "cpu")
                    serve.run(app, name=APP_NAME, route_prefix="/")
                    wait_http(url + "/healthz", timeout_s=120)
                    fire(url, args.warmup, min(args.concurrency, args.warmup), args.bars, 10**6, args.timeout)
                    before = healthz_batches(url)
                    res = fire(url, args.requests, args.concurrency, args.bars, i * args.requests, args.timeout)
                    after = healthz_batches(url)
                    res["healthz_delta"] = {k: after.get(k, 0) - before.get(k, 0)
                                            for k in after if after.get(k, 0) - before.get(k, 0) > 0}
                    res.update(variant=name, round=len(measured[name]) + 1, user_config=cfg,
                               load_avg=os.getloadavg()[0])
                    measured[name].append(res)
                    s = summarise(name, [res])
                    print(f"  {name} round {res['round']}: {s['req_per_s']:.2f} req/s, p50 {s['p50_ms']:.0f} ms, "
                          f"{s['errors']} errors, mean batch {s['mean_batch_healthz']:.2f} "
                          f"(load {res['load_avg']:.1f})", flush=True)
                    for m in res["error_messages"]:
                        print(f"    error: {m}", flush=True)
            finally:
                serve.shutdown()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = {name: summarise(name, runs) for name, runs in measured.items()}
    off, on = summary["off"], summary["on"]
    ratio_rps = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else float("nan")
    ratio_p50 = on["p50_ms"] / off["p50_ms"] if off["p50_ms"] else float("nan")
    print(f"\nserve load on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{load_before[0]:.1f} at start; {args.requests} requests x {args.bars} bars per measurement, "
          f"concurrency {args.concurrency}, 'on' = max_batch_size {args.batch}, wait {args.wait} s")
    print(f"{'var':<5} {'round':>5} {'reqs':>5} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'b resp':>7} {'b hz':>7} {'b max':>5}")
    for name in order[:2]:
        for res in measured[name]:
            print(row(name, str(res["round"]), summarise(name, [res])))
    for name in ("off", "on"):
        print(row(name, "all", summary[name]))
    verdict = "meets" if ratio_rps >= 3 else "below"
    print(f"on/off: req/s {ratio_rps:.2f}x ({verdict} the 3x goal), p50 latency {ratio_p50:.2f}x; "
          f"errors {off['errors'] + on['errors']} (goal 0); {time.perf_counter() - t_all:.0f} s in all")

    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "load_avg_start": load_before[0], "load_avg_end": os.getloadavg()[0]},
           "args": vars(args), "order": order, "summary": summary,
           "ratio": {"req_per_s_on_over_off": ratio_rps, "p50_on_over_off": ratio_p50},
           "rounds": [{k: v for k, v in r.items() if k not in ("latency_s", "status", "batch_size")}
                      | {"summary": summarise(r["variant"], [r])} for name in ("off", "on") for r in measured[name]]}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
