"""Ray job: serve a trained run's model with Ray Serve (HTTP JSON/MIDI API and a web page).

    ray job submit --working-dir . -- python jobs/serve.py NAME --root ROOT --host 0.0.0.0 --detach
    ray submit ray_cluster.yaml jobs/serve.py -- NAME --root ROOT --host 0.0.0.0 --replicas 2 --num-gpus 1

Same options as `mahler serve` (mahler_dist/serve/launch.py). Under `ray job submit`, RAY_ADDRESS
points at the cluster: with --detach the job deploys the app and ends, leaving it running there;
without, the job holds the app until it is stopped (`ray job stop`). For a declarative deploy use
`serve deploy configs/serve.yaml` instead.
"""

import sys

from mahler_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
