"""Checkpoint cache keyed by a hash of everything that determines the weights.

The key covers the dataset (name, source, split), the architecture and its parameters (for a user's model:
``_target_``, its kwargs and the SHA-256 of the file that defines it), the training config, the seed, and a
fingerprint of the data and model code (``MODEL_CODE``) and the torch version. A user's model with a
checkpoint is not cached: the checkpoint is the source of its weights.
Checkpoints are written atomically and read with ``torch.load(weights_only=True)``, so a pickle that would
run code is refused.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evalxai._version import __version__
from evalxai.core.files import atomic_path, cache_root, code_fingerprint, content_key, write_json
from evalxai.models.custom import (
    CUSTOM_NAME,
    LIBRARY_FIELDS,
    build_custom,
    check_output_width,
    file_sha256,
    load_state,
    load_weights,
    model_kind,
    model_label,
    read_state_dict,
    source_fingerprint,
)
from evalxai.models.libraries import build_library_model, check_normalization, describe
from evalxai.models.text import token_logits
from evalxai.models.train import evaluate, evaluate_batches, train_model
from evalxai.models.zoo import build_model, data_inputs

if TYPE_CHECKING:
    from evalxai.data.base import Dataset

log = logging.getLogger(__name__)
STATS = {"hits": 0, "misses": 0}
# The parts of the package that determine trained weights (see ``evalxai.core.files.code_fingerprint``).
MODEL_CODE = ("data", "models")


def model_key(dataset: Dataset, model_cfg: dict, train_cfg: dict, seed: int) -> str:
    """Content key of a trained model."""
    return content_key({
        "dataset": dataset.name, "data": dataset.meta, "shape": list(dataset.input_shape),
        "classes": list(dataset.classes), "normalization": [dataset.mean, dataset.std],
        "model": model_cfg, "train": train_cfg, "seed": seed, "code": code_fingerprint(*MODEL_CODE), "format": 2,
    })


def model_identity(model_cfg: dict, checkpoint_sha256: str | None) -> str:
    """What tells two models apart, the seed aside: the model config (zoo name, arch, training; or ``_target_``,
    kwargs, training) with the checkpoint's SHA-256 in place of its path (and without training, which it skips)."""
    cfg = {k: v for k, v in model_cfg.items() if k not in ("checkpoint", "path")}
    if checkpoint_sha256:
        cfg.pop("train", None)
    return content_key({**cfg, "checkpoint_sha256": checkpoint_sha256})


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> None:
    """Load a cached state dict into ``model`` with weights-only unpickling; refuse anything else clearly."""
    model.load_state_dict(load_weights(path, f"checkpoint {path}", "it is corrupt or holds more than tensors; "
                                       "delete it and the model will be retrained"))


