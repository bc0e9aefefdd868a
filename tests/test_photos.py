"""Native-resolution multi-scale training crops (tadsr.data.photos) and the teacher's timestep draw."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tadsr.data.degradation import preset
from tadsr.data.photos import PhotoCache, PhotoCropDataset, crop_to_float, dihedral, draw_crop, texture_score
from tadsr.training.config import TrainConfig, apply_overrides, config_from_dict, config_to_dict, train_config
from tadsr.training.teacher import draw_timesteps


def coordinate_photo(height: int, width: int) -> np.ndarray:
    """RGB uint8 whose pixels say where they are: R = x mod 256, G = y mod 256, B = a coarse block index."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x % 256, y % 256, (x // 256 + 8 * (y // 256)) * 9 % 256], axis=2).astype(np.uint8)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, (h, w) in enumerate([(600, 800), (520, 700), (300, 1000)]):
        cv2.imwrite(str(folder / f"p{k}.png"), coordinate_photo(h, w)[:, :, ::-1])
    return folder


def undo_dihedral(crop: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(crop[:, ::-1] if k >= 4 else crop, -(k % 4)) for k in range(8)]


def test_scale_one_crops_are_native_windows_of_the_photo(photos: Path, tmp_path: Path) -> None:
    """With s = 1 a GT crop is a window of the photo at its own resolution (only flipped or turned), no resampling."""
    data = PhotoCropDataset(photos, preset("bicubic"), tmp_path / "cache", gt_size=64, scale_range=(1.0, 1.0), seed=3)
    for index in range(12):
        _, gt = data.gt_crop(index, 0, torch.Generator().manual_seed(index))
        pixels = np.rint(gt * 255).astype(int)
        # some symmetry of the crop has x (R) rising by one along rows and y (G) rising by one down columns
        found = [p for p in undo_dihedral(pixels)
                 if (np.diff(p[:, :, 0], axis=1) % 256 == 1).all() and (np.diff(p[:, :, 1], axis=0) % 256 == 1).all()]
        assert found, f"sample {index} is not a native window"


def test_crop_sides_follow_the_scale_range() -> None:
    gen = torch.Generator().manual_seed(0)
    sides = [draw_crop(4000, 3000, 128, (0.25, 1.0), gen)[2] for _ in range(400)]
    assert min(sides) >= 128 and max(sides) <= 512
    assert min(sides) < 160 and max(sides) > 450  # the whole range is used: multi-scale, not one zoom
    for _ in range(50):  # a photo smaller than the drawn side gives its short side, in bounds
        top, left, side = draw_crop(200, 300, 128, (0.25, 0.25), gen)
        assert side == 200 and top == 0 and 0 <= left <= 100


