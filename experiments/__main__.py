"""`python -m promptgym.experiments ARGS` = `promptgym ARGS`: the entry for launchers that run a module, e.g.

    accelerate launch --num_processes 2 -m promptgym.experiments train --config tiny
    torchrun --nproc_per_node 2 -m promptgym.experiments train ...
"""

import sys

from promptgym.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
