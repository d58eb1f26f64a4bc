"""Classifiers from the model libraries: ``model=torchvision``, ``model=timm`` and ``model=huggingface``.

Config fields (``conf/model/{torchvision,timm,huggingface}.yaml``; ``library`` tells the three apart)::

    library: torchvision   # torchvision | timm | huggingface
    name: null             # the library's model name; Hugging Face: a local folder or a hub id
    weights: null          # torchvision: DEFAULT or a weights enum name (downloaded by torchvision)
    pretrained: false      # timm: the pretrained weights (downloaded by timm)
    num_classes: null      # outputs; null: the pretrained head's, else the dataset's number of classes
    checkpoint: null       # a state dict replacing all weights (nothing is downloaded)
    kwargs: {}             # more keyword arguments of the library's constructor
    mean: [...]            # the normalisation the weights expect: the default of dataset.mean / dataset.std
    std: [...]
    train: {...}           # only for incomplete weights (no checkpoint, no pretrained weights, or a new head)

The libraries are optional: each is imported when its model is built, and a missing one is one error naming the pip
command. A Hugging Face model returns an output object; ``LogitsOnly`` reduces it to its logits tensor.
"""
from __future__ import annotations

import difflib
import importlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

_COMMON = ("library", "name", "num_classes", "checkpoint", "kwargs", "mean", "std", "train")
LIBRARY_FIELDS = {
    "torchvision": ("library", "name", "weights", *_COMMON[2:]),
    "timm": ("library", "name", "pretrained", *_COMMON[2:]),
    "huggingface": _COMMON,
}
_MODULE = {"torchvision": "torchvision", "timm": "timm", "huggingface": "transformers"}


class LogitsOnly(nn.Module):
    """``model(x).logits`` as the forward: a Hugging Face classifier (whose forward returns an output object) as a
    module returning a logits tensor, which every method and metric expects. ``LogitsOnly(m).model`` is ``m``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class TextLogitsOnly(nn.Module):
    """A Hugging Face sequence classifier as a module of token ids returning its logits tensor:
    ``forward(input_ids=None, attention_mask=None, inputs_embeds=None)``, the mask ``input_ids != pad_id`` when not
    given (the trainer and accuracy call ``model(input_ids)``). It has no ``get_input_embeddings`` of its own, so
    ``evalxai.explain`` reaches the Hugging Face model through ``.model`` (``evalxai.models.text.text_model``)."""

    def __init__(self, model: nn.Module, pad_id: int):
        super().__init__()
        self.model, self.pad_id = model, int(pad_id)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None and input_ids is not None:
            attention_mask = (input_ids != self.pad_id).to(torch.int64)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds).logits


def import_library(library: str) -> Any:
    """The library's module, imported now; an error naming the pip command when it is missing or broken."""
    module = _MODULE[library]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            why = f"cannot be imported (it needs {err.name}, which is missing)"
        else:
            why = "is not installed"
    except Exception as err:  # noqa: BLE001 - a broken install (e.g. built for another torch) means the same fix
        why = f"cannot be imported ({type(err).__name__}: {err})"
    match = f" (the release built for torch {torch.__version__.split('+')[0]})" if module == "torchvision" else ""
    raise ImportError(f"model={library} needs {module}, which {why}: pip install {module}{match}") from None


@dataclass
class Built:
    """A library model as built: ``model`` (logits out), ``inner`` (the module a checkpoint is the state of),
    ``label`` (its name in tables), ``pretrained`` (pretrained weights were loaded), ``complete`` (every weight is
    pretrained: no training needed), ``expected`` (the normalisation (mean, std) the pretrained weights declare, when
    they do), ``folder`` (the local folder the weights were read from, if any), ``record`` (what run.json and the
    cache key keep: library, version, resolved name and weights, kwargs)."""
    model: nn.Module
    inner: nn.Module
    label: str
    pretrained: bool
    complete: bool
    expected: tuple[list[float], list[float]] | None
    folder: Path | None = None
    record: dict = field(default_factory=dict)


