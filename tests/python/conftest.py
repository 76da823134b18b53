"""Fixtures of the parity tests: the reference libraries attnkit was ported from.

scripts/install-test-deps.sh installs them:
  attnhut 0.4.0  importable as ``attnhut`` (the venv's site-packages)
  attnhut 0.5.0  under .venv/refs/attnhut-0.5.0, loaded here as the module ``attnhut_v050``
                 (ATTNKIT_ATTNHUT_050 names another folder)
  attzoo 0.1.0   importable as ``attzoo``
A missing one skips its tests with the reason; nothing here is needed by the other tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ATTNHUT_050_DIR = Path(os.environ.get("ATTNKIT_ATTNHUT_050",
                                      REPO / ".venv" / "refs" / "attnhut-0.5.0"))
ATTNHUT_050_NAME = "attnhut_v050"

_cache: dict = {}


def _load_attnhut_040():
    try:
        mod = importlib.import_module("attnhut")
    except ImportError as e:
        return None, f"attnhut 0.4.0 is not installed ({e}); run scripts/install-test-deps.sh"
    version = getattr(mod, "__version__", "?")
    if version != "0.4.0":
        return None, f"the installed attnhut is {version}, not 0.4.0"
    return mod, ""


def _load_attnhut_050():
    init = ATTNHUT_050_DIR / "attnhut" / "__init__.py"
    if not init.exists():
        return None, (f"attnhut 0.5.0 is not under {ATTNHUT_050_DIR}; "
                      "run scripts/install-test-deps.sh")
    if ATTNHUT_050_NAME in sys.modules:
        return sys.modules[ATTNHUT_050_NAME], ""
    # Its modules import each other relatively, so the package loads under another name without
    # touching the 0.4.0 install.
    spec = importlib.util.spec_from_file_location(
        ATTNHUT_050_NAME, init, submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[ATTNHUT_050_NAME] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - any import failure means the oracle is unusable
        del sys.modules[ATTNHUT_050_NAME]
        return None, f"attnhut 0.5.0 does not import: {e!r}"
    if getattr(mod, "__version__", "?") != "0.5.0":
        return None, f"{init} is attnhut {getattr(mod, '__version__', '?')}, not 0.5.0"
    return mod, ""


def _load_attzoo():
    try:
        mod = importlib.import_module("attzoo")
    except Exception as e:  # noqa: BLE001 - e.g. a SyntaxError from 3.12-only syntax
        return None, f"attzoo 0.1.0 does not import ({e!r}); run scripts/install-test-deps.sh"
    if getattr(mod, "__version__", "?") != "0.1.0":
        return None, f"the installed attzoo is {mod.__version__}, not 0.1.0"
    return mod, ""


_LOADERS = {("attnhut", "0.4.0"): _load_attnhut_040,
            ("attnhut", "0.5.0"): _load_attnhut_050,
            ("attzoo", "0.1.0"): _load_attzoo}


def load_reference(library: str, version: str):
    """The reference library module, or pytest.skip with the reason it is unavailable."""
    key = (library, version)
    if key not in _cache:
        _cache[key] = _LOADERS[key]()
    mod, reason = _cache[key]
    if mod is None:
        pytest.skip(reason)
    return mod


@pytest.fixture(scope="session")
def attnhut_040():
    return load_reference("attnhut", "0.4.0")


@pytest.fixture(scope="session")
def attnhut_050():
    return load_reference("attnhut", "0.5.0")


@pytest.fixture(scope="session")
def attzoo():
    return load_reference("attzoo", "0.1.0")


@pytest.fixture(scope="session")
def attnkit():
    try:
        return importlib.import_module("attnkit")
    except ImportError as e:
        pytest.skip(f"the attnkit Python package is not built/installed ({e}); make pytest")


@pytest.fixture(scope="session")
def compat(attnkit):
    return importlib.import_module("attnkit.compat")


# ---------------------------------------------------------------------------------------------
# Running a reference in float64 all the way through
#
# attnhut casts some intermediate results to float32 whatever the input dtype: RoPE tables
# (rope.build_rope_cache), MiniMax's index scores and softmax, the differential and the
# compressed (HCA/CSA) softmaxes, and the index losses (.float() / .to(torch.float32)).
# Compared in float64, those casts alone give errors of 1e-7 to 1e-8, which would hide whether
# the math agrees. Inside ``reference_float64()`` a float64 tensor's .float() / .to(float32)
# keeps float64, and the RoPE tables are built in float64 (by our own function below), so the
# reference computes everything in float64. The shim is active only around reference calls.


def _rope_cache_float64(positions, dim, theta=10000.0, dtype=torch.float32):
    """cos/sin tables of rotate-half RoPE (cat(f, f) layout), computed in float64."""
    if dim % 2:
        raise ValueError(f"RoPE dim must be even, got {dim}")
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
    angles = positions.to(torch.float64).unsqueeze(-1) * torch.pow(float(theta), -exponent)
    table = torch.cat([angles, angles], dim=-1)
    return table.cos().to(dtype), table.sin().to(dtype)


@contextlib.contextmanager
def reference_float64():
    orig_float, orig_to = torch.Tensor.float, torch.Tensor.to

    def keep_float64(self, *args, **kwargs):
        if self.dtype == torch.float64:
            return self
        return orig_float(self, *args, **kwargs)

    def to_keeping_float64(self, *args, **kwargs):
        if self.dtype == torch.float64:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
        return orig_to(self, *args, **kwargs)

    patched = []
    for name, module in list(sys.modules.items()):
        root = name.split(".")[0]
        if (root == "attnhut" or root == ATTNHUT_050_NAME) and hasattr(module, "build_rope_cache"):
            patched.append((module, module.build_rope_cache))
            module.build_rope_cache = _rope_cache_float64
    torch.Tensor.float, torch.Tensor.to = keep_float64, to_keeping_float64
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = orig_float, orig_to
        for module, fn in patched:
            module.build_rope_cache = fn


@pytest.fixture
def float64_reference():
    return reference_float64
