"""Observability: per-part metrics, progress, Prometheus export, drift against the training baseline, run checks."""