def get_model(dataset: Dataset, model_cfg: dict, train_cfg: dict | None = None, seed: int = 0,
              cache_dir: str | Path | None = None, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Return (model in eval mode, info) — loaded from the cache, or trained and stored.

    dataset: what the model is for and trained on (``evalxai.data.load_dataset``): input shape, classes, data.
    model_cfg: the model config (``conf/model/<name>.yaml``), as below.
    train_cfg: the training config; None: the one inside ``model_cfg``, else the trainer's defaults.
    seed: initialisation and training seed (part of the cache key).
    cache_dir: the cache root; None: the default (``evalxai.core.files.cache_root``).
    progress: show training progress.

    ``model_cfg`` is a zoo model (``name``, ``arch``), a user's model (``_target_``, ``kwargs``,
    ``checkpoint``, ``path``; see ``evalxai.models.custom``) or a library's (``library``: torchvision, timm,
    huggingface; see ``evalxai.models.libraries``); unknown keys and a ``_target_`` on a zoo model are
    errors. ``train_cfg`` is ``model.train`` (it may also be left inside ``model_cfg``).

    ``info`` holds ``label`` (the model's name in tables), ``kind`` ("zoo", "custom" or the library), the cache
    ``key``, ``cache_hit``, the ``identity`` (``model_identity``: the same for every seed), the ``test_accuracy``
    (streamed over the test split), and for a trained model the training time; a user's model adds ``target``,
    ``kwargs``, ``class``, ``checkpoint`` and ``checkpoint_sha256``; a library's model ``library``,
    ``library_version``, its resolved weights, ``class``, ``checkpoint`` and ``checkpoint_sha256``.

    Example:
        >>> from evalxai.data import load_dataset
        >>> model, info = get_model(load_dataset("digits"), {"name": "mlp"})  # doctest: +SKIP
        >>> info["kind"], info["label"]  # doctest: +SKIP
        ('zoo', 'mlp')
    """
    model_cfg = dict(model_cfg)
    kind = model_kind(model_cfg)
    inner = model_cfg.pop("train", None)
    if inner and train_cfg and dict(inner) != dict(train_cfg):
        raise ValueError(f"two training configs: model.train={dict(inner)} and train_cfg={dict(train_cfg)}")
    train_cfg = dict(train_cfg or inner or {})
    if kind == "custom":
        model, info = _get_custom(dataset, model_cfg, train_cfg, seed, cache_dir, progress)
        return model, {**info, "identity": model_identity({**model_cfg, "train": train_cfg}, info["checkpoint_sha256"])}
    if kind in LIBRARY_FIELDS:
        return _get_library(dataset, model_cfg, train_cfg, seed, cache_dir, progress)
    identity = model_identity({**model_cfg, "train": train_cfg}, None)
    name = model_cfg.pop("name")
    arch = model_cfg.get("arch", {}) or {}
    inputs = data_inputs(name, dataset)
    key = model_key(dataset, {"name": name, **model_cfg, **({"inputs": inputs} if inputs else {})}, train_cfg, seed)
    torch.manual_seed(seed)
    model = build_model(name, dataset.input_shape, dataset.num_classes, **inputs, **arch)
    model, info = _cached_or_trained(model, dataset, name, key, train_cfg, seed, cache_dir, progress, {})
    return model, {**info, "label": name, "kind": "zoo", "identity": identity}


def _cached_or_trained(model, dataset, stem: str, key: str, train_cfg: dict, seed: int, cache_dir, progress,
                       extra: dict) -> tuple[torch.nn.Module, dict]:
    """Load ``model``'s weights from ``<cache>/models/<stem>-<key>.pt``, or train it and store them."""
    folder = cache_root(cache_dir) / "models"
    ckpt, meta_path = folder / f"{stem}-{key}.pt", folder / f"{stem}-{key}.json"
    if ckpt.exists() and meta_path.exists():
        load_checkpoint(ckpt, model)
        model.eval()
        info = json.loads(meta_path.read_text())
        STATS["hits"] += 1
        log.info("model cache hit %s", ckpt.name)
        return model, {**info, "cache_hit": True, "key": key, "path": str(ckpt)}
    STATS["misses"] += 1
    log.info("model cache miss %s: training", ckpt.name)
    t0 = time.perf_counter()
    x_train, y_train = dataset.train_tensors()
    train_model(model, x_train, y_train, seed=seed, progress=progress, **train_cfg)
    seconds = time.perf_counter() - t0
    info = {**extra, "test_accuracy": evaluate_batches(model, dataset.test_batches()),
            "train_accuracy": evaluate(model, x_train, y_train),
            "train_seconds": round(seconds, 2), "evalxai_version": __version__,
            "code": code_fingerprint(*MODEL_CODE)}
    with atomic_path(ckpt) as tmp:
        torch.save(model.state_dict(), tmp)
    write_json(meta_path, info)
    return model, {**info, "cache_hit": False, "key": key, "path": str(ckpt)}


def _get_custom(dataset, cfg: dict, train_cfg: dict, seed: int, cache_dir, progress) -> tuple[torch.nn.Module, dict]:
    """A user's model: built from ``_target_(**kwargs)``; a checkpoint is used as is (no training, not cached),
    otherwise it is trained with ``train_cfg`` and cached under a key holding target, kwargs, its source and seed.
    """
    target, kwargs = cfg["_target_"], dict(cfg.get("kwargs") or {})
    checkpoint = cfg.get("checkpoint")
    torch.manual_seed(seed)  # initialisation follows the seed (when trained here)
    model, factory = build_custom(target, kwargs, cfg.get("path"))
    source = source_fingerprint(factory)
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    label = model_label(cfg.get("name"), model)
    extra = {"target": target, "kwargs": kwargs, "class": cls, "source": source}
    output_width(model, dataset, f"model._target_={target}",
                       f"set +model.kwargs.num_classes={dataset.num_classes} (or your class's argument for it)")
    if checkpoint is None:
        key = model_key(dataset, {"name": CUSTOM_NAME, "target": target, "kwargs": kwargs, "source": source},
                        train_cfg, seed)
        model, info = _cached_or_trained(model, dataset, CUSTOM_NAME, key, train_cfg, seed, cache_dir, progress,
                                         extra)
        return model, {**info, **extra, "label": label, "kind": "custom", "trained": True, "checkpoint": None,
                       "checkpoint_sha256": None}
    path = Path(str(checkpoint)).expanduser().resolve()
    state = read_state_dict(path)
    load_state(model, state, path)
    model.eval()
    sha = file_sha256(path)
    key = model_key(dataset, {"name": CUSTOM_NAME, "target": target, "kwargs": kwargs, "source": source,
                              "checkpoint_sha256": sha}, {}, None)
    log.info("model %s from checkpoint %s (sha256 %s): no training", label, path, sha[:12])
    return model, {**extra, "label": label, "kind": "custom", "trained": False, "checkpoint": str(path),
                   "checkpoint_sha256": sha, **_as_is(model, dataset, key)}


def _as_is(model: torch.nn.Module, dataset, key: str) -> dict:
    """The info of a model used with the weights it was given (not trained, not cached): its test accuracy."""
    t0 = time.perf_counter()
    accuracy = evaluate_batches(model, dataset.test_batches())
    return {"test_accuracy": accuracy, "eval_seconds": round(time.perf_counter() - t0, 2), "cache_hit": False,
            "key": key, "path": None, "evalxai_version": __version__, "code": code_fingerprint(*MODEL_CODE)}


def output_width(model: torch.nn.Module, dataset: Dataset, what: str, fix: str) -> None:
    """One input of the dataset must give (1, classes) logits: an image of its shape, or for text one row of token
    ids with its attention mask (``model(input_ids=, attention_mask=)``, as runs call a text model)."""
    if getattr(dataset, "modality", "image") != "text":
        check_output_width(model, dataset.input_shape, dataset.num_classes, what, fix)
        return
    ids = torch.full((1, *dataset.input_shape), int(dataset.tokenizer.pad_id), dtype=torch.int64)
    ids[0, 0] = dataset.tokenizer.cls_id if dataset.tokenizer.cls_id is not None else dataset.tokenizer.unk_id or 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = token_logits(model, ids, dataset.attention_mask(ids))
    except Exception as err:  # noqa: BLE001 - the model's forward: name the input it could not take
        raise RuntimeError(f"{what} cannot take one row of token ids {tuple(ids.shape)} as "
                           f"model(input_ids=, attention_mask=): {type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (1, dataset.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what} gives {got} for one sequence, the dataset has {dataset.num_classes} classes: {fix}")


def _get_library(dataset, cfg: dict, train_cfg: dict, seed: int, cache_dir, progress) -> tuple[torch.nn.Module, dict]:
    """A torchvision, timm or Hugging Face model: a checkpoint replaces its weights (used as is, nothing
    downloaded); complete pretrained weights are used as is; otherwise (no weights, or a new head on pretrained
    ones) it is trained with ``train_cfg`` and cached under a key holding the library, its version and the config."""
    checkpoint = cfg.get("checkpoint")
    torch.manual_seed(seed)  # initialisation follows the seed (a head or a model trained here)
    text = data_inputs(None, dataset) or None  # a text dataset: a sequence classifier on its token ids
    built = build_library_model(cfg, dataset.input_shape, dataset.num_classes, use_pretrained=checkpoint is None,
                                text=text)
    if built.folder is not None:  # weights read from a local folder: its content, file by file, names them
        built.record["weights_sha256"] = {p.name: file_sha256(p) for p in sorted(built.folder.iterdir()) if p.is_file()}
    model, library, what = built.model, cfg["library"], describe(cfg)
    k = dataset.num_classes
    if not built.pretrained:
        fix = f"set model.num_classes={k}"
    elif library == "torchvision":
        fix = (f"a pretrained head keeps its classes: give a model.checkpoint fine-tuned on the dataset, or drop "
               f"model.weights and set model.num_classes={k} to train one")
    else:
        fix = f"set model.num_classes={k} (a new head, trained with model.train) or give a fine-tuned model.checkpoint"
    output_width(model, dataset, what, fix)
    record = {**built.record, "label": built.label, "kind": library, "pretrained": built.pretrained,
              "num_classes": k}  # the head's outputs (checked above)
    ident = {k: v for k, v in cfg.items() if k != "train"}
    built_id = {k: v for k, v in built.record.items() if k != "source"}  # a folder's content, not its path
    base = {**built.record, "mean": cfg.get("mean"), "std": cfg.get("std")}
    if checkpoint is not None:
        path = Path(str(checkpoint)).expanduser().resolve()
        load_state(built.inner, read_state_dict(path), path,
                   f"build the model as it was when saved ({what}, model.num_classes, model.kwargs)")
        model.eval()
        sha = file_sha256(path)
        key = model_key(dataset, {**base, "checkpoint_sha256": sha}, {}, None)
        log.info("model %s from checkpoint %s (sha256 %s): no training", built.label, path, sha[:12])
        return model, {**record, "trained": False, "checkpoint": str(path), "checkpoint_sha256": sha,
                       "identity": model_identity({**ident, **built_id}, sha), **_as_is(model, dataset, key)}
    check_normalization(built, cfg, dataset.mean, dataset.std)
    record = {**record, "checkpoint": None, "checkpoint_sha256": None}
    if built.complete:
        model.eval()
        key = model_key(dataset, base, {}, None)
        log.info("model %s with its pretrained weights %s: no training", built.label, built.record)
        return model, {**record, "trained": False, "identity": model_identity({**ident, **built_id}, None),
                       **_as_is(model, dataset, key)}
    key = model_key(dataset, base, train_cfg, seed)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{library}-{built.label}")
    model, info = _cached_or_trained(model, dataset, stem, key, train_cfg, seed, cache_dir, progress, built.record)
    return model, {**info, **record, "trained": True,
                   "identity": model_identity({**ident, **built_id, "train": train_cfg}, None)}
