"""Shared fixtures: small analytic phantoms and a device switch for GPU variants."""

from __future__ import annotations

import pytest
import torch

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
