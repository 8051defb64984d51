"""Run by test_s3_multinode.py in its own process: the whole path with ROOT on a real S3 API
(moto on loopback), on a simulated 3-node Ray cluster (ray.cluster_utils.Cluster), through the
job functions (`mahler_dist.cli.main`, what jobs/*.py call). No local folder is shared between
the nodes' workers: ROOT and the Ray Train storage are s3:// URIs, and the driver's cache is
deleted before the resume, so the resume works from the bucket alone.

Prints one JSON line with what the test checks."""

import json
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # tests/: the S3 helper
from s3_server import s3_server, upload_folder  # noqa: E402

EXAMPLES = HERE.parents[1] / "examples" / "midi"


def main() -> None:
    cache = Path(tempfile.mkdtemp(prefix="mahler-cache-"))
    os.environ["MAHLER_CACHE_DIR"] = str(cache)
    os.environ.setdefault("WANDB_MODE", "offline")
    out: dict = {}
    with s3_server("mahler"):
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        cluster.add_node(num_cpus=2)
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        import ray

        ray.init(address=cluster.address, log_to_driver=False)
        try:
            run(out, cache)
            out["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(cache, ignore_errors=True)
    print("RESULT " + json.dumps(out))


def run(out: dict, cache: Path) -> None:
    from mahler_dist import storage
    from mahler_dist.cli import main as mahler
    from mahler_dist.data.shards import read_index

    root = "s3://mahler/project"
    out["uploaded"] = upload_folder(EXAMPLES, storage.join(root, "input"))
    assert mahler(["preprocess", root, "--shard-samples", "64", "--val", "0.2", "--test", "0"]) == 0
    index = read_index(root)
    out["shards"] = len(index["shardlist"])

    train = ["train", "s3run", "--root", root, "--config", "tiny", "--workers", "2", "--spread",
             "--max-failures", "0"]
    assert mahler([*train, "--epochs", "1"]) == 0
    run_uri = storage.join(root, "runs", "s3run")
    out["after_first"] = sorted(n for n in storage.Store(run_uri).children(storage.Store(run_uri).base))
    shutil.rmtree(cache)                                    # the resume has only the bucket
    assert mahler([*train, "--epochs", "2"]) == 0
    rows = [json.loads(line) for line in storage.read_bytes(storage.join(run_uri, "metrics.jsonl")).splitlines()]
    out["epoch_rows"] = [r["epoch"] for r in rows if r.get("kind") == "epoch"]
    out["starts"] = len(json.loads(storage.read_bytes(storage.join(run_uri, "data.json")))["starts"])
    out["piano_rolls"] = storage.Store(run_uri).children(storage.Store(run_uri).path("piano_rolls"))

    assert mahler(["generate", "s3run", "--root", root, "--type", "pred", "--units", "-", "--length", "2", "--seed", "1",
                   "--no-plot"]) == 0
    gen = storage.Store(storage.join(run_uri, "generated"))
    out["generated"] = [n for n in gen.children(gen.base) if n.endswith(".mid")]
    out["generated_mthd"] = storage.read_bytes(gen.uri(gen.path(out["generated"][0])))[:4].decode()

    out["served"] = serve_one_request(root)
    # nothing was written to a local ROOT: the only local files are the driver's cache
    out["local_project_dirs"] = [p for p in os.listdir(".") if p == "project" or p.startswith("s3:")]


def serve_one_request(root: str) -> dict:
    from ray import serve

    from mahler_dist.serve.app import build_app
    from mahler_dist.serve.probe import free_port, wait_http

    port = free_port()
    # one proxy: the simulated nodes share this machine's ports
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"root": root, "model": "s3run"}), name="mahler", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz")
        body = json.dumps({"mode": "pred", "bars": 2, "seed": 3}).encode()
        req = urllib.request.Request(url + "/v1/generate", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            reply = json.loads(resp.read())
        return {"status": resp.status, "model": reply.get("model"), "samples": len(reply.get("samples", []))}
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
