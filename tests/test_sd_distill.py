"""TAD-SR on an SD-based teacher (Appendix B): the VP process behind the one teacher interface, HSD's direction and
sign, and the end-to-end CLI run on a tiny random diffusers pipeline: distil, resume after SIGKILL, upscale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from conftest import kill_at_first_checkpoint, smooth_photos, torchrun

pytest.importorskip("diffusers")  # the test extra installs tadsr[sd]: this runs in CI

from tadsr.cli import main  # noqa: E402
from tadsr.diffusion.vp import hsd_factor  # noqa: E402
from tadsr.losses import ScoreDistillationLoss  # noqa: E402
from tadsr.sd.diffusers_teacher import DiffusersUpscaleTeacher  # noqa: E402
from tadsr.sd.process import SDCondition, VPProcess  # noqa: E402

TADSR = str(Path(sys.executable).parent / "tadsr")


class ShrinkingDenoiser(torch.nn.Module):
    """eps_hat = k z_t: a denoiser whose implied noise grows with the input, so HSD's direction is
    g = k sqrt(alpha_bar) (z_stu - z_tch) (a positive multiple of the residual: the sign test)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, class_labels: torch.Tensor,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        return (0.3 * x[:, :4],)


def _cond(n: int = 2) -> SDCondition:
    return SDCondition(torch.zeros(n, 3, 4, 4), torch.full((n,), 20), torch.zeros(n, 2, 8))


def _alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def test_hsd_moves_the_student_toward_the_teacher_under_the_vp_process() -> None:
    process = VPProcess(ShrinkingDenoiser(), _alphas(), "epsilon")
    hsd = ScoreDistillationLoss(process, "hsd", (0, 200))
    gen = torch.Generator().manual_seed(0)
    z_tch = torch.randn(2, 4, 4, 4, generator=gen)
    z = torch.randn(2, 4, 4, 4, generator=gen).requires_grad_(True)
    assert torch.equal(hsd(z_tch, z_tch.clone(), _cond(), gen), torch.zeros(2))  # zero at the teacher
    start = float((z - z_tch).detach().norm())
    optimizer = torch.optim.SGD([z], lr=20.0)
    for _ in range(20):
        optimizer.zero_grad()
        hsd(z, z_tch, _cond(), gen).sum().backward()
        optimizer.step()
    assert float((z - z_tch).detach().norm()) < 0.5 * start  # descent on HSD closes the gap: the sign is right


def test_the_vp_hsd_direction_matches_its_closed_form(pipeline_dir: Path) -> None:
    """g = sqrt(ab)/sqrt(1 - ab) [(z_s - z_tch) - (x0(z_t^s) - x0(z_t^tch))] (docs/implementation-notes.md, "HSD for a
    VP teacher"), on the tiny pipeline's real UNet and its v-prediction."""
    teacher = DiffusersUpscaleTeacher.from_folder(pipeline_dir)
    process = VPProcess(teacher.unet, teacher.scheduler.alphas_cumprod.double(), teacher.prediction_type)
    gen = torch.Generator().manual_seed(1)
    lr = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    cond = teacher.condition(lr, lr_noise=torch.randn(2, 3, 8, 8, generator=gen))
    z_s, z_tch = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    g, t = ScoreDistillationLoss(process, "hsd", (0, 200)).direction(z_s, z_tch, cond,
                                                                      torch.Generator().manual_seed(2))
    again = torch.Generator().manual_seed(2)
    assert torch.equal(t, torch.randint(0, 200, (2,), generator=again))
    noise = torch.randn(z_s.shape, generator=again)
    with torch.no_grad():
        x0 = [process.x0_hat(process.q_sample(z, t, noise, cond), t, cond) for z in (z_s, z_tch)]
    expected = hsd_factor(process.alphas_cumprod, t).view(-1, 1, 1, 1) * ((z_s - z_tch) - (x0[0] - x0[1]))
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)


def test_the_discriminator_reads_the_down_blocks_with_their_graph(pipeline_dir: Path) -> None:
    teacher = DiffusersUpscaleTeacher.from_folder(pipeline_dir)
    process = VPProcess(teacher.unet, teacher.scheduler.alphas_cumprod.double(), teacher.prediction_type)
    cond = teacher.condition(torch.zeros(1, 3, 16, 16), lr_noise=torch.zeros(1, 3, 16, 16))
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    features = process.encoder_features(z, torch.tensor([10]), cond)
    assert [tuple(f.shape[1:]) for f in features] == [(32, 8, 8), (32, 4, 4), (64, 4, 4)]
    sum(f.sum() for f in features).backward()  # the fake features carry the student's graph
    assert z.grad is not None and z.grad.abs().sum() > 0



