"""Datasets: the bundled MNIST subset (or local IDX files), scikit-learn digits; cached as arrays."""
from evalxai.data.datasets import DATASETS, ArrayDataset, Dataset, load_dataset

__all__ = ["DATASETS", "ArrayDataset", "Dataset", "load_dataset"]
