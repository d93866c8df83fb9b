"""Datasets: the reference layout, the builders of the paper's datasets, a user's data, the batches.
Imports only itself and ``debiaslab.errors``."""
