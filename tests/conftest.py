"""Shared tiny configurations: small enough for CPU tests, same code paths as the official networks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tadsr.config import ModelConfig
from tadsr.diffusion.schedule import ScheduleConfig
from tadsr.model import SRModel, save_model
from tadsr.nets.autoencoder import PixelUnshuffleConfig, VQConfig
from tadsr.nets.unet import UNetConfig

# Three levels at 32/16/8 with Swin everywhere: shifted windows at 32 and 16, an unshifted 8x8 level.
TINY_UNET = UNetConfig(image_size=32, in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                       num_res_blocks=(1, 1, 1), attention_resolutions=(32, 16, 8), swin_embed_dim=32,
                       num_head_channels=16, lq_size=32)
TINY_VQ = VQConfig(embed_dim=3, n_embed=64, z_channels=3, resolution=64, ch=32, ch_mult=(1, 2),
                   num_res_blocks=(1, 1), attn_resolutions=(32,))
TINY_SCHEDULE = ScheduleConfig(num_steps=5, kappa=2.0, power=0.3, min_noise_level=0.04, etas_end=0.99)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter deterministic non-trivial values (zero-initialised convs included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture(autouse=True)
def _seed_global_rng() -> None:
    """Tests that draw from the global generator get the same draws whatever ran before them."""
    torch.manual_seed(0)


@pytest.fixture
def tiny_vq_model_config() -> ModelConfig:
    """x2 SR with the tiny VQ (f2): LR h -> bicubic 2h -> latent h, the LR concatenated as is (lq_factor 1)."""
    return ModelConfig(unet=TINY_UNET, first_stage=TINY_VQ, schedule=TINY_SCHEDULE, scale=2)


@pytest.fixture
def tiny_pixel_model_config() -> ModelConfig:
    """x4 SR with the lossless pixel-unshuffle stage (f4, 48 latent channels): LR h -> latent h."""
    unet = UNetConfig(**{**TINY_UNET.__dict__, "in_channels": 48, "out_channels": 48})
    return ModelConfig(unet=unet, first_stage=PixelUnshuffleConfig(factor=4), schedule=TINY_SCHEDULE, scale=4)


@pytest.fixture(scope="session")
def tiny_student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x4 one-step model (pixel-unshuffle first stage, random weights) saved as a tadsr file."""
    from tadsr.model import SRModel, save_model

    unet = UNetConfig(**{**TINY_UNET.__dict__, "in_channels": 48, "out_channels": 48})
    config = ModelConfig(unet=unet, first_stage=PixelUnshuffleConfig(factor=4), schedule=TINY_SCHEDULE, scale=4,
                         role="student")
    path = tmp_path_factory.mktemp("models") / "tiny-student.safetensors"
    save_model(randomize(SRModel(config), seed=3, std=0.05).eval(), path)
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    y, x = np.mgrid[0:90, 0:110] / 100.0
    for i in range(5):
        img = np.stack([np.sin(3 * x + i), np.cos(4 * y - i), np.sin(2 * (x + y) + i)], axis=2) * 0.4 + 0.5
        img += np.random.default_rng(i).normal(0, 0.05, img.shape)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def small_model_config(role: str = "teacher") -> ModelConfig:
    """Smaller and shorter (T=4) than the tiny preset, for fast tests; same code paths."""
    unet = UNetConfig(image_size=16, in_channels=48, out_channels=48, model_channels=32, channel_mult=(1, 2),
                      num_res_blocks=(1, 1), attention_resolutions=(16, 8), num_head_channels=16, swin_embed_dim=32,
                      lq_size=16)
    return ModelConfig(unet=unet, first_stage=PixelUnshuffleConfig(factor=4), schedule=ScheduleConfig(num_steps=4),
                       scale=4, role=role)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(randomize(SRModel(small_model_config()), seed=5, std=0.05).eval(), path)
    return path


@dataclass
class WebServer:
    """A `tadsr serve` process of the tests' own: its URL, its files folder, its log."""

    url: str
    root: Path
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(log: Path, *args: str, timeout: float = 180) -> WebServer:
    """Start `tadsr serve` on a free local port with ``args`` and wait until it answers (or fail with its log)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tadsr.cli", "serve", "--port", str(port), *args],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tadsr serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"tadsr serve did not answer in {timeout} s:\n{log.read_text()}")
    root = Path(re.search(r"uploads and results in (\S+)", log.read_text()).group(1))
    return WebServer(url, root, process, log)


def stop_server(server: WebServer) -> int:
    """SIGTERM, as a service manager stops it; returns the exit status."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory, tiny_student_file: Path, teacher_file: Path) -> WebServer:
    """One `tadsr serve` for the API and browser tests: the embedded models and the tiny student and teacher."""
    pytest.importorskip("gradio", reason="needs the web extra: pip install 'tadsr[web]'")
    server = start_server(tmp_path_factory.mktemp("serve") / "serve.log", "--model", str(tiny_student_file),
                          "--model", str(teacher_file))
    yield server
    if server.process.poll() is None:
        stop_server(server)


