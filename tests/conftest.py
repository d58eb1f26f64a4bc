import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A private cache for the whole test session (datasets, models)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["EVALXAI_CACHE"] = str(path)
    return path


def no_hooks(model) -> bool:
    from evalxai.core.guard import _hook_count

    return _hook_count(model) == 0


@pytest.fixture(autouse=True)
def _one_thread_for_reference_tests(request):
    """Tests marked ``reference`` (many small models) run on one intra-op thread: small convolutions on two threads
    mostly wait for each other, and far more so on a busy machine (efficientnet_b0: 75 s against a few)."""
    if request.node.get_closest_marker("reference") is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
