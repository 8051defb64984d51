"""Ray job: preprocess a MIDI folder into shards.

    ray job submit --working-dir . -- python jobs/preprocess.py ROOT [--workers N] [--force]
    ray submit ray_cluster.yaml jobs/preprocess.py -- ROOT

Same function and options as `mahler preprocess` (mahler_dist/ray_runtime.py): runs on the
cluster of --address, else of RAY_ADDRESS (which `ray job submit` sets), else on a new local Ray.
"""

import sys

from mahler_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
