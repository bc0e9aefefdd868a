"""The ITU-R BT.601 colour constants, in one place: the luma of gray conversions and the 'ycbcr' space of metrics.

* ``LUMA``: Y = 0.299 R + 0.587 G + 0.114 B, the luma of OpenCV's RGB2GRAY and of Pillow's "L" (same range as RGB).
* ``YCBCR_Y``, ``YCBCR_CB``, ``YCBCR_CR``: MATLAB's ``rgb2ycbcr`` for RGB in [0, 1]: Y = 16 + YCBCR_Y . RGB in
  [16, 235], Cb = 128 + YCBCR_CB . RGB and Cr = 128 + YCBCR_CR . RGB in [16, 240] (levels of 255), the 'ycbcr' of
  pyiqa's ``test_y_channel`` and of the SR papers' PSNR-Y.
"""

from __future__ import annotations

LUMA = (0.299, 0.587, 0.114)
YCBCR_Y = (65.481, 128.553, 24.966)
YCBCR_CB = (-37.797, -74.203, 112.0)
YCBCR_CR = (112.0, -93.786, -18.214)
