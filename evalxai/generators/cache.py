"""Generators by config name (``conf/generator/<name>.yaml``): trained once on the dataset's train split, cached.

The cache key covers the dataset (name, source, split, shape), the architecture, the training config, the seed,
and a fingerprint of the data and generator code with the torch version, as for the zoo models
(``evalxai.models.cache``). Checkpoints are state dicts written atomically and read back with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
import time

import torch
import yaml

from evalxai._paths import CONF
from evalxai._version import __version__
from evalxai.core.files import atomic_path, cache_root, code_fingerprint, content_key, write_json
from evalxai.generators.vae import VAE, Generator, train_vae
from evalxai.models.custom import load_weights

log = logging.getLogger(__name__)
# The parts of the package that determine a generator's weights.
GENERATOR_CODE = ("data", "generators")
FIELDS = ("name", "kind", "dataset", "arch", "train", "seed")
KINDS = {"vae": VAE}


def available() -> list[str]:
    return sorted(p.stem for p in (CONF / "generator").glob("*.yaml"))


def generator_config(name: str) -> dict:
    """The fields of ``conf/generator/<name>.yaml``."""
    path = CONF / "generator" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown generator '{name}': choose one of {available()} (conf/generator/), or pass a "
                         "config mapping")
    return yaml.safe_load(path.read_text())


def default_dataset(name: str, cache_dir=None):
    """The dataset of ``conf/dataset/<name>.yaml`` with its default fields."""
    from omegaconf import OmegaConf

    from evalxai.data import load_dataset

    path = CONF / "dataset" / f"{name}.yaml"
    fields = yaml.safe_load(path.read_text()) if path.exists() else {"name": name}
    # defaults such as mean: ${oc.select:model.mean,null} resolve as without a model (to null)
    fields = OmegaConf.to_container(OmegaConf.create({"dataset": fields}), resolve=True)["dataset"]
    fields.pop("name", None)
    return load_dataset(name, cache_dir=cache_dir, **fields)


def generator_key(dataset, cfg: dict) -> str:
    """Content key of a trained generator."""
    return content_key({
        "dataset": dataset.name, "data": dataset.meta, "shape": list(dataset.input_shape),
        "kind": cfg["kind"], "arch": cfg.get("arch") or {}, "train": cfg.get("train") or {},
        "seed": int(cfg.get("seed", 0)), "code": code_fingerprint(*GENERATOR_CODE), "format": 1,
    })


def get_generator(config: str | dict = "vae_mnist", dataset=None, cache_dir=None, progress: bool = True) -> Generator:
    """The generator g of code-space activation maximization, in eval mode: loaded from
    ``<cache>/generators/<name>-<key>.pt`` or trained on ``dataset``'s train split and stored.

    ``config``: a name in ``conf/generator/`` or its fields (``name``, ``kind``, ``dataset``, ``arch``, ``train``,
    ``seed``). ``dataset``: the loaded dataset (default: ``conf/dataset/<config.dataset>.yaml``); its name must be
    the config's. ``generator.info`` holds the key, the path, ``cache_hit``, the training time and the test split's
    reconstruction error (mean squared pixel error) and -ELBO (nats per image).
    """
    cfg = generator_config(config) if isinstance(config, str) else dict(config)
    unknown = sorted(set(cfg) - set(FIELDS))
    if unknown:
        raise ValueError(f"generator config has unknown field(s) {unknown}: it takes {list(FIELDS)}")
    kind = cfg.get("kind", "vae")
    if kind not in KINDS:
        raise ValueError(f"generator kind '{kind}' is unknown: choose one of {sorted(KINDS)}")
    cfg["kind"] = kind
    name = cfg.get("name") or f"{kind}_{cfg.get('dataset')}"
    if dataset is None:
        if not cfg.get("dataset"):
            raise ValueError(f"generator '{name}' names no dataset: set its field dataset or pass dataset=")
        dataset = default_dataset(cfg["dataset"], cache_dir)
    elif cfg.get("dataset") and cfg["dataset"] != dataset.name:
        raise ValueError(f"generator '{name}' is for dataset '{cfg['dataset']}', not '{dataset.name}': choose "
                         f"generator=vae_{dataset.name} (conf/generator/) or write one for this dataset")
    key = generator_key(dataset, cfg)
    torch.manual_seed(int(cfg.get("seed", 0)))
    vae = KINDS[kind](dataset.input_shape, **(cfg.get("arch") or {}))
    folder = cache_root(cache_dir) / "generators"
    ckpt, meta_path = folder / f"{name}-{key}.pt", folder / f"{name}-{key}.json"
    if ckpt.exists() and meta_path.exists():
        vae.load_state_dict(load_weights(ckpt, f"generator checkpoint {ckpt}", "it is corrupt or holds more than "
                                         "tensors; delete it and the generator will be retrained"))
        vae.eval()
        info = {**json.loads(meta_path.read_text()), "cache_hit": True}
        log.info("generator cache hit %s", ckpt.name)
    else:
        log.info("generator cache miss %s: training", ckpt.name)
        t0 = time.perf_counter()
        x_train, _ = dataset.train_pixels()
        train_vae(vae, x_train, seed=int(cfg.get("seed", 0)), progress=progress, **(cfg.get("train") or {}))
        seconds = time.perf_counter() - t0
        info = {"train_seconds": round(seconds, 2), **_test_scores(vae, dataset), "evalxai_version": __version__,
                "code": code_fingerprint(*GENERATOR_CODE), "config": cfg}
        with atomic_path(ckpt) as tmp:
            torch.save(vae.state_dict(), tmp)
        write_json(meta_path, info)
        info = {**info, "cache_hit": False}
    gen = Generator(vae, dataset.mean, dataset.std).eval()
    gen.info = {**info, "name": name, "key": key, "path": str(ckpt)}
    return gen


@torch.no_grad()
def _test_scores(vae: VAE, dataset, batch_size: int = 500) -> dict:
    """Mean reconstruction error (squared pixel error at z = mu) and mean -ELBO (one seeded draw) on the test split."""
    gen = torch.Generator().manual_seed(0)
    mse = nelbo = n = 0.0
    for i in range(0, len(dataset), batch_size):
        x, _ = dataset.test_pixels(list(range(i, min(i + batch_size, len(dataset)))))
        mse += (vae.decode(vae.encode(x)[0]) - x).pow(2).flatten(1).mean(1).sum().item()
        nelbo += vae.neg_elbo(x, torch.randn(len(x), vae.latent_dim, generator=gen)).sum().item()
        n += len(x)
    return {"test_recon_mse": mse / max(n, 1), "test_neg_elbo": nelbo / max(n, 1)}
