"""The release, written into every file tadsr makes (model metadata, ONNX metadata)."""

__version__ = "0.1.0"
