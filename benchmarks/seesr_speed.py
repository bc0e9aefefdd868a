"""One TAD-SeeSR step at full size with random weights, component by component: tadsr's modules, or the official ones.

The networks have the released shapes (SD-2-base's UNet with SeeSR's image cross-attention, the ControlNet built
from it, SD-2-base's AutoencoderKL and OpenCLIP-H text encoder, DAPE's LoRA Swin-L at 384 with image_proj and its
4585-class tag head) and random weights: the values do not change the time, only finite values are needed. The big
diffusers networks are built on the meta device and filled in place (``to_empty`` + a seeded uniform fill); the
others are built normally and filled the same way.

Each component is built alone, timed (``--warmup`` untimed calls, then the median of ``--repeats``), its peak
memory read (CUDA: max allocated; CPU: the process's peak resident set, its weights included, since
``reset_peak_memory`` just before the timed calls) and freed before the next one. Inputs for LR side S (default 128,
x4 -> 4S output): DAPE on the 384² resize, the tag head on its (1, 145, 512) embeddings, the text encoder on 77
tokens, the VAE encoder on the 4S² bicubic image, ControlNet and UNet at t = 999 on the (S/2)² latent with the 4S²
condition image (the UNet gets residuals of the ControlNet's shapes), the VAE decoder on that latent.

Modes:
  python benchmarks/seesr_speed.py [--device cpu] [--dtypes fp32,bf16] [--lr 128] [--json OUT]   tadsr's modules
  <reference venv>/python benchmarks/seesr_speed.py --official SEESR_CHECKOUT --json OUT           the official ones
  python benchmarks/seesr_speed.py --compare TADSR.json OFFICIAL.json    per-component ratio tadsr / official

The official side imports SeeSR's models/ (UNet, ControlNet) and RAM's ram/models/swin_transformer_lora.py by path
(the ``ram`` package is never imported); its VAE and text encoder are diffusers' / transformers' own, as in tadsr.
The official tag head (RAM's BERT with its LoRA) is not built: that row is tadsr-only. Run both sides on the same
machine, one after the other. bf16 runs by default on a CPU only where ``cpu_bf16_native()``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

SD2_UNET: dict[str, Any] = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
SD2_VAE: dict[str, Any] = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                               block_out_channels=(128, 256, 512, 512), sample_size=512,
                               down_block_types=("DownEncoderBlock2D",) * 4,
                               up_block_types=("UpDecoderBlock2D",) * 4)
SD2_TEXT: dict[str, Any] = dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16,
                                intermediate_size=4096, max_position_embeddings=77, vocab_size=49408,
                                hidden_act="gelu", projection_dim=512)
SWIN_L_384: dict[str, Any] = dict(img_size=384, patch_size=4, in_chans=3, embed_dim=192, depths=[2, 2, 18, 2],
                                  num_heads=[6, 12, 24, 48], window_size=12, mlp_ratio=4.0, qkv_bias=True,
                                  drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True,
                                  use_checkpoint=False)  # ram_lora.RAMLora(vit='swin_l', image_size=384)
COMPONENTS = ("dape", "tag_head", "text_encoder", "vae_encode", "controlnet", "unet", "vae_decode")
LABELS = {"dape": "DAPE Swin-L + image_proj", "tag_head": "DAPE tag head", "text_encoder": "text encoder",
          "vae_encode": "VAE encode", "controlnet": "ControlNet", "unet": "UNet", "vae_decode": "VAE decode"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@torch.no_grad()
def fill(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded cheap random values: weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)), norm scales 1, other vectors 0."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    norms = {id(m.weight) for m in model.modules()
             if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None}
    for p in model.parameters():
        if p.device.type != "cpu":
            raise RuntimeError("fill runs on CPU tensors")
        if p.dim() >= 2:
            bound = 1.0 / math.sqrt(p[0].numel())
            p.uniform_(-bound, bound, generator=g)
        elif id(p) in norms:
            p.fill_(1.0)
        else:
            p.uniform_(-0.02, 0.02, generator=g)  # biases, label embeddings' 1-D kin: small, finite
    return model


def materialise(model: nn.Module, seed: int) -> nn.Module:
    """A meta-built model on the CPU with ``fill``'s values; refuses one with buffers (``to_empty`` leaves them
    uninitialised)."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise RuntimeError(f"meta-built model has buffers to recompute: {buffers[:3]}")
    return fill(model.to_empty(device="cpu"), seed)