def describe(cfg: Mapping) -> str:
    """How the config names its model in messages: ``model=timm model.name=resnet18``."""
    return f"model={cfg['library']} model.name={cfg.get('name')}"


def build_library_model(cfg: Mapping, input_shape: Sequence[int], num_classes: int,
                        use_pretrained: bool = True, text: Mapping | None = None) -> Built:
    """Build the config's model for inputs of ``input_shape`` (C, H, W) and a dataset of ``num_classes`` classes.

    use_pretrained: False (a checkpoint will replace every weight): build the architecture without downloading.
    text: for a text dataset, its tokenizer's ``vocab_size`` and ``pad_id``: a Hugging Face sequence classifier
        (``AutoModelForSequenceClassification``) on token ids of shape ``input_shape`` (T,), in ``TextLogitsOnly``.
    """
    library, name = cfg["library"], cfg.get("name")
    if text is not None and library != "huggingface":
        raise ValueError(f"model={library} classifies images, the dataset is text: use model=text_transformer or "
                         "model=huggingface model.name=<folder of a sequence classifier>")
    if not name:
        hint = {"torchvision": "e.g. resnet18 (torchvision.models.list_models(torchvision.models))",
                "timm": "e.g. resnet18 (timm.list_models())",
                "huggingface": "a folder written by save_pretrained or a hub id"}[library]
        raise ValueError(f"model={library} needs model.name=NAME: {hint}")
    kwargs = dict(cfg.get("kwargs") or {})
    lib = import_library(library)
    build = {"torchvision": _torchvision, "timm": _timm, "huggingface": _huggingface}[library]
    if text is not None:
        built = _huggingface_text(lib, cfg, str(name), kwargs, num_classes, use_pretrained, text)
    else:
        built = build(lib, cfg, str(name), kwargs, tuple(input_shape), num_classes, use_pretrained)
    built.record = {"library": library, "library_version": str(getattr(lib, "__version__", None)), **built.record,
                    "kwargs": kwargs, "class": f"{type(built.inner).__module__}.{type(built.inner).__qualname__}"}
    return built


