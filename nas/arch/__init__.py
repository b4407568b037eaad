"""Architectures as data: the layer kinds, the analytic plan every count comes from, budgets, the layer table, the one builder (model.py, the only module here that imports torch)."""
