"""DAPE's tag head, tag rule and preprocessing (``tadsr.seesr.tags``) against the official SeeSR / RAM code.

The fixtures in ``tests/data/seesr_parity/tagging`` (or ``$TADSR_SEESR_FIXTURES/tagging``) were written by
``scripts/seesr_parity_fixtures.py`` from cswry/SeeSR 8edecc71 (``ram/models/ram_lora.py``, ``bert_lora.py``; its
README says how): a tiny tag head built, tied and LoRA-merged as ``RAMLora`` does, its logits and the tag strings of
the official ``generate_tag``, and the official preprocessing (torchvision 0.15's behaviour for tensors, emulated
with ``antialias=False``). Tolerance: max |difference| <= 1e-5.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from tadsr.checkpoints import CheckpointError
from tadsr.errors import ConfigError
from tadsr.seesr.dape import DapeImageEncoder, SwinConfig, merge_lora
from tadsr.seesr.tags import (
    DAPE_TAG_HEAD,
    MIN_LR_SIDE,
    Dape,
    TagHead,
    TagHeadConfig,
    dape_input,
    fired_classes,
    load_tag_head,
    read_tag_list,
    read_thresholds,
    tag_head_state,
    tags_of,
)

FIXTURES = Path(os.environ.get("TADSR_SEESR_FIXTURES", Path(__file__).parent / "data" / "seesr_parity"))
TAGGING = FIXTURES / "tagging"
TOLERANCE = 1e-5
TINY = TagHeadConfig(num_classes=6, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, encoder_width=16)


def _read(name: str, folder: Path = TAGGING) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in load_file(folder / name).items()}  # clone: aligned memory


def _config() -> dict:
    return json.loads((TAGGING / "config.json").read_text())


def _head_config() -> TagHeadConfig:
    config = _config()
    return TagHeadConfig.from_dict({**config["tagging_head"], "num_classes": config["num_classes"],
                                    "lora_alpha": config["lora_alpha"], "lora_r": config["lora_r"]})


def _official_head() -> TagHead:
    return load_tag_head(TagHead(_head_config()).eval(), _read("state.safetensors"), source="state.safetensors")


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------------------------------------------
# Parity with the official code.


def test_tag_head_gives_the_official_logits_and_tags() -> None:
    io = _read("io.safetensors")
    head = _official_head()
    with torch.no_grad():
        logits = head(io["embeds"])
    assert logits.shape == io["logits"].shape
    assert (logits - io["logits"]).abs().max().item() <= TOLERANCE
    names = read_tag_list(TAGGING / "tag_list.txt")
    thresholds = read_thresholds(TAGGING / "thresholds.txt", len(names))
    assert torch.equal(thresholds, io["class_threshold"])  # parsed as RAMLora builds class_threshold
    expected = json.loads((TAGGING / "tags.json").read_text(encoding="utf-8"))
    assert tags_of(logits, thresholds, names, _config()["delete_tag_index"]) == expected["tags"]


def test_the_tied_tag_encoder_lora_changes_the_tag_head() -> None:
    """RAMLora ties the tag_encoder's lowest layers to the tag head: their LoRA is merged into the shared weights
    too. Leaving it out is far from the official logits."""
    io = _read("io.safetensors")
    state = {k: v for k, v in _read("state.safetensors").items() if not k.startswith("tag_encoder.")}
    head = load_tag_head(TagHead(_head_config()).eval(), state)
    with torch.no_grad():
        assert (head(io["embeds"]) - io["logits"]).abs().max().item() > 1e-2


def test_dape_input_is_the_official_preprocessing() -> None:
    pre = _read("preprocess.safetensors")
    size = _config()["input_size"]
    stride = _config()["dape_stride"]
    cases = {"y": dape_input(pre["lr"], size),
             "y_antialias": dape_input(pre["lr"], size, antialias=True),
             "y_bicubic": dape_input(pre["lr"], size, interpolation="bicubic"),
             "y384": dape_input(pre["lr"])[..., ::stride, ::stride]}
    for name, value in cases.items():
        assert value.shape == pre[name].shape, name
        assert (value - pre[name]).abs().max().item() <= TOLERANCE, name
    assert (pre["y"] - pre["y_antialias"]).abs().max().item() > 0.1  # the option matters when shrinking


def test_dape_end_to_end_gives_the_official_embeddings_and_tags() -> None:
    """LR -> dape_input -> Swin (../swin) -> image_proj -> tag head, against the official generate_image_embeds and
    generate_tag on the official preprocessing of the same LR."""
    swin_config = SwinConfig.from_dict(json.loads((FIXTURES / "swin" / "config.json").read_text()))
    state = _read("state.safetensors")
    encoder = DapeImageEncoder.from_config(swin_config)
    encoder.visual_encoder.load_state_dict(merge_lora(_read("state.safetensors", FIXTURES / "swin"), swin_config),
                                           strict=True)
    encoder.image_proj.load_state_dict({"weight": state["image_proj.weight"], "bias": state["image_proj.bias"]})
    names = read_tag_list(TAGGING / "tag_list.txt")
    dape = Dape(encoder, _official_head(), names, read_thresholds(TAGGING / "thresholds.txt", len(names)),
                _config()["delete_tag_index"]).eval()
    io = _read("io.safetensors")
    with torch.no_grad():
        embeddings, tags = dape(_read("preprocess.safetensors")["lr"])
        logits = dape.head(embeddings)
    assert (embeddings - io["embeds_lr"]).abs().max().item() <= TOLERANCE
    assert (logits - io["logits_lr"]).abs().max().item() <= TOLERANCE
    assert tags == json.loads((TAGGING / "tags.json").read_text(encoding="utf-8"))["tags_lr"]


def test_dape_tag_head_has_the_official_size() -> None:
    """configs/q2l_config.json with encoder_width 512 (ram_lora.py:131-132) and 4585 classes; 16,131,585
    parameters without LoRA, as counted on the official modules (bert_lora.BertModel after del_selfattention, plus
    label_embed, wordvec_proj, fc) in the reference environment."""
    q2l = {"hidden_act": "gelu", "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
           "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 30522, "encoder_width": 512,
           "add_cross_attention": True}
    assert TagHeadConfig.from_dict({**q2l, "num_class": 4585}) == DAPE_TAG_HEAD
    with torch.device("meta"):
        head = TagHead()
    assert sum(p.numel() for p in head.parameters()) == 16_131_585
    keys = list(head.state_dict())
    # As in RAMLora's state dict: its own parameter label_embed first, then the modules in registration order.
    assert keys[:2] == ["label_embed", "tagging_head.encoder.layer.0.crossattention.self.query.weight"]
    assert keys[-4:] == ["wordvec_proj.weight", "wordvec_proj.bias", "fc.weight", "fc.bias"]
    same_width = TagHead(TagHeadConfig(num_classes=3, hidden_size=16, num_heads=2, intermediate_size=8,
                                       encoder_width=16))
    assert not any(k.startswith("wordvec_proj") for k in same_width.state_dict())  # an identity (ram_lora.py:139)


# ---------------------------------------------------------------------------------------------------------------
# The tag rule.


def test_tags_of_keeps_class_order_drops_deleted_and_needs_strictly_more() -> None:
    names = ["a", "b c", "d", "e"]
    logits = torch.tensor([[3.0, 2.0, -1.0, 1.0], [-3.0, -2.0, -1.0, -4.0]])
    thresholds = [0.5, 0.5, 0.5, 0.5]
    assert tags_of(logits, thresholds, names) == ["a, b c, e", ""]  # by class index; "" when none fires
    assert tags_of(logits, thresholds, names, deleted=[1]) == ["a, e", ""]
    assert tags_of(logits[0], thresholds, names) == ["a, b c, e"]  # one image as (C,)
    exact = torch.sigmoid(logits[0])  # a probability equal to its (float32) threshold does not fire
    assert tags_of(logits[0], exact, names) == [""]
    below = torch.nextafter(exact, torch.full_like(exact, -1.0))
    assert tags_of(logits[0], below, names) == ["a, b c, d, e"]
    assert fired_classes(logits, [0.0] * 4, deleted=[0, 3]).tolist() == [[False, True, True, False]] * 2


def test_thresholds_are_compared_as_float32() -> None:
    """RAM's class_threshold is float32: a Python threshold is rounded to float32 before comparing, so a float64
    probability just above the double 0.3 but below float32(0.3) does not fire."""
    p = 0.3000000001  # float32(0.3) = 0.30000001192...
    logit = torch.logit(torch.tensor([p], dtype=torch.float64))
    assert tags_of(logit, [0.3], ["x"]) == [""]
    assert tags_of(logit.float(), [0.29], ["x"]) == ["x"]


def test_bad_tag_inputs_are_refused_in_one_line() -> None:
    logits = torch.zeros(2, 3)
    for call, words in [(lambda: tags_of(logits, [0.5] * 2, ["a", "b", "c"]), "2 values for 3"),
                        (lambda: tags_of(logits, [0.5] * 3, ["a", "b"]), "2 names for 3"),
                        (lambda: tags_of(logits, [0.5] * 3, ["a", "b", "c"], deleted=[3]), "3 is not a class"),
                        (lambda: tags_of(logits, [0.5, float("nan"), 0.5], ["a", "b", "c"]), "class 1")]:
        with pytest.raises(ConfigError) as err:
            call()
        assert words in _one_line(err)


def test_tag_files_are_read_as_ram_reads_them(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("dog\nhot dog\ncat\n", encoding="utf-8")  # a final newline adds no name
    assert read_tag_list(names) == ("dog", "hot dog", "cat")
    thresholds = tmp_path / "thresholds.txt"
    thresholds.write_text(" 0.65\n0.9\n", encoding="utf-8")
    values = read_thresholds(thresholds, 3)
    assert values.dtype == torch.float32
    assert values.tolist() == torch.tensor([0.65, 0.9, 0.68]).tolist()  # the rest keep RAM's 0.68
    for text, words in [("0.5\n0.5\n0.5\n0.5\n", "4 thresholds for 3"), ("0.5\nhigh\n", ":2:"),
                        ("0.5\ninf\n", ":2:")]:
        thresholds.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            read_thresholds(thresholds, 3)
        assert words in _one_line(err)
    with pytest.raises(ConfigError):
        read_tag_list(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------------
# Official state dicts that do not fit.


def _official_state(config: TagHeadConfig, seed: int = 0) -> dict[str, Tensor]:
    """A random state in the official layout: TagHead's keys plus loralib's lora_A / lora_B on query and key."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in TagHead(config).state_dict().items()}
    for i in range(config.num_layers):
        for proj, width in (("query", config.hidden_size), ("key", config.encoder_width)):
            name = f"tagging_head.encoder.layer.{i}.crossattention.self.{proj}"
            state[f"{name}.lora_A"] = torch.randn(config.lora_r, width, generator=gen)
            state[f"{name}.lora_B"] = torch.randn(config.hidden_size, config.lora_r, generator=gen)
    return state


