"""Ray job: evaluate a trained run (reconstruction, baselines, generated vs real statistics).

    ray job submit --working-dir . -- python jobs/evaluate.py NAME --root ROOT [--split test] [--pieces OTHER_ROOT]
    ray submit ray_cluster.yaml jobs/evaluate.py -- NAME --root ROOT

Same function and options as `mahler evaluate` (mahler_dist/evaluate/run.py): one Ray task per
shard, on the cluster of --address, else of RAY_ADDRESS (which `ray job submit` sets), else a new
local Ray.
"""

import sys

from mahler_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
