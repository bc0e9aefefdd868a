"""One TAD-SeeSR image at full size through ``tadsr upscale``'s path, tiled: seconds per component and peak memory.

A full-size SeeSR folder with random weights (``seesr_random_folder.py OUT --variant tad-seesr``) runs on one random
LR image (default 512² -> 2048²) through ``tadsr.Upscaler`` with SeeSR's latent tiling (``--tile``/``--overlap``
in LR pixels: 192/8 are the official 96-latent tiles overlapping by 4; ``tadsr.seesr.pipeline.SeeSRBackend``) and
the tiled VAE. Each component's wall time is summed over its calls (forward hooks on DAPE, the text encoder, the
VAE's encoder and decoder, the ControlNet and the UNet; the tiled VAE's GroupNorm estimate pass counts in its
encoder's or decoder's time), and the process's peak resident set (VmHWM) is read after loading and after the run.

Usage: python benchmarks/seesr_tiled.py FOLDER [--lr 512] [--tile 192] [--overlap 8] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def peak_rss_mib() -> float:
    """The process's peak resident set so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and calls per named module, summed over its forward calls from now on (hooks), filled in as the
    modules run."""
    seconds = {name: 0.0 for name in modules}
    calls = {name: 0 for name in modules}
    start: dict[str, list[float]] = {name: [] for name in modules}
    for name, module in modules.items():
        def before(m: Any, args: Any, name: str = name) -> None:
            start[name].append(time.perf_counter())

        def after(m: Any, args: Any, out: Any, name: str = name) -> None:
            seconds[name] += time.perf_counter() - start[name].pop()
            calls[name] += 1

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--lr", type=int, default=512)
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tadsr import Upscaler, open_model

    t0 = time.perf_counter()
    backend = open_model(args.folder)
    load_s, load_mib = time.perf_counter() - t0, peak_rss_mib()
    parts = backend.parts  # type: ignore[attr-defined]
    seconds, calls = timed({"DAPE (Swin-L + tag head)": parts.dape, "text encoder": parts.text_encoder,
                     "VAE encoder": parts.vae.encoder, "ControlNet": parts.controlnet, "UNet": parts.unet,
                     "VAE decoder": parts.vae.decoder})
    rgb = (np.random.default_rng(0).random((args.lr, args.lr, 3)) * 255).astype(np.uint8)
    t0 = time.perf_counter()
    out = Upscaler(backend, tile=args.tile, tile_overlap=args.overlap, seed=0).upscale(rgb)
    total = time.perf_counter() - t0
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "lr": args.lr, "output": list(out.shape), "tile": args.tile,
              "overlap": args.overlap, "load_s": round(load_s, 1), "peak_after_load_mib": round(load_mib),
              "total_s": round(total, 1), "peak_mib": round(peak_rss_mib()),
              "components": {k: {"s": round(v, 1), "calls": calls[k]} for k, v in seconds.items()}}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