def test_lora_merge_and_ignored_official_keys() -> None:
    state = _official_state(TINY)
    name = "tagging_head.encoder.layer.1.crossattention.self.key"
    tied = "tag_encoder.encoder.layer.1.crossattention.self.key"
    extra = {f"{tied}.lora_A": torch.randn(8, 16), f"{tied}.lora_B": torch.randn(8, 8),
             "tagging_head.encoder.layer.0.attention.self.query.weight": torch.zeros(1),  # deleted by RAM
             "tagging_head.embeddings.word_embeddings.weight": torch.zeros(1),
             "text_decoder.bert.encoder.layer.0.output.dense.weight": torch.zeros(1),
             "visual_encoder.norm.weight": torch.zeros(1)}
    merged = tag_head_state({**state, **extra}, TINY)
    assert set(merged) == set(TagHead(TINY).state_dict())
    expected = state[f"{name}.weight"] + extra[f"{tied}.lora_B"] @ extra[f"{tied}.lora_A"] / 8 \
        + state[f"{name}.lora_B"] @ state[f"{name}.lora_A"] / 8
    assert (merged[f"{name}.weight"] - expected).abs().max().item() <= 1e-5
    value = name.replace("key", "value")
    assert torch.equal(merged[f"{value}.weight"], state[f"{value}.weight"])  # value has no LoRA
    plain = tag_head_state(state, TINY)
    renamed = {k.replace("tagging_head.", "vision_multi.", 1): v for k, v in state.items()}  # RAM's old name
    prefixed = {f"module.{k}": v for k, v in state.items()}
    for other in (tag_head_state(renamed, TINY), tag_head_state(prefixed, TINY, prefix="module.")):
        assert other.keys() == plain.keys() and all(torch.equal(other[k], plain[k]) for k in plain)


