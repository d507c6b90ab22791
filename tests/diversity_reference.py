"""Independent reference computations of the diversity metrics (distinct-n, mean pairwise cosine distance), written
without the code under test, for tests/test_diversity.py and tests/test_evaluate.py."""

import itertools
import math
from collections import Counter

import numpy as np


def reference_distinct(texts, n):
    """Li et al. (2016) distinct-n written independently: Counter over zipped shifted word lists."""
    counts = Counter()
    for text in texts:
        tokens = text.lower().split()
        counts.update(zip(*(tokens[i:] for i in range(n))))
    total = sum(counts.values())
    return len(counts) / total if total else math.nan


def reference_pairwise_distance(vectors):
    """Mean 1 - cos over pairs i < j, with numpy, one pair at a time."""
    vectors = np.asarray(vectors, dtype=np.float64)
    distances = [1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in itertools.combinations(vectors, 2)]
    return float(np.mean(distances))
