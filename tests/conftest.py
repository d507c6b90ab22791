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


# ------------------------------------------------------------------------------------ no deprecation debt
# A FutureWarning or DeprecationWarning that *our* code triggers (a promptgym module or a test calls something a
# library deprecates) fails the test, so the next library release cannot break the project silently. Warnings a
# library triggers inside itself (peft reading a deprecated transformers property, diffusers handing numpy a torch
# tensor) are not ours to fix: pytest still records and prints them. Python attributes a warning to a frame (its
# `filename:lineno`, chosen by the library's `stacklevel`); when that frame is only call plumbing (torch's
# `Module.__call__`, to which transformers attributes a deprecated keyword of `forward`), the caller outside it is
# the call site.
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEBT = (FutureWarning, DeprecationWarning)
PLUMBING = {"functools", "contextlib", "torch"}  # packages whose frames only pass a call on


def _top_package(frame) -> str:
    return frame.f_globals.get("__name__", "").split(".")[0]


def _is_ours(frame) -> bool:
    path = Path(frame.f_code.co_filename)
    return path.is_relative_to(REPO_ROOT) and "site-packages" not in path.parts


def deprecated_call_site(frame, filename: str, lineno: int):
    """The frame a warning is attributed to (the first one, going out from `frame`, at `filename:lineno`), or the
    first caller outside `PLUMBING` when it is plumbing; None when no frame of the stack matches."""
    while frame is not None and (frame.f_code.co_filename, frame.f_lineno) != (filename, lineno):
        frame = frame.f_back
    while frame is not None and _top_package(frame) in PLUMBING:
        frame = frame.f_back
    return frame


@pytest.fixture(autouse=True)
def deprecations_from_our_code_are_errors():
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        site = deprecated_call_site(sys._getframe(1), filename, lineno) if issubclass(category, DEBT) else None
        if site is not None and _is_ours(site):
            where = f"{Path(site.f_code.co_filename).relative_to(REPO_ROOT)}:{site.f_lineno}"
            raise category(f"{message} (deprecated call made at {where}; see tests/conftest.py)")
        record = getattr(warnings, "_showwarnmsg_impl", None)  # pytest's recorder while it captures warnings
        if previous is warnings._showwarning_orig and record is not None:
            record(warnings.WarningMessage(message, category, filename, lineno, file, line))
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = previous


# ------------------------------------------------------------------------------------ shared fixtures
@pytest.fixture(scope="module")
def tok():
    """The embedded default tokenizer (a test module may define its own `tok`)."""
    from promptgym.envs import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="module")
def valued_policy(tok):
    """The seeded tiny policy with a non-zero value head and its KL reference frozen (`agent_helpers`)."""
    from agent_helpers import valued_tiny_policy

    return valued_tiny_policy(tok)
