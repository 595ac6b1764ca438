"""Datasets by name, deterministic splits, and class-subset streams."""

from .datasets import DATASETS, DataSpec, Dataset, RawData, Split, load_dataset

__all__ = ["DATASETS", "DataSpec", "Dataset", "RawData", "Split", "load_dataset"]