# --- builders: each returns (module in eval mode on CPU fp32, call(inputs) -> output) --------------------------------

class Side:
    """Builds the components of one side (tadsr's or the official)."""

    official = False

    def unet_classes(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def text_encoder(self) -> nn.Module:
        import transformers

        config = transformers.CLIPTextConfig(**SD2_TEXT)
        with torch.device("meta"):
            model = transformers.CLIPTextModel(config)
        model = model.to_empty(device="cpu")
        fill(model, 3)
        for name, buffer in model.named_buffers():  # to_empty left them uninitialised
            if not name.endswith("position_ids"):
                raise RuntimeError(f"CLIPTextModel buffer {name}: no recipe to recompute it")
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
        return model.eval()

    def vae(self) -> nn.Module:
        import diffusers

        with torch.device("meta"):
            vae = diffusers.AutoencoderKL(**SD2_VAE)
        return materialise(vae, 4).eval()


class TadsrSide(Side):
    def unet(self) -> tuple[nn.Module, Any]:
        import diffusers

        from tadsr.seesr.nets import add_image_attention

        with torch.device("meta"):
            unet = diffusers.UNet2DConditionModel(**SD2_UNET)
            image = add_image_attention(unet)
        return materialise(unet, 1).eval(), image

    def controlnet(self) -> tuple[nn.Module, Any]:
        import diffusers

        from tadsr.seesr.nets import add_image_attention

        with torch.device("meta"):
            unet = diffusers.UNet2DConditionModel(**SD2_UNET)
            controlnet = diffusers.ControlNetModel.from_unet(unet, load_weights_from_unet=False)
            del unet
            image = add_image_attention(controlnet)
        return materialise(controlnet, 2).eval(), image

    def dape(self) -> nn.Module:
        from tadsr.seesr.dape import DAPE_SWIN_L, DapeImageEncoder

        with torch.device("meta"):
            encoder = DapeImageEncoder.from_config(DAPE_SWIN_L)
        encoder = fill(encoder.to_empty(device="cpu"), 5)
        encoder.visual_encoder.reset_derived_buffers()
        return encoder.eval()

    def tag_head(self) -> nn.Module:
        from tadsr.seesr.tags import DAPE_TAG_HEAD, TagHead

        with torch.device("meta"):
            head = TagHead(DAPE_TAG_HEAD)
        return materialise(head, 6).eval()

    def run_controlnet(self, net: Any, z, t, text, cond, img):
        model, image = net
        with image.attending(img):
            return model(z, t, encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=1.0,
                         guess_mode=False, return_dict=False)

    def run_unet(self, net: Any, z, t, text, down, mid, img):
        model, image = net
        with image.attending(img):
            return model(z, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]


class OfficialSide(Side):
    official = True

    def __init__(self, checkout: Path) -> None:
        models_dir = checkout / "models"
        package = types.ModuleType("seesr_models")
        package.__path__ = [str(models_dir)]  # models/ has no __init__.py
        sys.modules["seesr_models"] = package
        self.unet_module = importlib.import_module("seesr_models.unet_2d_condition")
        self.controlnet_module = importlib.import_module("seesr_models.controlnet")
        spec = importlib.util.spec_from_file_location("seesr_swin_transformer_lora",
                                                      checkout / "ram" / "models" / "swin_transformer_lora.py")
        assert spec is not None and spec.loader is not None
        self.swin_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.swin_module)

    def unet(self) -> nn.Module:
        with torch.device("meta"):
            unet = self.unet_module.UNet2DConditionModel(**SD2_UNET, use_image_cross_attention=True)
        return materialise(unet, 1).eval()

    def controlnet(self) -> nn.Module:
        with torch.device("meta"):
            unet = self.unet_module.UNet2DConditionModel(**SD2_UNET, use_image_cross_attention=True)
            controlnet = self.controlnet_module.ControlNetModel.from_unet(unet, load_weights_from_unet=False,
                                                                         use_image_cross_attention=True)
            del unet
        return materialise(controlnet, 2).eval()

    def dape(self) -> nn.Module:
        swin = self.swin_module.SwinTransformer(**SWIN_L_384)  # built on CPU: its index / mask buffers are computed
        model = nn.Sequential(swin, nn.Linear(1536, 512))
        fill(model, 5)
        return model.eval()  # loralib merges the (random) LoRA into qkv on eval(), as DAPE runs

    def tag_head(self) -> None:
        return None

    def run_controlnet(self, net: Any, z, t, text, cond, img):
        return net(z, t, encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=1.0,
                   guess_mode=False, return_dict=False, image_encoder_hidden_states=img)

    def run_unet(self, net: Any, z, t, text, down, mid, img):
        return net(z, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid, return_dict=False, image_encoder_hidden_states=img)[0]


