"""Architectures as data: the layer kinds (layers.py), the analytic plan every count and cost comes
from (costs.py), their file form (spec.py), budgets, the layer table, and the one builder (model.py,
the only module here that imports torch)."""
