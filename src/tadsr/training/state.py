"""Training checkpoints that resume exactly: atomic writes, a ``latest`` pointer, keep-last-N, every RNG state.

A checkpoint is a ``torch.save`` of plain containers (state dicts, numbers, tensors, the config as JSON), read back
with ``torch.load(weights_only=True)``. Files: ``RUN_DIR/checkpoints/step_{N:08d}.pt`` and
``RUN_DIR/checkpoints/latest`` (the file name of the newest complete checkpoint).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tadsr.checkpoints import CheckpointError
from tadsr.errors import first_line
from tadsr.fileio import atomic_torch_save, atomic_write_text


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """The state of every random source of this process: torch (CPU, CUDA), numpy, python, the trainer's generator."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": random.getstate(),
        "generator": generator.get_state(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])  # (another machine's GPUs: their generators stay seeded)
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(state["generator"])


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``payload`` atomically as step_N.pt, point ``latest`` at it, delete all but the last ``keep_last``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    atomic_torch_save(payload, path)
    atomic_write_text(folder / "latest", path.name)
    for old in sorted(folder.glob("step_*.pt"))[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def resume_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest intact checkpoint of a run folder, loaded; None when the run has none yet (a fresh start).

    The ``latest`` pointer's file is tried first, then every ``step_*.pt``, newest first: a corrupt one is skipped
    with a warning naming it and the one used instead. CheckpointError when checkpoints exist but none is readable
    (a restart from step 0 would overwrite them).
    """
    folder = checkpoint_dir(run_dir)
    candidates = sorted(folder.glob("step_*.pt"), reverse=True) if folder.is_dir() else []
    pointer = folder / "latest"
    if pointer.is_file() and (folder / pointer.read_text().strip()).is_file():
        first = folder / pointer.read_text().strip()
        candidates = [first, *(c for c in candidates if c != first)]
    problems: list[str] = []
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            warn(f"{problem}; resuming from {path.name} instead")
        return checkpoint
    if problems:
        raise CheckpointError(f"{folder}: no readable checkpoint to resume from ({problems[0]}"
                              + (f", and {len(problems) - 1} more" if len(problems) > 1 else "") + ")")
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, refused type: all mean "not a usable checkpoint"
        first = first_line(err)
        raise CheckpointError(f"{path}: not a readable training checkpoint ({first})") from err
    if not isinstance(payload, dict) or "step" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: not a tadsr training checkpoint (no step/config)")
    return payload
