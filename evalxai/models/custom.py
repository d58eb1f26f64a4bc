"""A user's model (``model=custom``): any importable callable that returns an ``nn.Module``.

Config fields (``conf/model/custom.yaml``)::

    name: custom        # the model's readable name in tables; "custom" (the default): the class name
    _target_: null      # "pkg.mod.Class", "pkg.mod.factory" or "pkg.mod:attr" (a class or a factory)
    kwargs: {}          # keyword arguments of the call, e.g. +model.kwargs.num_classes=10
    checkpoint: null    # a state dict (torch.save(model.state_dict(), PATH)): used as is, no training
    path: null          # a folder put on sys.path for the import (the folder of the user's module file)
    train: {...}        # training config, used only without a checkpoint (as for the zoo models)

Zoo models (``conf/model/{mlp,lenet,vgg_bn,resnet_small}.yaml``) take ``name``, ``arch`` and ``train``; the
library models (``model=torchvision``, ``timm``, ``huggingface``) their ``LIBRARY_FIELDS``
(``evalxai.models.libraries``). Any other key is an error naming it, and a ``_target_`` on a zoo or library model
is refused, never dropped.

A checkpoint is read with ``torch.load(weights_only=True)``: a state dict, or a dict holding one under
``state_dict``, ``model`` or ``model_state_dict`` (a training script's checkpoint). It must fit the module exactly
(an error lists the missing and unexpected keys and the shape mismatches); wrapper prefixes ``module.``
(DataParallel, DistributedDataParallel) and ``model.`` (a Lightning module, ``LogitsOnly``) are stripped.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalxai.models.libraries import LIBRARY_FIELDS
from evalxai.models.zoo import MODELS

log = logging.getLogger(__name__)

ZOO_FIELDS = ("name", "arch", "train")
CUSTOM_FIELDS = ("name", "_target_", "kwargs", "checkpoint", "path", "train")
CUSTOM_NAME = "custom"  # conf/model/custom.yaml's name: the model is named by its class
STATE_KEYS = ("state_dict", "model", "model_state_dict")  # where training scripts keep the state dict
PREFIXES = ("module.", "model.")  # wrapper prefixes stripped from a checkpoint's keys


def model_kind(model_cfg: Mapping) -> str:
    """"zoo", "custom" or the library ("torchvision", "timm", "huggingface") of a model config; refuses unknown
    keys and a ``_target_`` on a zoo or library model."""
    name, target, library = model_cfg.get("name"), model_cfg.get("_target_"), model_cfg.get("library")
    if library is not None:
        if library not in LIBRARY_FIELDS:
            raise ValueError(f"model.library={library} is not one of {sorted(LIBRARY_FIELDS)} (model=torchvision, "
                             "model=timm or model=huggingface set it)")
        accepted = LIBRARY_FIELDS[library]
        if target is not None:
            raise ValueError(f"model={library} takes no _target_ (got _target_={target}): use model=custom "
                             f"model._target_={target} for your own model, or drop the _target_")
        unknown = sorted(str(k) for k in model_cfg if k not in accepted)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in the model config of model={library}: accepted are "
                             f"{list(accepted)}")
        if not isinstance(model_cfg.get("kwargs") or {}, Mapping):
            raise ValueError(f"model.kwargs must be a map of keyword arguments, got {model_cfg.get('kwargs')!r}")
        return str(library)
    if target is not None and name in MODELS:
        raise ValueError(
            f"model '{name}' is a zoo model and takes no _target_ (got _target_={target}): use model=custom "
            f"model._target_={target} for your own model, or drop the _target_ to use the zoo's {name}"
        )
    if target is None:
        if name == CUSTOM_NAME:
            raise ValueError("model=custom needs model._target_=pkg.module.Class (an importable class or factory "
                             "that returns an nn.Module)")
        if name not in MODELS:
            raise ValueError(f"unknown model '{name}': choose one of {sorted(MODELS)}, or model=custom with "
                             "model._target_=pkg.module.Class for your own model")
        kind, accepted = "zoo", ZOO_FIELDS
    else:
        kind, accepted = "custom", CUSTOM_FIELDS
    unknown = sorted(str(k) for k in model_cfg if k not in accepted)
    if unknown:
        what = f"zoo model '{name}'" if kind == "zoo" else "model=custom"
        raise ValueError(f"unknown key(s) {unknown} in the model config of {what}: accepted are {list(accepted)}")
    if kind == "custom" and not isinstance(model_cfg.get("kwargs") or {}, Mapping):
        raise ValueError(f"model.kwargs must be a map of keyword arguments, got {model_cfg.get('kwargs')!r}")
    return kind


_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


def import_target(target: str, path: str | Path | None = None) -> Any:
    """The object named by ``target`` ("pkg.mod.attr" or "pkg.mod:attr"), importing with ``path`` on sys.path."""
    if not isinstance(target, str) or not _IMPORT_PATH.match(target) or ("." not in target and ":" not in target):
        raise ValueError(f"model._target_={target!r} is not an import path such as pkg.module.Class "
                         "or pkg.module:attr")
    folder = None
    if path is not None:
        folder = Path(str(path)).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"model.path={path} is not a folder (it should hold the module of "
                                    f"model._target_={target})")
    if ":" in target:
        module_name, _, attr = target.partition(":")
        candidates = [(module_name, attr.split("."))]
    else:
        parts = target.split(".")
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    hint = (f"model.path={folder} was searched first" if folder is not None else
            "put the folder of your module file on PYTHONPATH or set model.path=DIR")
    if folder is not None:
        sys.path.insert(0, str(folder))
    try:
        for module_name, attrs in candidates:
            try:
                obj = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                    continue  # this prefix is no module: try a shorter one
                raise ImportError(f"importing {module_name} for model._target_={target} failed: {err}") from err
            except Exception as err:  # noqa: BLE001 - a broken user module: say which target it was
                raise ImportError(f"importing {module_name} for model._target_={target} failed: "
                                  f"{type(err).__name__}: {err}") from err
            for i, attr in enumerate(attrs):
                if not hasattr(obj, attr):
                    owner = ".".join([module_name, *attrs[:i]])
                    raise ImportError(f"model._target_={target}: {owner} ({getattr(obj, '__file__', None) or obj}) "
                                      f"has no attribute '{attr}'; {hint}")
                obj = getattr(obj, attr)
            return obj
    finally:
        if folder is not None and str(folder) in sys.path:
            sys.path.remove(str(folder))
    raise ImportError(f"model._target_={target}: no module '{candidates[-1][0]}' found; {hint}")


def build_custom(target: str, kwargs: Mapping | None = None,
                 path: str | Path | None = None) -> tuple[nn.Module, object]:
    """(``target(**kwargs)``, the imported ``target``); the result must be an ``nn.Module``."""
    factory = import_target(target, path)
    if not callable(factory):
        raise TypeError(f"model._target_={target} is a {type(factory).__name__}, not a class or factory")
    kwargs = dict(kwargs or {})
    try:
        model = factory(**kwargs)
    except Exception as err:  # noqa: BLE001 - the user's constructor: name it and its kwargs
        raise RuntimeError(f"model._target_={target}(**{kwargs}) failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"model._target_={target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, factory


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read once per process for a given (path, size, modification time)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo's key only
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(model_cfg: Mapping) -> str | None:
    """SHA-256 of ``model.checkpoint`` (None without one): the weights' part of a run's identity."""
    checkpoint = model_cfg.get("checkpoint")
    if checkpoint is None:
        return None
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint={path} does not exist")
    return file_sha256(path)


def source_fingerprint(obj: object) -> dict:
    """What identifies the code of ``target``: the SHA-256 of the file that defines it and its package version.

    Part of the model cache key, so an edit to the user's module retrains the model.
    """
    out: dict = {"file_sha256": None, "package_version": None}
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        source = None
    if source and Path(source).is_file():
        out["file_sha256"] = file_sha256(source)
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None)
    out["package_version"] = None if version is None else str(version)
    return out


def load_weights(path: str | Path, what: str, advice: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one error naming ``what`` and the fix."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise RuntimeError(f"{what} cannot be loaded with weights_only=True ({type(err).__name__}): {advice}") from None


def read_state_dict(path: str | Path) -> dict:
    """The state dict in checkpoint ``path`` (weights-only unpickling); refuses anything else, naming the file."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint={path} does not exist")
    state = load_weights(path, f"model.checkpoint={path}", "the file is corrupt, or it is a pickle that holds more "
                         "than tensors (a whole pickled model?); save torch.save(model.state_dict(), PATH) instead")
    if isinstance(state, Mapping) and not _is_state(state):
        for key in STATE_KEYS:
            if isinstance(state.get(key), Mapping) and _is_state(state[key]):
                return dict(state[key])
    if not isinstance(state, Mapping) or not _is_state(state):
        keys = sorted(map(str, state))[:10] if isinstance(state, Mapping) else None
        raise ValueError(f"model.checkpoint={path} holds no state dict (a map of tensors, or one under "
                         f"{' / '.join(repr(k) for k in STATE_KEYS)}): found a {type(state).__name__}"
                         + (f" with keys {keys}" if keys is not None else "")
                         + "; save torch.save(model.state_dict(), PATH)")
    return dict(state)


