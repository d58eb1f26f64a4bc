"""Heatmaps of vit_tiny (AttnLRP, CP-LRP, attention rollout, gradient x input) beside LeNet (epsilon-plus LRP,
gradient x input) on the same MNIST test images (the first of ``evalxai.runs.pipeline.sample_indices``, as every
experiment with sample_seed 0 explains them), each for its model's predicted class.

    python experiments/achtibat2024_attnlrp/heatmaps.py [OUT.png]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import evalxai
from evalxai.report.plots import heatmap_grid
from evalxai.runs.pipeline import sample_indices
from evalxai.runs.reproduce import dataset_and_model

VIT_METHODS = ("attnlrp", "cp_lrp", "attention_rollout", "gradient_x_input")
CNN_METHODS = ("lrp_epsilon_plus", "gradient_x_input")


def main(out: Path, n: int = 6) -> Path:
    _, dataset, vit = dataset_and_model(["model=vit_tiny"])
    _, _, cnn = dataset_and_model(["model=lenet"])
    x, _ = dataset.test_items(sample_indices(len(dataset), n, 0))
    maps = {}
    for label, model, methods in (("ViT", vit, VIT_METHODS), ("LeNet", cnn, CNN_METHODS)):
        with torch.no_grad():
            target = model(x).argmax(1)
        for m in methods:
            maps[f"{label}\n{m}"] = evalxai.explain(model, x, target, method=m).numpy()
    with torch.no_grad():
        labels = [str(int(c)) for c in vit(x).argmax(1)]
    return heatmap_grid(dataset.denormalize(x).numpy(), maps, out, n=n, labels=labels)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("heatmaps.png")))
