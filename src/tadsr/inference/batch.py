"""Batch upscaling of files: plan inputs to outputs, run them one by one, report.

A file that fails (unreadable, too small, too large, unwritable output, a model that fails on it or returns a
wrong shape or non-finite values: ``tadsr.errors.BackendError``) gets one line naming it and the problem; the run
goes on with the others. Outputs are written atomically (``image_io.write_image``).
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tadsr import distributed
from tadsr.data.image_io import (
    DEFAULT_MAX_PIXELS,
    READ_EXTENSIONS,
    ImageError,
    output_format,
    pixel_count,
    read_image,
    write_image,
)
from tadsr.errors import ConfigError, NotFoundError, TadsrError, first_line
from tadsr.inference.upscaler import Upscaler


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = f", {self.seconds / self.megapixels:.2f} s per output megapixel" if self.megapixels else ""
        return (f"{self.done} done, {self.skipped} skipped, {self.failed} failed "
                f"in {self.seconds:.1f} s{rate}")

    def fail(self, message: str, report: Callable[[str], None]) -> None:
        """Count a file that failed and say why, in one line."""
        self.failed += 1
        self.errors.append(message)
        report(message)

    @classmethod
    def combined(cls, parts: list[Summary]) -> Summary:
        """The summary of a sharded run: counts and megapixels added, the slowest rank's time (they run at once);
        the rate is then whole-job seconds per output megapixel."""
        return cls(done=sum(p.done for p in parts), skipped=sum(p.skipped for p in parts),
                   failed=sum(p.failed for p in parts), seconds=max((p.seconds for p in parts), default=0.0),
                   megapixels=sum(p.megapixels for p in parts), errors=[e for p in parts for e in p.errors])


def shard(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """This rank's share of the jobs under torchrun (``distributed.assign`` by output path, weighted by the input's
    pixel count from its header, 1 when unreadable): balanced, the same on every rank and every rerun, and two
    inputs that would write one output meet on one rank (which reports the clash)."""
    if world == 1:
        return jobs
    ranks = distributed.assign([str(job.target) for job in jobs], world, [pixel_count(job.source) for job in jobs])
    return [job for job, r in zip(jobs, ranks, strict=True) if r == rank]


def find_inputs(spec: str, recursive: bool = True,
                report: Callable[[str], None] | None = None) -> tuple[list[Path], Path | None]:
    """Files named by ``spec`` (a file, a folder, or a glob), sorted, and the folder outputs are relative to.

    In a folder only files with an image extension are taken; a file named directly is always tried. A symbolic
    link that leads nowhere (dangling, or a loop) is skipped with a line to ``report``.
    """
    path = Path(spec)
    if path.is_file():
        return [path], None
    if path.is_dir():
        walker = path.rglob("*") if recursive else path.glob("*")
        files = []
        for p in walker:
            if p.suffix.lower() not in READ_EXTENSIONS or p.name.startswith("."):
                continue
            if p.is_file():
                files.append(p)
            elif p.is_symlink() and report is not None:
                report(f"{p}: a symbolic link that leads to no file (dangling or a loop); skipped")
        return sorted(files), path
    if glob.has_magic(spec):
        return sorted(Path(p) for p in glob.glob(spec, recursive=recursive) if Path(p).is_file()), None
    raise NotFoundError(f"{spec}: no such file or folder")


def plan_jobs(spec: str, out_dir: Path, ext: str = "auto", suffix: str = "", recursive: bool = True,
              report: Callable[[str], None] | None = None) -> list[Job]:
    """Map each input to ``out_dir/<relative folder>/<stem><suffix>.<ext>``; ext 'auto' keeps writable formats.

    With ``out_dir`` inside the input folder, an input that is the output of another input (``x_x4.png`` of
    ``x.png``) is left out, so that reruns never snowball (``x_x4_x4.png``); an output that would replace its own
    input is refused (ConfigError: add a ``--suffix``).
    """
    files, base = find_inputs(spec, recursive, report)
    jobs = []
    for src in files:
        if ext == "auto":
            try:
                fmt = output_format(src.suffix)
            except ValueError:
                fmt = "png"
        else:
            fmt = output_format(ext)
        rel = src.parent.relative_to(base) if base is not None else Path()
        jobs.append(Job(src, out_dir / rel / f"{src.stem}{suffix}.{fmt}"))
    targets = {_resolved(job.target) for job in jobs}
    jobs = [job for job in jobs  # an input that another input's output is: ours, from an earlier run
            if _resolved(job.source) not in targets or _resolved(job.target) == _resolved(job.source)]
    for job in jobs:
        if _resolved(job.target) == _resolved(job.source):
            raise ConfigError(f"{job.source}: its output would replace it (-o is where the input is): add a --suffix "
                              "or choose another output folder")
    return jobs


def _resolved(path: Path) -> Path:
    return path.resolve(strict=False)


NAME_MAX = 255  # bytes of one file name on the common file systems


OUTPUT_PIXELS_FACTOR = 16  # outputs may have up to 16 x --max-pixels pixels (x4 of the largest allowed input)


def check_output_size(source: Path, size: tuple[int, int], max_pixels: int) -> None:
    """ImageError, before anything is allocated, for an output beyond OUTPUT_PIXELS_FACTOR x ``max_pixels``."""
    h, w = size
    if max_pixels and h * w > OUTPUT_PIXELS_FACTOR * max_pixels:
        raise ImageError(f"{source}: the output would be {w}x{h} = {w * h:,} pixels, more than "
                         f"{OUTPUT_PIXELS_FACTOR} x --max-pixels ({OUTPUT_PIXELS_FACTOR * max_pixels:,}); lower "
                         "-s/--outscale or raise --max-pixels")


def _target_problem(job: Job, targets: dict[Path, Path]) -> str | None:
    """Why ``job``'s output cannot be written (``targets``: the outputs planned so far, by their input), or None."""
    if job.target in targets:
        return f"{job.source}: output {job.target} would overwrite that of {targets[job.target]}"
    if len(job.target.name.encode()) > NAME_MAX:
        return (f"{job.source}: the output name {job.target.name[:40]}... is longer than {NAME_MAX} bytes (shorten "
                "--suffix or the input's name)")
    if job.target.is_dir():
        return f"{job.source}: the output {job.target} is an existing folder"
    return None


