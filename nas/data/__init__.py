"""The data: datasets by name or path (datasets.py, torch-free) and the tensors a trainer takes (tensors.py)."""
