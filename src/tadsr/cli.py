"""The ``tadsr`` command. Subcommands only parse arguments and call library code."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from tadsr.checkpoints import CheckpointError, load_official
from tadsr.config import config_to_json, model_config_from_json
from tadsr.model import SRModel, load_model, save_model
from tadsr.presets import MODEL_PRESETS, SCHEDULE_PRESETS, model_config

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _fail(message: str) -> None:
    click.echo(f"tadsr: error: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="tadsr")
def main() -> None:
    """TAD-SR: one-step diffusion super-resolution by time-aware distillation."""


@main.command()
@click.option("--preset", type=click.Choice(MODEL_PRESETS), default="realsr-x4", help="Official architecture.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A ModelConfig JSON file (as `tadsr info` prints) for a custom architecture; replaces --preset.")
@click.option("--unet", "unet_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Official denoiser weights, e.g. resshift_realsrx4_s15_v1.pth (any official form).")
@click.option("--autoencoder", "ae_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Official autoencoder weights, e.g. autoencoder_vq_f4.pth (not for a pixel-unshuffle stage).")
@click.option("--schedule", type=click.Choice(SCHEDULE_PRESETS), default=None,
              help="Override the preset's schedule (e.g. faceir-tadsr).")
@click.option("--role", type=click.Choice(["teacher", "student"]), default="teacher",
              help="teacher: samples T steps by default; student: one step.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", help="Storage dtype.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .safetensors file.")
def convert(preset: str, config_path: Path | None, unet_path: Path, ae_path: Path | None, schedule: str | None,
            role: str, dtype: str, output: Path) -> None:
    """Convert official ResShift/SinSR weights to one tadsr safetensors file (config in its metadata).

    \b
    Example:
      tadsr convert --preset realsr-x4 --unet resshift_realsrx4_s15_v1.pth \\
          --autoencoder autoencoder_vq_f4.pth -o resshift-realsr-x4.safetensors
    """
    if output.suffix != ".safetensors":
        _fail(f"{output}: output must end in .safetensors")
    for path in (unet_path, ae_path):
        if path is not None and not path.is_file():
            _fail(f"{path}: no such checkpoint file")
    try:
        config = (model_config_from_json(config_path.read_text()) if config_path
                  else model_config(preset, schedule=schedule, role=role))  # type: ignore[arg-type]
    except (ValueError, TypeError) as err:
        _fail(f"{config_path}: invalid model config ({err})")
    model = SRModel(config)
    has_weights = any(True for _ in model.first_stage.parameters())
    if has_weights and ae_path is None:
        _fail("--autoencoder is required: this model's first stage has weights")
    if not has_weights and ae_path is not None:
        _fail(f"{ae_path}: this model's first stage (pixel-unshuffle) has no weights to load")
    try:
        load_official(model.unet, unet_path)
        if ae_path is not None:
            load_official(model.first_stage, ae_path)
        save_model(model, output, dtype=_DTYPES[dtype])
    except (CheckpointError, OSError) as err:
        _fail(str(err))
    click.echo(f"wrote {output}")


@main.command()
@click.argument("model", type=str)
def info(model: str) -> None:
    """Print the config and parameter counts of a model preset (realsr-x4, faceir) or a tadsr .safetensors file."""
    try:
        if model in MODEL_PRESETS:
            with torch.device("meta"):
                sr = SRModel(model_config(model))
        else:
            sr = load_model(model)
    except CheckpointError as err:
        _fail(str(err))
    unet = sum(p.numel() for p in sr.unet.parameters())
    stage = sum(p.numel() for p in sr.first_stage.parameters())
    click.echo(config_to_json(sr.config))
    click.echo(f"unet parameters: {unet:,}\nfirst-stage parameters: {stage:,}")
    click.echo(f"schedule sqrt(eta): {[round(v, 4) for v in sr.schedule.sqrt_eta.tolist()]}")


if __name__ == "__main__":
    main()