# --- timing ----------------------------------------------------------------------------------------------------------
# (tadsr.devices has synchronize / reset_peak_memory / peak_memory_mib; this script also runs in the reference venv,
# where tadsr is not installed, so the timing side carries its own small copies)

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import re

    found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 1024 if found else float("nan")


def _params(module: Any) -> int:
    if isinstance(module, tuple):
        module = module[0]
    return sum(p.numel() for p in module.parameters())


def _to(net: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(net, tuple):
        return (net[0].to(device=device, dtype=dtype), *net[1:])
    return net.to(device=device, dtype=dtype)


def measure(call: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[float, float, bool]:
    """(median seconds, peak MiB, output finite) of ``call``."""
    out = None
    with torch.no_grad():
        _reset_peak(device)
        for _ in range(warmup):
            out = call()
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = call()
            _sync(device)
            times.append(time.perf_counter() - start)
    peak = _peak_mib(device)
    first = out
    while isinstance(first, (tuple, list)):
        first = first[0]
    if hasattr(first, "sample"):
        first = first.sample
    if hasattr(first, "latent_dist"):
        first = first.latent_dist.mean
    if hasattr(first, "last_hidden_state"):
        first = first.last_hidden_state
    finite = bool(torch.isfinite(first.float()).all()) if isinstance(first, torch.Tensor) else True
    return statistics.median(times), peak, finite


def run_side(side: Side, device: torch.device, dtype_name: str, lr: int, warmup: int, repeats: int,
             components: tuple[str, ...]) -> dict[str, dict[str, float]]:
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device="cpu").manual_seed(0)
    hr, latent = 4 * lr, lr // 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    text = rand(1, 77, 1024)
    img = rand(1, 145, 512)
    z = rand(1, 4, latent, latent)
    cond = torch.rand(1, 3, hr, hr, generator=g).to(device=device, dtype=dtype)
    t = torch.tensor(999, dtype=torch.long, device=device)
    residuals: list[tuple[int, ...]] = []
    results: dict[str, dict[str, float]] = {}
    for name in components:
        built = time.perf_counter()
        # each call takes the (cast) network; its inputs are bound now
        if name == "dape":
            net = side.dape()
            x = rand(1, 3, 384, 384)

            def call(m: Any, x: torch.Tensor = x) -> Any:
                return m(x)
        elif name == "tag_head":
            net = side.tag_head()
            if net is None:
                continue

            def call(m: Any) -> Any:
                return m(img)
        elif name == "text_encoder":
            net = side.text_encoder()
            ids = torch.randint(0, SD2_TEXT["vocab_size"], (1, 77), generator=g).to(device)

            def call(m: Any, ids: torch.Tensor = ids) -> Any:
                return m(ids)[0]
        elif name == "vae_encode":
            net = side.vae()

            def call(m: Any) -> Any:
                return m.encode(cond * 2 - 1).latent_dist.mean
        elif name == "vae_decode":
            net = side.vae()

            def call(m: Any) -> Any:
                return m.decode(z / 0.18215, return_dict=False)[0]
        elif name == "controlnet":
            net = side.controlnet()

            def call(m: Any) -> Any:
                down, mid = side.run_controlnet(m, z, t, text, cond, img)
                residuals[:] = [tuple(d.shape) for d in down] + [tuple(mid.shape)]
                return mid
        elif name == "unet":
            net = side.unet()
            if not residuals:  # the ControlNet's output shapes at this size, without running it
                residuals[:] = _residual_shapes(latent)
            down = [rand(*s) for s in residuals[:-1]]
            mid = rand(*residuals[-1])

            def call(m: Any, down: list = down, mid: torch.Tensor = mid) -> Any:
                return side.run_unet(m, z, t, text, down, mid, img)
        else:
            raise SystemExit(f"unknown component {name}")
        build_s = time.perf_counter() - built
        params = _params(net)
        net = _to(net, device, dtype)
        gc.collect()
        seconds, peak, finite = measure(functools.partial(call, net), device, warmup, repeats)
        results[name] = {"seconds": seconds, "peak_mib": peak, "params_M": params / 1e6, "build_s": build_s,
                         "finite": finite}
        print(f"  {dtype_name} {LABELS[name]:26s} {seconds:8.2f} s  peak {peak:8.0f} MiB  "
              f"({params / 1e6:.1f} M params, built in {build_s:.1f} s, finite {finite})", flush=True)
        del net, call
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _residual_shapes(latent: int) -> list[tuple[int, ...]]:
    """SD-2's ControlNet outputs at a ``latent`` side: 12 down residuals and the mid one."""
    shapes, size = [(1, 320, latent, latent)], latent
    channels = (320, 640, 1280, 1280)
    for i, c in enumerate(channels):
        shapes += [(1, c, size, size)] * 2
        if i < len(channels) - 1:
            size //= 2
            shapes.append((1, c, size, size))
    return shapes + [(1, 1280, size, size)]


def table(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    for dtype_name, results in rows.items():
        print(f"\n{dtype_name}: component | seconds | peak MiB | params M")
        for name, r in results.items():
            print(f"  {LABELS[name]:26s} | {r['seconds']:8.2f} | {r['peak_mib']:8.0f} | {r['params_M']:8.1f}")
        print(f"  {'total (sum)':26s} | {sum(r['seconds'] for r in results.values()):8.2f} |")


def compare(a_path: Path, b_path: Path) -> None:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    print(f"A = {a_path} ({a['side']}, {a['machine']}, torch {a['torch']})")
    print(f"B = {b_path} ({b['side']}, {b['machine']}, torch {b['torch']})")
    if a["machine"] != b["machine"]:
        print("warning: the two files come from different machines; the ratios are not comparable")
    if (a["torch"], a.get("diffusers")) != (b["torch"], b.get("diffusers")):
        print(f"note: torch / diffusers differ (A {a['torch']} / {a.get('diffusers')}, B {b['torch']} / "
              f"{b.get('diffusers')}): a ratio also holds the libraries' difference, not only the modules'")
    print("peak MiB is the process's resident peak: each venv's own baseline (imports) is in it")
    for dtype_name, ra in a["results"].items():
        rb = b["results"].get(dtype_name, {})
        print(f"\n{dtype_name}: component | A s | B s | A/B time | A MiB | B MiB | A/B memory")
        for name, x in ra.items():
            y = rb.get(name)
            if y is None:
                print(f"  {LABELS[name]:26s} | {x['seconds']:7.2f} |     - |    - | {x['peak_mib']:7.0f} |     - |  -")
                continue
            print(f"  {LABELS[name]:26s} | {x['seconds']:7.2f} | {y['seconds']:7.2f} | "
                  f"{x['seconds'] / y['seconds']:5.2f} | {x['peak_mib']:7.0f} | {y['peak_mib']:7.0f} | "
                  f"{x['peak_mib'] / y['peak_mib']:5.2f}")
        shared = [n for n in ra if n in rb]
        sa, sb = sum(ra[n]["seconds"] for n in shared), sum(rb[n]["seconds"] for n in shared)
        print(f"  {'total of shared rows':26s} | {sa:7.2f} | {sb:7.2f} | {sa / sb:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=None, help="a SeeSR checkout: time the official modules")
    parser.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("TADSR_JSON", "OFFICIAL_JSON"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default=None, help="comma-separated fp32,fp16,bf16 (default fp32, + bf16 on a "
                        "CPU with native bf16 or on CUDA)")
    parser.add_argument("--lr", type=int, default=128, help="LR side (output 4x)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--components", default=",".join(COMPONENTS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtypes:
        dtypes = args.dtypes.split(",")
    else:
        dtypes = ["fp32"]
        if device.type == "cuda":
            dtypes.append("bf16")
        else:
            try:
                from tadsr.devices import cpu_bf16_native
            except ImportError:  # the reference venv has no tadsr
                cpu_bf16_native = lambda: "avx512_bf16" in Path("/proc/cpuinfo").read_text()  # noqa: E731
            if cpu_bf16_native():
                dtypes.append("bf16")
    side = OfficialSide(args.official) if args.official else TadsrSide()
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"{'official' if side.official else 'tadsr'} modules, LR {args.lr} -> {4 * args.lr}, {machine}, "
          f"torch {torch.__version__}, warm-up {args.warmup}, median of {args.repeats}", flush=True)
    components = tuple(args.components.split(","))
    rows = {d: run_side(side, device, d, args.lr, args.warmup, args.repeats, components) for d in dtypes}
    table(rows)
    if args.json:
        import diffusers

        args.json.write_text(json.dumps({
            "side": "official" if side.official else "tadsr", "machine": machine, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "lr": args.lr, "warmup": args.warmup, "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
