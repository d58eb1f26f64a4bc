"""Datasets: the bundled MNIST subset (or local IDX files), scikit-learn digits, image folders, CIFAR-10/100 and
tensor files, behind one protocol (``Dataset``)."""
from evalxai.data.datasets import DATASETS, ArrayDataset, Dataset, load_dataset

__all__ = ["DATASETS", "ArrayDataset", "Dataset", "load_dataset"]
