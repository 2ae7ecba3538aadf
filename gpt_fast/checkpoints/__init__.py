"""Checkpoint files: loading and saving models (checkpoint.py), the tensor-file readers (tensor_files.py) and the
thin hub resolution (hub.py). This package file imports nothing."""
