"""Run by test_train.py in its own process: the tiny preset on a simulated two-node cluster.

A separate process because `ray.cluster_utils.Cluster` starts its own Ray, which must not meet
the test session's Ray in one driver. Prints one JSON line with what the test checks.
"""

import json
import os
import sys
from pathlib import Path

from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/: the test observers
from train_observers import KeyRecorder  # noqa: E402


def main(root: str, keys_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    import ray

    ray.init(address=cluster.address)
    try:
        from mahler_dist.train.launch import train

        summary = train("twonode", root, "tiny", workers=2, epochs=1, placement="SPREAD",
                        observers=[KeyRecorder(keys_dir)])
        print(json.dumps({"epochs_done": summary.epochs_done, "nodes": len(ray.nodes())}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
