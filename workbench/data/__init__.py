"""Datasets: load any common file, detect its format, render it as the model will see it."""

from .report import DatasetReport, conversations, inspect, load_tokenizer, parse_mapping, split_indices, training_data

__all__ = ["DatasetReport", "conversations", "inspect", "load_tokenizer", "parse_mapping", "split_indices", "training_data"]
