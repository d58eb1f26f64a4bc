import contextlib
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


@contextlib.contextmanager
def one_intra_op_thread():
    """torch on one intra-op thread, restored afterwards: small tensors on two threads mostly wait for each other,
    and far more so on a busy machine (efficientnet_b0: 75 s against a few)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """A module's tests on one intra-op thread (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with one_intra_op_thread():
        yield


@pytest.fixture(autouse=True)
def _one_thread_for_reference_tests(request):
    """Tests marked ``reference`` (many small models) run on one intra-op thread."""
    if request.node.get_closest_marker("reference") is None:
        yield
        return
    with one_intra_op_thread():
        yield