@pytest.mark.parametrize(("change", "key"), [
    ("classes", "label_embed"),
    ("width", "tagging_head.encoder.layer.0.crossattention.self.query.weight"),
    ("missing", "tagging_head.encoder.layer.1.output.LayerNorm.bias"),
    ("half_lora", "tagging_head.encoder.layer.0.crossattention.self.query.lora_B"),
    ("lora_shape", "tagging_head.encoder.layer.1.crossattention.self.key.lora_A"),
    ("extra_layer", "tagging_head.encoder.layer.2.crossattention.self.value.bias"),
])
def test_a_state_dict_that_does_not_fit_names_the_first_bad_key(change: str, key: str) -> None:
    state = _official_state(TINY)
    if change == "classes":
        state = _official_state(replace(TINY, num_classes=7))
    elif change == "width":
        state = _official_state(replace(TINY, hidden_size=12))
    elif change in ("missing", "half_lora"):
        del state[key.replace("lora_B", "lora_A") if change == "half_lora" else key]
    elif change == "lora_shape":
        state[key] = torch.zeros(4, 16)
    else:
        state[key] = torch.zeros(8)
    with pytest.raises(CheckpointError) as err:
        load_tag_head(TagHead(TINY), state, source="dape.pth")
    text = _one_line(err)
    assert text.startswith("dape.pth: ") and key in text