def _is_state(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def strip_prefixes(state: Mapping, own: Mapping, source: str | Path = "") -> dict:
    """``state`` without the wrapper prefixes ``PREFIXES`` that every one of its keys carries and none of the
    model's keys (``own``) does; repeated, so ``module.model.`` goes too."""
    state = dict(state)
    while state:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)
                       and not any(k.startswith(p) for k in own)), None)
        if prefix is None:
            break
        log.info("checkpoint %s: stripping the wrapper prefix %r", source, prefix)
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state(model: nn.Module, state: Mapping, source: str | Path,
               fix: str = "build the model as it was when saved (model._target_ and model.kwargs)") -> None:
    """Load ``state`` into ``model``, exactly: an error names missing / unexpected keys, shape mismatches and ``fix``.
    Wrapper prefixes are stripped first (``strip_prefixes``)."""
    own = model.state_dict()
    state = strip_prefixes(state, own, source)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(keys):
            return keys[:12] + ([f"... {len(keys) - 12} more"] if len(keys) > 12 else [])
        parts = [f"missing keys {few(missing)}" if missing else "",
                 f"unexpected keys {few(unexpected)}" if unexpected else "",
                 f"shape mismatches {few(shapes)}" if shapes else ""]
        raise ValueError(f"checkpoint {source} does not fit the model {type(model).__name__}: "
                         + "; ".join(p for p in parts if p) + f"; {fix}")
    model.load_state_dict(state, strict=True)


def check_output_width(model: nn.Module, input_shape: Sequence[int], num_classes: int, what: str,
                       fix: str) -> None:
    """One input of the dataset's shape must give (1, num_classes) logits; ``what`` names the model in errors
    (``model._target_=pkg.Net``), ``fix`` says how to change its number of outputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(torch.zeros(1, *input_shape))
    except Exception as err:  # noqa: BLE001 - the user's forward: name the input it could not take
        raise RuntimeError(f"{what} cannot take one input of the dataset's shape "
                           f"{(1, *input_shape)}: {type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what} must return (batch, classes) logits, got {got}")
    if out.shape[1] != num_classes:
        raise ValueError(f"{what} gives {out.shape[1]} outputs but the dataset has {num_classes} classes: {fix}")


def model_label(name: str, model: nn.Module) -> str:
    """The readable name in tables: ``model.name``, or the class name when it is left at "custom"."""
    return type(model).__name__ if name in (None, "", CUSTOM_NAME) else str(name)
