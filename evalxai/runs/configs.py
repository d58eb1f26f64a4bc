"""Where the configs live, and ``conf/method/<name>.yaml`` and ``conf/metric/<name>.yaml`` written from the registries.

The config tree is ``evalxai/conf`` (package data: a wheel carries it; the checkout's top-level ``conf`` is a link to
it, one copy). Paper reproductions are ``evalxai/experiments`` (``experiments`` in the checkout).

``python -m evalxai.runs.configs`` regenerates every file: registry keys equal config names, and each file holds
the registered defaults under a comment (the function's docstring; a file whose values already agree keeps
its own comment). tests/test_configs.py checks that files and registries agree.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from evalxai._paths import CONF, EXPERIMENTS  # noqa: F401  (where tests and users look them up)
from evalxai.methods import METHODS
from evalxai.metrics import METRICS


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def render(name: str, fn, defaults: dict) -> str:
    doc = (fn.__doc__ or name).strip().splitlines()[0]
    body = yaml.safe_dump({"name": name, **{k: _plain(v) for k, v in defaults.items()}}, sort_keys=False,
                          allow_unicode=True)
    return f"# {doc}\n{body}"


def write_all(conf: Path = CONF) -> list[Path]:
    written = []
    for group, registry in (("method", METHODS), ("metric", METRICS)):
        for name, spec in registry.items():
            path = conf / group / f"{name}.yaml"
            text = render(name, spec.fn, spec.defaults)
            if not path.exists() or yaml.safe_load(path.read_text()) != yaml.safe_load(text):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                written.append(path)
    return written


def main(argv=None) -> int:
    for p in write_all():
        print("wrote", p)
    return 0


if __name__ == "__main__":
    main()
