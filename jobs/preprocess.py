"""Ray job: preprocess a MIDI folder into shards.

    ray job submit --working-dir . -- python jobs/preprocess.py ROOT [--workers N] [--force]
    ray submit ray_cluster.yaml jobs/preprocess.py -- ROOT

Same function and options as `mahler preprocess`; runs on whatever cluster `ray.init()` finds
(RAY_ADDRESS, or a job's cluster), else on an embedded local Ray.
"""

import sys

from mahler_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
