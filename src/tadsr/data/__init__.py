"""Data: image I/O (and, later, degradation kernels, pipelines and datasets)."""
