"""Datasets: the bundled MNIST subset (or local IDX files), scikit-learn digits, image folders, CIFAR-10/100, tensor
files, and the ground-truth sets XAI-TRIS and decoy MNIST, behind one protocol (``Dataset``)."""
from evalxai.data.datasets import DATASETS, ArrayDataset, Dataset, load_dataset, provides_masks

__all__ = ["DATASETS", "ArrayDataset", "Dataset", "load_dataset", "provides_masks"]