def test_crop_to_float_area_downscales() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    img[::2] = 255  # alternate rows: the area average of any 2x2 block is mid-gray
    out = crop_to_float(img, 0, 0, 40, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_dihedral_gives_eight_distinct_symmetries() -> None:
    img = np.arange(9).reshape(3, 3, 1)
    assert len({dihedral(img, k).tobytes() for k in range(8)}) == 8


def test_samples_are_deterministic_per_seed_and_index(photos: Path, tmp_path: Path) -> None:
    make = lambda cache, seed=5: PhotoCropDataset(photos, preset("realesrgan-mild"), tmp_path / cache, gt_size=64,  # noqa: E731
                                                 gray_prob=0.3, seed=seed)
    a, b = make("c1"), make("c2")
    for index, epoch in [(0, 0), (4, 0), (4, 2)]:
        x, y = a.sample(index, epoch), b.sample(index, epoch)
        assert torch.equal(x["gt"], y["gt"]) and torch.equal(x["lq"], y["lq"])
    assert x["gt"].shape == (3, 64, 64) and x["lq"].shape == (3, 16, 16)
    assert not torch.equal(a.sample(4, 0)["gt"], a.sample(4, 1)["gt"])  # a new epoch draws a new crop
    assert not torch.equal(a.sample(0, 0)["gt"], make("c3", seed=6).sample(0, 0)["gt"])


def test_each_photo_is_decoded_once(photos: Path, tmp_path: Path) -> None:
    data = PhotoCropDataset(photos, preset("bicubic"), tmp_path / "cache", gt_size=32, seed=0)
    for index in range(30):
        data.sample(index, index // 3)
    assert data.cache.decodes == 3
    again = PhotoCropDataset(photos, preset("bicubic"), tmp_path / "cache", gt_size=32, seed=0)
    again.sample(0, 0)
    again.sample(1, 0)
    assert again.cache.decodes == 0  # another process (a data worker, a resumed run) reads the cache
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3 and not list((tmp_path / "cache").glob("*.tmp"))


def test_a_changed_photo_is_decoded_again(photos: Path, tmp_path: Path) -> None:
    cache = PhotoCache(tmp_path / "cache")
    first = np.array(cache.get(photos / "p0.png"))
    cv2.imwrite(str(photos / "p0.png"), np.zeros((50, 60, 3), np.uint8))
    assert PhotoCache(tmp_path / "cache").get(photos / "p0.png").shape == (50, 60, 3) != first.shape


def test_gray_copies_have_equal_channels(photos: Path, tmp_path: Path) -> None:
    data = PhotoCropDataset(photos, preset("bicubic"), tmp_path / "cache", gt_size=32, gray_prob=1.0, seed=0)
    gt = data.sample(2, 0)["gt"]
    assert torch.equal(gt[0], gt[1]) and torch.equal(gt[1], gt[2])


def test_a_bad_photo_is_named_once_and_skipped(photos: Path, tmp_path: Path) -> None:
    (photos / "broken.png").write_bytes(b"not a png")
    data = PhotoCropDataset(photos, preset("bicubic"), tmp_path / "cache", gt_size=32, seed=0)
    with pytest.warns(RuntimeWarning, match="broken.png"):
        sample = data.sample(0, 0)  # broken.png sorts first
    assert sample["name"] == "p0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.sample(0, 1)


@pytest.mark.parametrize("kwargs, message", [({"scale_range": (0.0, 1.0)}, "scale_range"),
                                             ({"scale_range": (0.5, 1.5)}, "scale_range"),
                                             ({"gray_prob": 2.0}, "gray_prob"), ({"gt_size": 30}, "multiple"),
                                             ({"texture_ref": -1.0}, "texture_ref"),
                                             ({"texture_tries": 0}, "texture_tries")])
def test_bad_settings_are_refused(photos: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PhotoCropDataset(photos, preset("bicubic"), tmp_path / "cache", **{"gt_size": 32, **kwargs})


def half_flat_photo(height: int = 512, width: int = 512) -> np.ndarray:
    """Left half flat gray, right half seeded noise: crops range from flat to textured."""
    img = np.full((height, width, 3), 128, np.uint8)
    img[:, width // 2:] = np.random.default_rng(0).integers(0, 256, (height, width - width // 2, 3))
    return img


def test_texture_score_is_zero_when_flat_and_grows_with_texture() -> None:
    flat, ramp = np.full((16, 16, 3), 0.5, np.float32), np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    assert texture_score(flat) == 0.0
    assert texture_score(np.repeat(ramp[..., None], 3, 2)) == pytest.approx(255 / 15 / 2, rel=1e-5)


def test_texture_aware_crops_prefer_texture_and_stay_deterministic(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "half.png"), half_flat_photo())
    make = lambda cache, ref: PhotoCropDataset(folder, preset("bicubic"), tmp_path / cache, gt_size=64,  # noqa: E731
                                               scale_range=(1.0, 1.0), seed=3, texture_ref=ref)
    plain, textured = make("c1", 0.0), make("c2", 30.0)
    scores = {name: [texture_score(d.sample(i, 0)["gt"].permute(1, 2, 0).numpy()) for i in range(40)]
              for name, d in (("plain", plain), ("textured", textured))}
    flat = {name: sum(s < 1 for s in v) for name, v in scores.items()}
    assert flat["plain"] >= 8 and flat["textured"] <= flat["plain"] // 4  # flat crops mostly rejected
    assert np.median(scores["textured"]) > np.median(scores["plain"])
    again = make("c3", 30.0)
    assert all(torch.equal(again.sample(i, 0)["gt"], textured.sample(i, 0)["gt"]) for i in (0, 7))


def test_trainer_config_selects_native_crops_and_old_configs_still_load() -> None:
    config = apply_overrides(train_config("tiny", "train-teacher"),
                             ["data.crop=native", "data.scale_range=[0.5,1]", "teacher.t_last_prob=0.25"])
    assert config.data.crop == "native" and config.data.scale_range == (0.5, 1.0)
    assert config.teacher.t_last_prob == 0.25
    assert config_from_dict(config_to_dict(config)) == config
    old = config_to_dict(train_config("tiny", "train-teacher"))
    del old["teacher"]
    for key in ("crop", "scale_range", "gray_prob", "cache_dir"):
        del old["data"][key]
    loaded: TrainConfig = config_from_dict(old)
    assert loaded.data.crop == "resize" and loaded.teacher.t_last_prob == 0.0


@pytest.mark.parametrize("override, message", [("data.crop=thumbnail", "data.crop"),
                                               ("teacher.t_last_prob=1.5", "t_last_prob"),
                                               ("data.texture_ref=8", "need data.crop=native"),
                                               ("data.texture_tries=0", "texture_tries")])
def test_bad_data_and_teacher_settings_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(train_config("tiny", "train-teacher"), [override])


def test_teacher_timesteps_put_the_asked_share_at_the_last_step() -> None:
    uniform = draw_timesteps(15, 20000, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(0, 15, (20000,), generator=torch.Generator().manual_seed(0)))
    t = draw_timesteps(15, 20000, 0.25, torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == 14
    share = float((t == 14).double().mean())
    assert abs(share - (0.25 + 0.75 / 15)) < 0.01
    assert (draw_timesteps(15, 100, 1.0, torch.Generator()) == 14).all()
