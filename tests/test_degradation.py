"""Degradation: kernels, each stage's effect, pipelines, reproducibility, datasets and `tadsr degrade`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tadsr.cli import main
from tadsr.data import kernels as K
from tadsr.data.datasets import DegradedImageDataset, PairedImageDataset
from tadsr.data.degradation import (
    PRESETS,
    NoiseParams,
    add_noise,
    degrade,
    draw_params,
    filter2d,
    jpeg,
    params_from_dict,
    params_to_dict,
    preset,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _textured(size: int = 128, seed: int = 0) -> torch.Tensor:
    """A natural-ish test image: smooth colour ramps plus fine texture, in [0.1, 0.9]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2])
    texture = torch.rand(3, size, size, generator=_gen(seed)) * 0.3
    return (0.1 + 0.55 * base + texture).clamp(0, 1)[None]


def _high_freq_energy(x: torch.Tensor) -> float:
    lap = x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


@pytest.mark.parametrize("kernel", [
    K.gaussian_kernel(11, 2.0), K.gaussian_kernel(9, 1.0, 3.0, 0.7),
    K.generalized_gaussian_kernel(13, 2.0, 1.0, 0.3, 0.6), K.plateau_kernel(15, 1.5, 2.5, -1.0, 1.5),
    K.sinc_kernel(11, math.pi / 2), K.pulse_kernel(),
])
def test_kernels_sum_to_one_and_are_centro_symmetric(kernel: torch.Tensor) -> None:
    assert kernel.dim() == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert math.isclose(kernel.sum().item(), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(kernel, kernel.flip(0, 1))


def test_isotropic_gaussian_is_symmetric_and_anisotropic_is_not() -> None:
    iso = K.gaussian_kernel(11, 2.0)
    torch.testing.assert_close(iso, iso.T)
    torch.testing.assert_close(iso, iso.flip(0))
    aniso = K.gaussian_kernel(11, 1.0, 3.0, 0.5)
    assert not torch.allclose(aniso, aniso.T)
    assert iso.argmax() == 60  # peak in the middle


def test_sinc_kernel_matches_the_closed_form() -> None:
    k = K.sinc_kernel(7, math.pi / 2)
    # k(r=1) / k(0) = (w J1(w) / 2 pi) / (w^2 / 4 pi) = 2 J1(w) / w
    ratio = k[3, 4] / k[3, 3]
    w = torch.tensor(math.pi / 2, dtype=torch.float64)
    torch.testing.assert_close(ratio, 2 * torch.special.bessel_j1(w) / w)


def test_drawn_kernels_follow_the_config() -> None:
    cfg = K.KernelConfig(sizes=(3, 5, 7), sinc_prob=0.1)
    draws = [K.draw_kernel(cfg, _gen(i)) for i in range(600)]
    assert {d.size for d in draws} == {3, 5, 7}
    sinc = sum(d.kind == "sinc" for d in draws) / len(draws)
    iso = sum(d.kind == "iso" for d in draws) / len(draws)
    assert 0.06 < sinc < 0.14 and 0.35 < iso < 0.46  # 0.1 and 0.9 * 0.45
    for d in draws[:50]:
        k = d.build()
        assert k.shape == (21, 21) and math.isclose(k.sum().item(), 1.0, rel_tol=1e-9)
        assert d.sigma_x is None or 0.2 <= d.sigma_x <= 3.0


def test_blur_lowers_high_frequency_energy() -> None:
    img = _textured()
    blurred = filter2d(img, K.gaussian_kernel(7, 1.5))
    assert blurred.shape == img.shape
    assert _high_freq_energy(blurred) < 0.2 * _high_freq_energy(img)


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_raises_variance_by_sigma_squared(gray: bool) -> None:
    flat = torch.full((1, 3, 128, 128), 0.5)
    noisy = add_noise(flat, NoiseParams("gaussian", 20.0, gray, seed=3))
    measured = (noisy - flat).var().item()
    assert abs(measured / (20 / 255) ** 2 - 1) < 0.05
    assert torch.equal(noisy[:, 0], noisy[:, 1]) == gray


def test_poisson_noise_adds_signal_dependent_noise() -> None:
    img = _textured()
    noisy = add_noise(img, NoiseParams("poisson", 3.0, False, seed=1))
    assert 0 < (noisy - img).abs().mean() < 0.2


def test_stronger_jpeg_differs_more() -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    img = (0.5 + 0.3 * torch.stack([torch.sin(20 * x), torch.cos(14 * y), torch.sin(9 * (x + y))]))[None]
    err30 = (jpeg(img, 30) - img).pow(2).mean()
    err95 = (jpeg(img, 95) - img).pow(2).mean()
    assert err30 > 2 * err95 > 0


@pytest.mark.parametrize("name", PRESETS)
def test_pipeline_shapes_ranges_and_8bit_levels(name: str) -> None:
    cfg = preset(name)
    size = 512 if name == "face-gfpgan" else 256
    hr = _textured(size).expand(3, -1, -1, -1).clone()
    params = [draw_params(cfg, _gen(i)) for i in range(3)]
    gt, lq = degrade(cfg, hr, params)
    expected = size // cfg.scale
    assert gt.shape == (3, 3, size, size) and lq.shape == (3, 3, expected, expected)
    assert lq.min() >= 0 and lq.max() <= 1
    torch.testing.assert_close(lq * 255, (lq * 255).round(), atol=1e-4, rtol=0)
    assert (lq - torch.nn.functional.interpolate(gt, size=expected, mode="area")).abs().mean() < 0.25


def test_realesrgan_covers_both_orders_and_optional_second_stage() -> None:
    cfg = preset("realesrgan")
    draws = [draw_params(cfg, _gen(i)) for i in range(40)]
    assert {d.stage2 is None for d in draws} == {True, False}
    assert {d.jpeg_first for d in draws} == {True, False}
    hr = _textured(256)
    for d in draws[:8]:  # every branch runs and lands on 64x64
        assert degrade(cfg, hr, [d])[1].shape == (1, 3, 64, 64)


def test_same_seed_same_pair_other_seed_other_pair() -> None:
    cfg = preset("realesrgan")
    hr = _textured(256)
    a = degrade(cfg, hr, [draw_params(cfg, _gen(7))])[1]
    b = degrade(cfg, hr, [draw_params(cfg, _gen(7))])[1]
    c = degrade(cfg, hr, [draw_params(cfg, _gen(8))])[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_records_replay_from_json() -> None:
    for name in PRESETS:
        cfg = preset(name)
        p = draw_params(cfg, _gen(3))
        again = params_from_dict(json.loads(json.dumps(params_to_dict(p))))
        assert again == p


@pytest.fixture
def hr_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return folder


def test_dataset_yields_good_pairs_and_warns_once_about_a_corrupt_file(hr_folder: Path) -> None:
    data = DegradedImageDataset(hr_folder, preset("realesrgan"), gt_size=64, seed=1)
    assert len(data) == 4
    with pytest.warns(RuntimeWarning, match="broken.png") as record:
        items = [data[i] for i in range(len(data))]
    assert len(record) == 1
    for item in items:
        assert item["gt"].shape == (3, 64, 64) and item["lq"].shape == (3, 16, 16)
        assert item["gt"].min() >= -1 and item["gt"].max() <= 1
        assert item["name"] != "broken"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same file
        again = [data[i] for i in range(len(data))]
    assert all(torch.equal(x["lq"], y["lq"]) for x, y in zip(items, again, strict=True))
    data.set_epoch(1)
    assert not torch.equal(data[0]["lq"], items[0]["lq"])


def test_paired_dataset_pairs_by_name_and_crops_aligned(tmp_path: Path) -> None:
    gt_dir, lq_dir = tmp_path / "gt", tmp_path / "lq"
    gt_dir.mkdir()
    lq_dir.mkdir()
    rng = np.random.default_rng(1)
    for name in ("x", "y"):
        gt = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(gt).save(gt_dir / f"{name}.png")
        Image.fromarray(gt[::4, ::4]).save(lq_dir / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(lq_dir / "only-lq.png")
    with pytest.warns(RuntimeWarning, match="1 file.*only-lq"):
        data = PairedImageDataset(lq_dir, gt_dir, scale=4, gt_size=32, seed=0)
    assert [name for name, _, _ in data.pairs] == ["x", "y"]
    item = data[0]
    assert item["gt"].shape == (3, 32, 32) and item["lq"].shape == (3, 8, 8)
    assert torch.equal(item["gt"][:, ::4, ::4], item["lq"])  # the crops are aligned


def test_degrade_command_builds_a_reproducible_test_set(hr_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(out: Path, seed: int) -> tuple[int, str, str]:
        result = runner.invoke(main, ["degrade", "-i", str(hr_folder), "-o", str(out), "--preset", "realesrgan-test",
                                      "--seed", str(seed), "--gt-size", "128", "-q"])
        return result.exit_code, result.stdout, result.stderr

    code, stdout, stderr = run(tmp_path / "a", 0)
    assert code == 1 and "3 pair(s) written" in stdout
    assert len(stderr.strip().splitlines()) == 1 and "broken.png" in stderr
    for sub in ("gt", "lq"):
        names = sorted(str(p.relative_to(tmp_path / "a" / sub)) for p in (tmp_path / "a" / sub).rglob("*.png"))
        assert names == ["a.png", "b.png", "sub/c.png"]
    with Image.open(tmp_path / "a" / "lq" / "a.png") as im:
        assert im.size == (32, 32)
    meta = json.loads((tmp_path / "a" / "params.json").read_text())
    assert meta["preset"] == "realesrgan-test" and sorted(meta["images"]) == ["a", "b", "sub/c"]
    run(tmp_path / "b", 0)
    run(tmp_path / "c", 1)
    same = (tmp_path / "a" / "lq" / "a.png").read_bytes() == (tmp_path / "b" / "lq" / "a.png").read_bytes()
    other = (tmp_path / "a" / "lq" / "a.png").read_bytes() == (tmp_path / "c" / "lq" / "a.png").read_bytes()
    assert same and not other
