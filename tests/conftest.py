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
