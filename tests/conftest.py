"""Test-wide settings: no test may reach the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The test models are tiny: intra-op threads buy nothing, and on a shared 2-core machine two torch threads stall
# each other (measured 3-10x slower). One thread keeps the suite's run time steady.
import torch  # noqa: E402

torch.set_num_threads(1)
