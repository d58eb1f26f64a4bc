"""Datasets: the bundled MNIST subset (or local IDX files), scikit-learn digits, image folders, CIFAR-10/100, tensor
files, and the ground-truth sets XAI-TRIS and decoy MNIST, behind one protocol (``Dataset``).

``registry`` holds ``DATASETS`` and ``load_dataset``; each loader module registers its loaders there, and is imported
here so that the registry is full once ``evalxai.data`` is imported."""
from evalxai.data import (  # noqa: F401  (registration)
    cifar,
    decoy_mnist,
    image_folder,
    mnist,
    tensors,
    text_files,
    text_synthetic,
    xai_tris,
)
from evalxai.data.base import ArrayDataset, Dataset
from evalxai.data.registry import DATASETS, load_dataset, provides_masks

__all__ = ["DATASETS", "ArrayDataset", "Dataset", "load_dataset", "provides_masks"]
