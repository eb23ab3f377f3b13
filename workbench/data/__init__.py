"""Datasets: load any common file, detect its format, render it as the model will see it."""

from .report import DatasetReport, inspect, load_tokenizer, parse_mapping, split_indices, training_data

__all__ = ["DatasetReport", "inspect", "load_tokenizer", "parse_mapping", "split_indices", "training_data"]
