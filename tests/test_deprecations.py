"""The suite's guard against deprecation debt (tests/conftest.py): a FutureWarning or DeprecationWarning that our
code triggers fails the test; one a library raises inside itself does not."""

import importlib
import textwrap
import warnings

import pytest
from transformers.utils.deprecation import deprecate_kwarg


@deprecate_kwarg("old", "99.0", new_name="new")
def renamed(new=None):
    return new


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A third-party module (it lives under site-packages) that calls the deprecated keyword itself."""
    root = tmp_path / "site-packages"
    root.mkdir()
    (root / "fakelib_calls_deprecated.py").write_text(
        textwrap.dedent(
            """
            import warnings

            def uses_a_deprecated_keyword(function):
                return function(old=1)

            def warns_itself():
                warnings.warn("fakelib's own API is deprecated", FutureWarning, stacklevel=2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(root))
    return importlib.import_module("fakelib_calls_deprecated")


def test_our_call_of_a_deprecated_keyword_fails_and_names_the_call_site():
    with pytest.raises(FutureWarning, match=r"deprecated call made at tests/test_deprecations.py:\d+"):
        renamed(old=1)


def test_our_call_of_a_deprecated_library_function_fails(library):
    with pytest.raises(FutureWarning, match="fakelib's own API is deprecated"):
        library.warns_itself()


def test_a_library_calling_a_deprecated_keyword_inside_itself_only_warns(library):
    assert library.uses_a_deprecated_keyword(renamed) == 1  # recorded by pytest, not raised


def test_other_warnings_are_untouched():
    with pytest.warns(UserWarning, match="plain"):
        warnings.warn("plain", UserWarning, stacklevel=1)


def test_a_library_handing_a_deprecated_value_to_numpy_only_warns(library, tmp_path):
    """numpy warns from C code, attributed to the library line that called it: not our call."""
    module = tmp_path / "site-packages" / "fakelib_numpy.py"
    module.write_text("import numpy as np, torch\n\ndef convert():\n    return np.array(torch.ones(2) ** 0.5)\n")
    fakelib_numpy = importlib.import_module("fakelib_numpy")
    assert fakelib_numpy.convert().shape == (2,)


def test_a_deprecated_forward_keyword_through_module_call_is_ours():
    """transformers attributes a deprecated `forward` keyword to torch's `Module.__call__` (plumbing): the caller
    of the module is the call site (this is how `past_key_values` -> `cache` in transformers 5.24 is caught)."""
    import torch

    class Model(torch.nn.Module):
        @deprecate_kwarg("past_key_values", "99.0", new_name="cache")
        def forward(self, x, cache=None):
            return x

    with pytest.raises(FutureWarning, match=r"deprecated call made at tests/test_deprecations.py:\d+"):
        Model()(torch.ones(1), past_key_values=None)