def run_jobs(upscaler: Upscaler, jobs: list[Job], overwrite: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
             show_progress: bool = True, report: Callable[[str], None] = print,
             notice: Callable[[str], None] | None = None) -> Summary:
    """Upscale every job; ``report`` gets one line per failure, ``notice`` one per input the model pads to more
    than twice its pixels (the face model's 512x512, for instance). Returns the counts and timing."""
    summary = Summary()
    targets: dict[Path, Path] = {}
    start = time.perf_counter()
    bar = tqdm(jobs, desc="images", unit="img", disable=not show_progress)
    for job in bar:
        problem = _target_problem(job, targets)
        targets.setdefault(job.target, job.source)
        if problem is not None:
            summary.fail(problem, report)
            continue
        if job.target.exists() and not overwrite:
            summary.skipped += 1
            continue
        tiles = tqdm(desc="tiles", unit="tile", leave=False, disable=not show_progress)

        def progress(done: int, total: int, tiles: tqdm = tiles) -> None:
            tiles.total = total
            tiles.update(done - tiles.n)

        try:
            image = read_image(job.source, max_pixels=max_pixels)
            check_output_size(job.source, upscaler.output_size(*image.pixels.shape[:2]), max_pixels)
            padded = upscaler.padded_size(*image.pixels.shape[:2])
            if notice is not None and padded[0] * padded[1] > 2 * image.pixels.shape[0] * image.pixels.shape[1]:
                notice(f"{job.source}: {image.pixels.shape[1]}x{image.pixels.shape[0]} is padded to "
                       f"{padded[1]}x{padded[0]}, this model's multiple (it was trained on that size)")
            result = upscaler.upscale_image(image, progress)
            job.target.parent.mkdir(parents=True, exist_ok=True)
            write_image(job.target, result)
        except ImageError as err:  # names its file (the input, or the output)
            summary.fail(str(err), report)
        except TadsrError as err:  # the model's run on this image (BackendError), a setting: name the image
            message = first_line(err)
            summary.fail(message if message.startswith(str(job.source)) else f"{job.source}: {message}", report)
        except MemoryError:  # this image's arrays do not fit (--max-pixels 0, or a small address space)
            summary.fail(f"{job.source}: not enough memory to upscale it (lower --tile, or keep --max-pixels on)",
                         report)
        except (OSError, RuntimeError, ValueError) as err:  # keep the batch going; name the file
            summary.fail(f"{job.source}: {type(err).__name__}: {first_line(err)}", report)
        else:
            summary.done += 1
            summary.megapixels += result.pixels.shape[0] * result.pixels.shape[1] / 1e6
        finally:
            tiles.close()
    summary.seconds = time.perf_counter() - start
    return summary
