"""Building a reproducible test set from HR images: ``gt/`` and ``lq/`` with the same names, plus the draws.

Each image's generator is seeded from (seed, CRC-32 of its relative path), so an image's pair does not change
when other files are added or removed. The GT is the centred square of side min(H, W) resized to ``gt_size``
(like ImageNet-Test's SmallestMaxSize + CenterCrop, docs/implementation-notes.md §6).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tadsr.data.datasets import list_images, load_rgb, sample_generator, square_crop_resize, to_chw_tensor
from tadsr.data.degradation import DegradationConfig, degrade, draw_params, params_to_dict
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, ImageData, ImageError, to_uint8, write_image
from tadsr.errors import ConfigError, NotFoundError
from tadsr.fileio import atomic_write_bytes, check_writable


@dataclass
class BuildSummary:
    written: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def build_test_set(hr_dir: Path, out_dir: Path, config: DegradationConfig, preset_name: str, seed: int = 0,
                   gt_size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS, show_progress: bool = True,
                   report: Callable[[str], None] = print) -> BuildSummary:
    """Write ``out_dir/gt/<name>.png``, ``out_dir/lq/<name>.png`` and ``out_dir/params.json`` for every HR image."""
    if gt_size % config.scale:
        raise ConfigError(f"gt_size {gt_size} must be a multiple of the scale {config.scale}")
    if max_pixels and gt_size * gt_size > max_pixels:
        raise ConfigError(f"--gt-size {gt_size}: {gt_size}x{gt_size} pixels exceeds the limit of {max_pixels:,} "
                          "(raise it with --max-pixels)")
    files = list_images(hr_dir)
    if not files:
        raise NotFoundError(f"{hr_dir}: no images found")
    check_writable(out_dir)
    summary = BuildSummary()
    records = {}
    sources: dict[str, Path] = {}
    for path in tqdm(files, desc="pairs", unit="img", disable=not show_progress):
        rel = path.relative_to(hr_dir).with_suffix("")
        name = rel.as_posix()
        if name in sources:  # a.png and a.jpg: one pair name, two images
            summary.failed += 1
            summary.errors.append(f"{path}: its pair {name}.png would overwrite that of {sources[name]}")
            report(summary.errors[-1])
            continue
        sources[name] = path
        gen = sample_generator(seed, zlib.crc32(name.encode()))
        try:
            gt = square_crop_resize(load_rgb(path, max_pixels), gt_size, None)
            params = draw_params(config, gen)
            hr, lr = degrade(config, to_chw_tensor(gt)[None], [params])
            for sub, img in (("gt", hr), ("lq", lr)):
                target = out_dir / sub / rel.with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_image(target, ImageData(to_uint8(img[0].permute(1, 2, 0).numpy())))
        except ImageError as err:
            summary.failed += 1
            summary.errors.append(str(err))
            report(str(err))
            continue
        records[name] = {"source": str(path), **params_to_dict(params)}
        summary.written += 1
    meta = {"preset": preset_name, "seed": seed, "gt_size": gt_size, "scale": config.scale, "images": records}
    atomic_write_bytes(out_dir / "params.json", json.dumps(meta, indent=1).encode())
    return summary
