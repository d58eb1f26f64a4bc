"""Datasets: the bundled MNIST subset (or local IDX files), scikit-learn digits; cached as arrays."""
from evalxai.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
