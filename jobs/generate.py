"""Ray job (or plain script): generate with a trained run.

    ray job submit --working-dir . -- python jobs/generate.py NAME --root ROOT --type pred --units - -C

Same function and options as `mahler generate` (no Ray needed: it runs where it is started).
"""

import sys

from mahler_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
