"""Ray job: train (or resume) a run.

    ray job submit --working-dir . -- python jobs/train.py NAME --root ROOT --config configs/small.yaml --workers 4 --gpus

Same function and options as `mahler train`: --address, else RAY_ADDRESS (set by `ray job
submit`), else a new local Ray (mahler_dist/ray_runtime.py). The run name fixes the Ray Train run under
ROOT/runs, so re-submitting the same job resumes from its latest checkpoint.
"""

import sys

from mahler_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
