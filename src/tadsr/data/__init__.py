"""Data: image I/O with its guarantees (``image_io``), the degradations and their kernels (``degradation``,
``kernels``), training datasets of photos and folders (``photos``, ``datasets``) and test-set building
(``testset``, `tadsr degrade`)."""