def _call(what: str, fn, *args, advice: str = "", **kwargs) -> Any:
    """``fn(*args, **kwargs)``; a failure is one line naming ``what`` was called, the library's message and advice."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the library's error, with the call that raised it
        first = (str(err).strip().splitlines() or [""])[0]
        raise RuntimeError(f"{what} failed: {type(err).__name__}: {first}" + (f"; {advice}" if advice else "")) from err


def _unknown(kind: str, name: str, choices: list[str], listing: str) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return ValueError(f"model.name={name} is not a {kind}" + (f": did you mean {close}?" if close else "")
                      + f" ({listing} lists them)")


def _torchvision(tv, cfg, name, kwargs, input_shape, num_classes, use_pretrained) -> Built:
    models = tv.models
    choices = models.list_models(module=models)
    if name not in choices:
        raise _unknown("torchvision classification model", name, choices, "torchvision.models.list_models()")
    weights = cfg.get("weights") if use_pretrained else None
    if weights is not None:
        enum = models.get_model_weights(name)
        try:
            weights = enum.verify(str(weights))
        except (KeyError, ValueError):
            raise ValueError(f"model.weights={cfg.get('weights')} is not a weights name of torchvision's {name}: "
                             f"choose DEFAULT or one of {[w.name for w in enum]}") from None
    n_out = cfg.get("num_classes")
    if n_out is None and weights is None:
        n_out = num_classes
    args = {**kwargs, **({"num_classes": int(n_out)} if n_out is not None else {})}
    shown = ", ".join([repr(name), f"weights={weights}"] + [f"{k}={v!r}" for k, v in args.items()])
    advice = ("torchvision downloads the weights into $TORCH_HOME: without internet give model.checkpoint=PATH; "
              "a pretrained head keeps its classes (drop model.num_classes)") if weights is not None else ""
    model = _call(f"torchvision.models.get_model({shown})", models.get_model, name, weights=weights, advice=advice,
                  **args)
    expected = None
    if weights is not None:
        transform = weights.transforms()
        if getattr(transform, "mean", None) is not None:
            expected = (list(transform.mean), list(transform.std))
    return Built(model, model, name, weights is not None, weights is not None, expected, None,
                 {"name": name, "weights": None if weights is None else f"{type(weights).__name__}.{weights.name}",
                  "num_classes": n_out})


def _timm(timm, cfg, name, kwargs, input_shape, num_classes, use_pretrained) -> Built:
    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        choices = timm.list_models()
        raise _unknown("timm model", name, choices, "timm.list_models()")
    pretrained = bool(cfg.get("pretrained")) and use_pretrained
    n_out = cfg.get("num_classes")
    if n_out is None and not pretrained:
        n_out = num_classes
    args = dict(kwargs)
    if n_out is not None:
        args["num_classes"] = int(n_out)
    if input_shape[0] != 3:
        args.setdefault("in_chans", input_shape[0])  # timm adapts a pretrained first layer to the channels
    default_cfg = None if name.startswith(("hf-hub:", "hf_hub:")) else timm.models.get_pretrained_cfg(name)
    if default_cfg is not None and default_cfg.fixed_input_size and "img_size" not in args \
            and tuple(default_cfg.input_size[1:]) != tuple(input_shape[1:]):
        args["img_size"] = tuple(input_shape[1:])  # a fixed-size model (ViT, ...) for the dataset's images
    shown = ", ".join([repr(name), f"pretrained={pretrained}"] + [f"{k}={v!r}" for k, v in args.items()])
    advice = "timm downloads the weights from the Hugging Face hub: without internet give model.checkpoint=PATH" \
        if pretrained else ""
    model = _call(f"timm.create_model({shown})", timm.create_model, name, pretrained=pretrained, advice=advice,
                  **args)
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    kept_head = n_out is None or int(n_out) == int(pcfg.get("num_classes") or -1)
    expected = (list(pcfg["mean"]), list(pcfg["std"])) if pretrained and pcfg.get("mean") is not None else None
    return Built(model, model, name, pretrained, pretrained and kept_head, expected, None,
                 {"name": name, "pretrained": pretrained, "num_classes": n_out,
                  "pretrained_tag": pcfg.get("tag") if pretrained else None,
                  **({"img_size": list(args["img_size"])} if "img_size" in args else {})})


def _huggingface(transformers, cfg, name, kwargs, input_shape, num_classes, use_pretrained) -> Built:
    folder = Path(name).expanduser()
    local = folder.is_dir()
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise FileNotFoundError(f"model.name={name} is not a folder (model=huggingface takes a folder written by "
                                "save_pretrained, or a hub id such as google/vit-base-patch16-224)")
    source = str(folder.resolve()) if local else name
    auto = transformers.AutoModelForImageClassification
    n_out = cfg.get("num_classes")
    config = _call(f"transformers.AutoConfig.from_pretrained({source!r})", transformers.AutoConfig.from_pretrained,
                   source, advice="" if local else "hub ids download from the Hugging Face hub: without internet use "
                   "a local folder")
    new_head = n_out is not None and int(n_out) != int(config.num_labels)
    if not use_pretrained:
        if n_out is None:
            n_out = num_classes
        config.num_labels = int(n_out)
        config.id2label = {i: f"LABEL_{i}" for i in range(int(n_out))}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model = _call(f"AutoModelForImageClassification.from_config({source!r} config, **{kwargs})", auto.from_config,
                      config, **kwargs)
    else:
        args = {**kwargs, **({"num_labels": int(n_out), "ignore_mismatched_sizes": True} if new_head else {})}
        model = _call(f"AutoModelForImageClassification.from_pretrained({source!r}, **{args})", auto.from_pretrained,
                      source, **args)
    model.eval()
    expected = None
    processor = folder / "preprocessor_config.json"
    if use_pretrained and local and processor.is_file():
        pre = json.loads(processor.read_text())
        if pre.get("do_normalize", True) and pre.get("image_mean") is not None:
            expected = (list(pre["image_mean"]), list(pre["image_std"]))
    label = folder.resolve().name if local else name
    return Built(LogitsOnly(model), model, label, use_pretrained, use_pretrained and not new_head, expected,
                 folder.resolve() if local and use_pretrained else None,
                 {"name": name, "source": source, "num_classes": n_out})


def _huggingface_text(transformers, cfg, name, kwargs, num_classes, use_pretrained, text: Mapping) -> Built:
    """A sequence classifier from a local folder (``local_files_only``): its saved weights, or its architecture with
    a new head of ``model.num_classes`` outputs; the dataset's tokens must fit its embedding."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model.name={name} is not a folder: a text model=huggingface takes a folder written "
                                "by save_pretrained (AutoModelForSequenceClassification), read with local_files_only")
    source = str(folder.resolve())
    auto = transformers.AutoModelForSequenceClassification
    config = _call(f"transformers.AutoConfig.from_pretrained({source!r})", transformers.AutoConfig.from_pretrained,
                   source, local_files_only=True)
    n_out = cfg.get("num_classes")
    new_head = n_out is not None and int(n_out) != int(config.num_labels)
    if config.pad_token_id is None:  # GPT-2 style: the last non-pad token is found through pad_token_id
        config.pad_token_id = int(text["pad_id"])
    if not use_pretrained:
        n_out = num_classes if n_out is None else n_out
        _labels(config, int(n_out))
        model = _call(f"AutoModelForSequenceClassification.from_config({source!r} config)", auto.from_config, config,
                      **kwargs)
    else:
        args = {**kwargs, "config": config, "local_files_only": True}
        if new_head:  # a new head of n_out outputs on the saved body
            _labels(config, int(n_out))
            args["ignore_mismatched_sizes"] = True
        model = _call(f"AutoModelForSequenceClassification.from_pretrained({source!r})", auto.from_pretrained, source,
                      **args)
    model.eval()
    size = model.get_input_embeddings().num_embeddings
    if int(text["vocab_size"]) > size:
        raise ValueError(f"model.name={name} embeds {size} tokens but the dataset's tokenizer has "
                         f"{text['vocab_size']}: tokenize with the model's own tokenizer (dataset.tokenizer={name})")
    return Built(TextLogitsOnly(model, text["pad_id"]), model, folder.resolve().name, use_pretrained,
                 use_pretrained and not new_head, None, folder.resolve() if use_pretrained else None,
                 {"name": name, "source": source, "num_classes": n_out, "task": "sequence classification"})


def _labels(config, n: int) -> None:
    """Give a Hugging Face config ``n`` output labels."""
    config.num_labels = n
    config.id2label = {i: f"LABEL_{i}" for i in range(n)}
    config.label2id = {v: k for k, v in config.id2label.items()}


def check_normalization(built: Built, cfg: Mapping, mean, std) -> None:
    """Warn when the dataset's normalisation differs from the one the pretrained weights declare."""
    if built.expected is None:
        return
    want_mean, want_std = built.expected

    def same(a, b) -> bool:
        return a is not None and len(a) == len(b) and all(abs(float(u) - float(v)) < 1e-4 for u, v in zip(a, b))

    if not (same(mean, want_mean) and same(std, want_std)):
        def fmt(v):
            return "[" + ",".join(f"{float(u):g}" for u in v) + "]"
        warnings.warn(f"{describe(cfg)}: its pretrained weights expect normalisation mean {fmt(want_mean)} std "
                      f"{fmt(want_std)}, the dataset gives mean {mean and fmt(mean)} std {std and fmt(std)}: set "
                      f"model.mean={fmt(want_mean)} model.std={fmt(want_std)} (or dataset.mean / dataset.std)",
                      UserWarning, stacklevel=4)