def _tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer of a few words, from files written here (nothing downloaded)."""
    import transformers

    words = ["a", "cat", "photo", "sharp"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 2, "!": 1}
    for i, ch in enumerate(sorted(set("".join(words)))):
        vocab.setdefault(ch, 10 + i)
        vocab.setdefault(f"{ch}</w>", 40 + i)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: words are spelled by characters
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16,
                                      pad_token="!")


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A StableDiffusionUpscalePipeline of random tiny components (v-prediction DDIM), saved as safetensors, as
    diffusers' own tests build theirs (tadsr[sd], in the test extra)."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=16, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
        num_class_embeds=100)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 32, 64], in_channels=3, out_channels=3,
                                  down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                                  latent_channels=4, scaling_factor=0.08333)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=100, max_position_embeddings=16))
    root = tmp_path_factory.mktemp("sd")
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=_tokenizer(root / "tok-src"), unet=unet,
        low_res_scheduler=diffusers.DDPMScheduler(),
        scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350)
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    return root / "pipe"


@pytest.fixture(scope="session")
def seesr_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SeeSR folder (``tadsr convert seesr --variant seesr``) of tiny random parts in the official layouts:
    ``tests/test_seesr_convert.py``'s release (the parity fixtures' UNet and ControlNet, DAPE) with the
    SD-2-base-like parts of ``tests/data/seesr_pipeline`` (a VAE of SD's x8, a CLIP text encoder as wide as the
    UNet's cross-attention)."""
    import shutil

    from tadsr.seesr.convert import convert_seesr
    from test_seesr_convert import make_inputs

    root = tmp_path_factory.mktemp("seesr-teacher")
    inputs = make_inputs(root / "inputs")
    sd_base = root / "sd-base"
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(Path(__file__).parent / "data" / "seesr_pipeline" / part, sd_base / part)
    return convert_seesr(**{**inputs.args(), "sd_base": sd_base, "variant": "seesr"}, out=root / "seesr")


@pytest.fixture(scope="session")
def sd_student_file(pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SD student file (``tadsr.sd.student``) of ``pipeline_dir``'s networks, as `tadsr distill --teacher DIR`
    writes one, without the distillation: the teacher's UNet at its last timestep."""
    from tadsr.sd.diffusers_teacher import DiffusersUpscaleTeacher
    from tadsr.sd.student import save_sd_student

    teacher = DiffusersUpscaleTeacher.from_folder(pipeline_dir)
    path = tmp_path_factory.mktemp("sd-student") / "sd-student.safetensors"
    alphas = teacher.scheduler.alphas_cumprod
    save_sd_student(path, teacher.unet, teacher.vae, teacher.low_res_scheduler, teacher.prompt_embeds,
                    teacher.noise_level, len(alphas) - 1, teacher.prediction_type, alphas)
    return path


@pytest.fixture(scope="session")
def vq_student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random student of the real-SR x4 layout: a VQ-f4 first stage (encode, quantised decode) under the
    Swin-UNet with the LR concatenated, x4."""
    from tadsr.nets.autoencoder import VQConfig

    vq = VQConfig(embed_dim=3, n_embed=64, z_channels=3, resolution=64, ch=32, ch_mult=(1, 2, 2),
                  num_res_blocks=(1, 1, 1), attn_resolutions=())
    config = ModelConfig(unet=TINY_UNET, first_stage=vq, schedule=TINY_SCHEDULE, scale=4, role="student")
    path = tmp_path_factory.mktemp("vq") / "student.safetensors"
    save_model(randomize(SRModel(config), seed=2, std=0.05).eval(), path)
    return path


@pytest.fixture(scope="session")
def onnx_student_file(vq_student_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vq_student_file`` exported by `tadsr export` with a dynamic size (the noise an input), its quantiser chunked
    by 64 pixels in PyTorch (tens of chunks at the traced size and at the sizes run: the graph must not bake in their
    number). One export for the session: it is the suite's most expensive fixture."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tadsr.export import export_onnx
    from tadsr.model import load_model

    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    model = load_model(vq_student_file)
    model.first_stage.quantize.chunk = 64
    metadata = export_onnx(model, path)
    assert metadata["noise"] == "input" and metadata["precision"] == "fp32"
    return path


@dataclass
class CliExport:
    """One `tadsr export` run: its file, exit status and click's stdout and stderr, and what reached the process's
    own stderr (file descriptor 2) past click's streams: a logging handler's own stream, a C++ notice."""

    path: Path
    code: int
    stdout: str
    stderr: str
    fd_stderr: str


@pytest.fixture(scope="session")
def fixed_onnx_export(tiny_student_file: Path, tmp_path_factory: pytest.TempPathFactory) -> CliExport:
    """`tadsr export TINY-STUDENT -o fixed.onnx --tile 32 --seed 3`, run once for the session (an export takes tens
    of seconds): test_onnx checks the graph it wrote, test_hostile_backends that it said nothing else."""
    from click.testing import CliRunner

    from tadsr.cli import main

    path = tmp_path_factory.mktemp("onnx-fixed") / "fixed.onnx"
    with tempfile.TemporaryFile() as fd_err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(fd_err.fileno(), 2)  # as capfd does: whatever writes to descriptor 2 during the export lands here
        try:
            result = CliRunner().invoke(main, ["export", str(tiny_student_file), "-o", str(path), "--tile", "32",
                                               "--seed", "3"])
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        fd_err.seek(0)
        written = fd_err.read().decode(errors="replace")
    return CliExport(path, result.exit_code, result.stdout, result.stderr, written)


def kill_at_first_checkpoint(cmd: list[str], run_dir: Path, env: dict[str, str],
                             timeout: float = 300) -> tuple[int, str]:
    """Start a training command and SIGKILL it as soon as its first checkpoint is written: (its return code, the
    checkpoint ``latest`` names), for the tests of an exact resume."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode, latest.read_text().strip()


def smooth_photos(folder: Path) -> Path:
    """Three 80x96 photos of smooth colour waves in a new ``folder``: training data for the SD-based distillation
    tests."""
    folder.mkdir()
    y, x = np.mgrid[0:80, 0:96] / 40.0
    for i in range(3):
        img = np.stack([np.sin(3 * x + i), np.cos(4 * y - i), np.sin(2 * (x + y) + i)], axis=2) * 0.4 + 0.5
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def torchrun(nproc: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``tadsr ARGS`` in ``nproc`` processes under torchrun (gloo on the CPU, one thread each)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
           "tadsr.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