def _distill(pipeline_dir: Path, photos: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [TADSR, "distill", "--teacher", str(pipeline_dir), "--data", str(photos), "--out", str(out), "--steps",
            str(steps), "-q", "run.batch_size=2", "data.gt_size=64", "family.teacher_steps=2", "run.save_every=1",
            "run.val_every=1000", "run.keep_last=10", "run.log_every=1", "distill.teacher_cache=4", *extra]


@pytest.mark.slow
def test_distil_resume_after_sigkill_and_upscale_with_the_student(pipeline_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    photos = smooth_photos(tmp_path / "photos")
    steps = 4
    done = subprocess.run(_distill(pipeline_dir, photos, tmp_path / "a", steps), capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert "the tiny preset's recipe" in done.stderr
    log = [line for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if '"distill"' in line]
    assert len(log) == steps and all(k in log[-1] for k in ('"hsd"', '"adv"', '"d_loss"'))
    code, killed_at = kill_at_first_checkpoint(_distill(pipeline_dir, photos, tmp_path / "b", steps),
                                               tmp_path / "b", env)
    assert code == -signal.SIGKILL and killed_at < f"step_{steps:08d}.pt"
    assert not (tmp_path / "b" / "final.safetensors").exists()
    resumed = subprocess.run([*_distill(pipeline_dir, photos, tmp_path / "b", steps), "--resume"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_file(str(tmp_path / run / "final.safetensors")) for run in ("a", "b"))
    assert a.keys() == b.keys() and any(k.startswith("unet.") for k in a) and "prompt_embeds" in a
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed from {killed_at}"
    teacher_unet = load_file(str(next((pipeline_dir / "unet").glob("*.safetensors"))))
    assert any(not torch.equal(a[f"unet.{k}"], v) for k, v in teacher_unet.items())  # the student moved

    rgb = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lr.png")
    outs = {}
    cli = CliRunner()  # the student's uses run in this process: the same commands without an interpreter's start
    for tile in ("0", "16"):
        result = cli.invoke(main, ["upscale", "-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / f"t{tile}"),
                                   "--model", str(tmp_path / "a" / "final.safetensors"), "--tile", tile,
                                   "--tile-overlap", "4", "-q"])
        assert result.exit_code == 0, result.stderr
        outs[tile] = np.asarray(Image.open(tmp_path / f"t{tile}" / "lr.png"))
    assert outs["0"].shape == outs["16"].shape == (80, 112, 3)
    from tadsr import Upscaler, open_model

    student = tmp_path / "a" / "final.safetensors"
    library = Upscaler(open_model(student), tile=0).upscale(rgb)
    assert np.array_equal(library, outs["0"])  # the CLI runs the library's one step

    from tadsr.web.jobs import ModelCache, model_catalogue  # tadsr serve lists and runs it like any model file

    catalogue = model_catalogue([student])
    assert catalogue["final.safetensors"].role == "student" and catalogue["final.safetensors"].scale == 4
    page = ModelCache(catalogue, torch.device("cpu")).upscaler("final.safetensors", tile=0).upscale(rgb)
    assert np.array_equal(page, library)
    (tmp_path / "lrs").mkdir()
    Image.fromarray(rgb).save(tmp_path / "lrs" / "lr.png")  # its pair: the untiled output as the "GT"
    evaluation = cli.invoke(main, ["evaluate", "--lr", str(tmp_path / "lrs"), "--gt", str(tmp_path / "t0"),
                                   "--models", f"{student}:1", "--metrics", "psnr", "-o", str(tmp_path / "eval"), "-q"])
    assert evaluation.exit_code == 0, evaluation.stderr
    assert "final:1" in (tmp_path / "eval" / "report.md").read_text()
    bench = cli.invoke(main, ["bench", "--models", str(student), "--sizes", "16", "--repeats", "1"])
    assert bench.exit_code == 0, bench.stderr
    assert "| final.safetensors | 16→64 | fp32 |" in bench.stdout


@pytest.mark.slow
def test_torchrun_two_processes_distil_an_sd_teacher(pipeline_dir: Path, tmp_path: Path) -> None:
    photos = smooth_photos(tmp_path / "photos")
    result = torchrun(2, *_distill(pipeline_dir, photos, tmp_path / "run", 2)[1:])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "final.safetensors").is_file()  # written after the ranks' weights were checked equal
    assert result.stdout.count("tadsr: wrote") == 1


def test_a_folder_that_is_not_a_pipeline_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    result = subprocess.run([TADSR, "distill", "--teacher", str(tmp_path / "folder"), "--data", str(tmp_path),
                             "--out", str(tmp_path / "run"), "--steps", "1", "-q"], capture_output=True, text=True)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "not a model folder" in result.stderr and not (tmp_path / "run").exists()
