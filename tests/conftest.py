"""Shared fixtures: small analytic phantoms and a device switch for GPU variants."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network from nipype's version check in tests

from qsmbids.qsm.phantoms import head_phantom


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Unit-test volumes are small: one intra-op thread is faster and avoids oversubscribing CI's two cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def head64():
    """64³ piecewise-smooth head phantom at 1 mm (seed 0)."""
    return head_phantom((64, 64, 64), (1.0, 1.0, 1.0), seed=0)


@pytest.fixture(scope="session")
def head48_aniso():
    """48×48×32 head phantom with anisotropic 1×1×1.5 mm voxels."""
    return head_phantom((48, 48, 32), (1.0, 1.0, 1.5), seed=1)


@pytest.fixture(scope="session")
def sim_bids(tmp_path_factory):
    """A ``qsmbids-sim --preset test`` dataset (3 mm, 3 echoes, 1 subject, ground truth); treat as read-only."""
    from qsmbids.cli.sim import main as sim_main

    out = tmp_path_factory.mktemp("sim") / "ds"
    assert sim_main([str(out), "--preset", "test", "--seed", "3"]) == 0
    return out