# ---------------------------------------------------------------------------------------------------------------
# Bad input.


def test_an_lr_too_small_or_of_the_wrong_kind_is_refused_in_one_line() -> None:
    from tadsr.data.image_io import MIN_SIDE

    assert MIN_LR_SIDE == MIN_SIDE
    dape_input(torch.rand(1, 3, MIN_LR_SIDE, 9), size=16)  # the least side is accepted
    for lr, words in [(torch.rand(1, 3, MIN_LR_SIDE - 1, 50), "too small"),
                      (torch.rand(2, 3, 40, 1), "40 LR is too small"),
                      (torch.rand(3, 40, 40), "(N, 3, H, W)"),
                      (torch.rand(1, 4, 40, 40), "(N, 3, H, W)"),
                      (torch.randint(0, 255, (1, 3, 40, 40), dtype=torch.uint8), "floating-point")]:
        with pytest.raises(ConfigError) as err:
            dape_input(lr)
        assert words in _one_line(err)


def test_dape_input_keeps_a_square_input_of_the_size_and_computes_half_in_float32() -> None:
    lr = torch.rand(2, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.equal(dape_input(lr, size=16), (lr - mean) / std)
    half = dape_input(lr.half(), size=24)
    assert half.dtype == torch.float32
    assert (half - dape_input(lr.half().float(), size=24)).abs().max().item() == 0.0


def test_dape_checks_its_parts_fit() -> None:
    swin = SwinConfig(img_size=32, patch_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4)
    encoder = DapeImageEncoder.from_config(swin, out_dim=16)
    with pytest.raises(ConfigError, match="5 names for a tag head of 6"):
        Dape(encoder, TagHead(TINY), list("abcde"), [0.5] * 6)
    with pytest.raises(ConfigError, match="512-wide"):
        Dape(DapeImageEncoder.from_config(swin), TagHead(TINY), list("abcdef"), [0.5] * 6)
    dape = Dape(encoder, TagHead(TINY), list("abcdef"), [0.5] * 6).eval()
    assert "thresholds" not in dape.state_dict()
    with torch.no_grad():
        embeddings, tags = dape(torch.rand(2, 3, 20, 45))
    assert embeddings.shape == (2, swin.num_tokens, 16) and len(tags) == 2
    with pytest.raises(ValueError, match=r"\(N, K, 16\)"):
        TagHead(TINY)(torch.zeros(1, 5, 12))
