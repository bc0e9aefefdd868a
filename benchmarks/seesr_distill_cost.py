"""What distilling SeeSR into a one-step TAD-SeeSR costs at the paper's scale (TAD-SR Appendix B), counted, not run.

The networks have the released shapes (SD-2-base's UNet with SeeSR's image cross-attention, the ControlNet built from
it, SD-2-base's VAE and OpenCLIP-H text encoder, DAPE's Swin-L with its tag head: ``seesr_speed.py``'s configs) and
are built under ``FakeTensorMode``: shapes and dtypes only, no memory, no weights. One distillation iteration at
batch 1 and GT 512 (a 64 x 64 latent), as ``tadsr.training.distill.DistillTrainer.train_step`` runs it, is then run
on those fake tensors, forward and backward, once per trainable subset (``family.trainable``):

  1. student: ControlNet + UNet once at t = 999, with the graph to the trainable parameters; z_s from its eps
  2. D step: the teacher's features of the noised GT latent (no grad) and of the noised z_s (with the graph);
     the discriminator on both (batch 2), its hinge loss, backward into D
  3. HSD: two teacher eps calls (ControlNet + UNet, no grad) at a small t'
  4. G step: L_distill + L_hsd + L_adv (D on the fake features), backward through D, the teacher's feature path and
     the student

The teacher's features, as ``tadsr.training.families.seesr.SeeSRNetworks.features`` takes them: each UNet down
block's last skip before its downsampler plus the ControlNet's residual there (residuals 2, 5, 8, 11: 320/640/1280/
1280 channels at 64/32/16/8), so the feature path is the whole ControlNet and the UNet's down blocks (its mid and
up blocks never run). The discriminator is tadsr's ``LatentDiscriminator`` on them (time-aware, c_dim 64).

Counted:

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` per phase (matmuls, convolutions, attention; 2 FLOPs per
  multiply-add; norms, activations, softmax and the optimiser's elementwise work not counted). Without the teacher
  cache each iteration also encodes GT and LR with the VAE, runs DAPE (+ tag head), the text encoder twice (prompt
  and negative) and the teacher's ``--teacher-steps`` x 2 (guidance) x (ControlNet + UNet) sampler for its pair.
* Activations: the bytes of every tensor autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``,
  each storage once), in the student's forward and the fake-feature teacher forward, under fp16 autocast as CUDA
  runs it: CPU autocast to fp16 (matmuls, convolutions, attention in fp16) with group_norm / layer_norm run in fp32
  (CUDA autocast's fp32 list; the CPU list lacks them). Attention saves no N x N matrix (a fused kernel: flash /
  memory-efficient attention on a GPU). Saved fp16 copies of fp32 weights (autocast's casts) are counted apart.
* Memory per GPU: the teacher's UNet + ControlNet in fp32 (autocast casts at use); the student's own copies of its
  trainable parameters (its frozen ones are the teacher's tensors, as ``SeeSRTeacher.make_student`` shares them;
  what a full separate copy would add is printed too); gradients, DDP's gradient buckets, AdamW's two moments and
  the EMA of the trainable parameters (``tadsr.training.ema.EMA`` shares the frozen ones); the discriminator with
  its optimiser; the saved activations.

LoRA (``family.trainable=lora``) is counted with a stand-in written here (``LoRALinear``: x W^T + (x A^T) B^T on
to_q, to_k, to_v, to_out.0 of every UNet attention); its parameter count is r (in + out) per Linear whatever the
implementation.

Usage: python benchmarks/seesr_distill_cost.py [--trainable image-attention,full,lora] [--lora-rank 8]
                                               [--teacher-steps 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).parent))
from seesr_speed import SD2_TEXT, SD2_UNET, SD2_VAE  # noqa: E402

LATENT = 64  # GT 512 through SD's x8 VAE
HR = 8 * LATENT
TRAINABLE = ("image-attention", "full", "lora")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
GIB = 2**30


# --- networks ------------------------------------------------------------------------------------------------------

class SeeSRPair:
    """A SeeSR UNet + ControlNet (full size) and their image-attention handles; ``eps`` and ``features`` run them."""

    def __init__(self) -> None:
        import diffusers

        from tadsr.seesr.nets import add_image_attention

        self.unet = diffusers.UNet2DConditionModel(**SD2_UNET)
        self.controlnet = diffusers.ControlNetModel.from_unet(self.unet, load_weights_from_unet=False)
        self.unet_image = add_image_attention(self.unet)  # after from_unet: the ControlNet gets its own
        self.controlnet_image = add_image_attention(self.controlnet)

    def modules(self) -> tuple[nn.Module, nn.Module]:
        return self.unet, self.controlnet

    def parameters(self) -> Iterable[nn.Parameter]:
        for module in self.modules():
            yield from module.parameters()

    def residuals(self, z: Tensor, t: Tensor, c: dict[str, Tensor]) -> tuple[list[Tensor], Tensor]:
        with self.controlnet_image.attending(c["img"]):
            down, mid = self.controlnet(z, t, encoder_hidden_states=c["text"], controlnet_cond=c["cond"],
                                        conditioning_scale=1.0, return_dict=False)
        return list(down), mid

    def eps(self, z: Tensor, t: Tensor, c: dict[str, Tensor]) -> Tensor:
        down, mid = self.residuals(z, t, c)
        with self.unet_image.attending(c["img"]):
            return self.unet(z, t, encoder_hidden_states=c["text"], down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]

    def features(self, z: Tensor, t: Tensor, c: dict[str, Tensor]) -> list[Tensor]:
        """Each UNet down block's last skip before its downsampler plus the ControlNet's residual there (module
        docstring)."""
        down, _ = self.residuals(z, t, c)
        blocks = list(self.unet.down_blocks)
        skips: list[tuple[Tensor, ...]] = []

        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            skips.append(output[1])
            if module is blocks[-1]:
                raise _Enough

        hooks = [block.register_forward_hook(keep) for block in blocks]
        try:
            with self.unet_image.attending(c["img"]):
                self.unet(z, t, encoder_hidden_states=c["text"], return_dict=False)
        except _Enough:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        features, index = [], 1  # the residuals: conv_in's output, then each block's skips
        for block, block_skips in zip(blocks, skips, strict=True):
            last = len(block.resnets) - 1
            features.append(block_skips[last] + down[index + last])
            index += len(block_skips)
        return features


class _Enough(Exception):
    pass


class LoRALinear(nn.Module):
    """``base(x) + up(down(x))`` with ``base`` frozen: the stand-in for ``family.trainable=lora`` (module docstring)."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(self.down(x))


def attention_linears(unet: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) for to_q, to_k, to_v and to_out.0 of every attention in ``unet`` (self, text
    cross and image cross attention)."""
    from diffusers.models.attention_processor import Attention

    found = []
    for module in unet.modules():
        if isinstance(module, Attention):
            for name in LORA_TARGETS:
                parent = module.to_out if name == "to_out.0" else module
                attr = "0" if name == "to_out.0" else name
                linear = getattr(parent, attr) if attr != "0" else parent[0]
                found.append((parent, attr, linear))
    return found


def lora_parameters(unet: nn.Module, rank: int) -> int:
    """r (in + out) per target Linear: LoRA's parameter count from the shapes."""
    return sum(rank * (lin.in_features + lin.out_features) for _, _, lin in attention_linears(unet))


def add_lora(unet: nn.Module, rank: int) -> None:
    for parent, attr, linear in attention_linears(unet):
        wrapped = LoRALinear(linear, rank)
        if attr == "0":
            parent[0] = wrapped
        else:
            setattr(parent, attr, wrapped)


def select_trainable(student: SeeSRPair, kind: str) -> int:
    """Sets requires_grad for ``family.trainable`` = ``kind``; returns the number of trainable parameters."""
    for module in student.modules():
        module.requires_grad_(kind == "full")
    if kind == "image-attention":
        for module, prefixes in ((student.unet, ()), (student.controlnet, ("controlnet_cond_embedding.",))):
            for name, p in module.named_parameters():
                p.requires_grad_(".image_attentions." in name or name.startswith(prefixes))
    elif kind == "lora":
        for m in student.unet.modules():
            if isinstance(m, LoRALinear):
                m.down.requires_grad_(True)
                m.up.requires_grad_(True)
    return sum(p.numel() for p in student.parameters() if p.requires_grad)


def count(modules: Iterable[nn.Module]) -> int:
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


# --- measurement ---------------------------------------------------------------------------------------------------

class _Fp32Norms(TorchFunctionMode):
    """group_norm and layer_norm in fp32, as CUDA's autocast runs them (CPU autocast's fp32 list lacks them)."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (F.group_norm, F.layer_norm):
            args = tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
            kwargs = {k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v
                      for k, v in kwargs.items()}
        return func(*args, **kwargs)


class cuda_like_autocast:
    """fp16 autocast as on CUDA, for CPU (fake) tensors: ``_Fp32Norms`` inside CPU autocast."""

    def __enter__(self) -> None:
        self.autocast = torch.autocast("cpu", dtype=torch.float16)
        self.norms = _Fp32Norms()
        self.autocast.__enter__()
        self.norms.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.norms.__exit__(*exc)
        self.autocast.__exit__(*exc)


class SavedBytes:
    """Bytes autograd saves for backward inside ``with self:``, each storage once; ``weights`` the part that is
    fp16 copies of parameters (a saved tensor shaped like a parameter and not itself a parameter)."""

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        params = list(parameters)
        self.param_ids = {id(p) for p in params}
        self.param_shapes = {tuple(p.shape) for p in params if p.dim() >= 2}
        self.activations = self.weights = 0
        self._seen: set[int] = set()
        self._keep: list[Tensor] = []  # keeps ids unique while counting

    def _pack(self, t: Tensor) -> Tensor:
        if id(t) in self.param_ids:
            return t
        storage = t.untyped_storage()
        if storage._cdata in self._seen:  # a tensor, or a view of one, saved before
            return t
        self._seen.add(storage._cdata)
        self._keep.append(t)
        base = t if t._base is None else t._base  # a linear saves its weight's transpose: a view
        cast = base.grad_fn is None or type(base.grad_fn).__name__ == "ToCopyBackward0"
        if tuple(base.shape) in self.param_shapes and cast:
            self.weights += storage.nbytes()
        else:
            self.activations += storage.nbytes()
        return t

    def __enter__(self) -> None:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._keep.clear()


def _cpu_attention(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                            **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# the fused attention of CPU tensors (fake ones included), which flop_counter does not count by itself: counted as
# its CUDA kernels are
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        out = fn()
    return out, counter.get_total_flops()


def iteration(teacher: SeeSRPair, student: SeeSRPair, discriminator: nn.Module) -> dict[str, Any]:
    """One distillation iteration at batch 1 on fake tensors (module docstring): FLOPs per phase, saved bytes."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled-linear schedule (plain numbers: the
    acp = np.cumprod(1 - betas)                                # tensors here are fake)
    c = {"text": torch.empty(1, 77, 1024), "img": torch.empty(1, 145, 512), "cond": torch.empty(1, 3, HR, HR)}
    z_T, z_gt, z_tch = (torch.empty(1, 4, LATENT, LATENT) for _ in range(3))

    def q_sample(z0: Tensor, t: int, noise: Tensor) -> Tensor:
        return float(acp[t]) ** 0.5 * z0 + float(1 - acp[t]) ** 0.5 * noise

    out: dict[str, Any] = {"flops": {}}
    fl = out["flops"]
    saved_student = SavedBytes([*student.parameters(), *teacher.parameters()])
    saved_fake = SavedBytes([*student.parameters(), *teacher.parameters()])
    t999, t_dis, t_hsd = torch.tensor([999]), torch.tensor([500]), torch.tensor([100])

    def student_forward() -> Tensor:
        with saved_student, cuda_like_autocast():
            eps = student.eps(z_T, t999, c)
        return (z_T - float(1 - acp[999]) ** 0.5 * eps.float()) / float(acp[999]) ** 0.5

    z_s, fl["student_forward"] = flops(student_forward)
    noise = torch.empty_like(z_gt)
    with torch.no_grad(), cuda_like_autocast():
        real, fl["teacher_features_real"] = flops(lambda: teacher.features(q_sample(z_gt, 500, noise), t_dis, c))

    def fake_forward() -> list[Tensor]:
        with saved_fake, cuda_like_autocast():
            return teacher.features(q_sample(z_s, 500, noise), t_dis, c)

    fake, fl["teacher_features_fake"] = flops(fake_forward)
    out["feature_shapes"] = [list(f.shape) for f in fake]

    def d_step() -> None:
        with cuda_like_autocast():
            both = [torch.cat([r, f.detach()]) for r, f in zip(real, fake, strict=True)]
            d_real, d_fake = discriminator(both, t_dis.repeat(2)).chunk(2)
            loss = (F.relu(1 - d_real) + F.relu(1 + d_fake)).mean()
        loss.backward()

    _, fl["discriminator_step"] = flops(d_step)

    def hsd() -> Tensor:
        with torch.no_grad(), cuda_like_autocast():
            return teacher.eps(q_sample(z_s.detach(), 100, noise), t_hsd, c) - teacher.eps(
                q_sample(z_tch, 100, noise), t_hsd, c)

    g, fl["hsd_teacher_x2"] = flops(hsd)

    def g_step() -> None:
        discriminator.requires_grad_(False)
        with cuda_like_autocast():
            adv = -discriminator(fake, t_dis).mean()
        loss = (z_s - z_tch).pow(2).mean() + (g.float() * z_s).mean() + 0.1 * adv
        loss.backward()

    _, fl["generator_backward"] = flops(g_step)
    out["saved"] = {"student": (saved_student.activations, saved_student.weights),
                    "teacher_fake": (saved_fake.activations, saved_fake.weights)}
    return out


def other_components() -> dict[str, tuple[int, int]]:
    """(parameters, forward FLOPs) of the parts the teacher cache saves an iteration: VAE encode (512²), DAPE with
    its tag head (384²), the text encoder (77 tokens)."""
    import diffusers
    import transformers

    from tadsr.seesr.dape import DAPE_SWIN_L, DapeImageEncoder
    from tadsr.seesr.tags import DAPE_TAG_HEAD, TagHead

    rows: dict[str, tuple[int, int]] = {}
    with torch.no_grad():
        vae = diffusers.AutoencoderKL(**SD2_VAE).eval()
        _, f = flops(lambda: vae.encode(torch.empty(1, 3, HR, HR)).latent_dist.mean)
        rows["vae_encode"] = (count([vae.encoder, vae.quant_conv]), f)
        rows["vae_decode"] = (count([vae.decoder, vae.post_quant_conv]), 0)
        dape = DapeImageEncoder.from_config(DAPE_SWIN_L).eval()
        emb, f = flops(lambda: dape(torch.empty(1, 3, 384, 384)))
        rows["dape"] = (count([dape]), f)
        head = TagHead(DAPE_TAG_HEAD).eval()
        _, f = flops(lambda: head(torch.empty(1, 145, 512)))
        rows["tag_head"] = (count([head]), f)
        clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD2_TEXT)).eval()
        _, f = flops(lambda: clip(torch.zeros(1, 77, dtype=torch.long)))
        rows["text_encoder"] = (count([clip]), f)
    return rows


# --- the plan ------------------------------------------------------------------------------------------------------

def memory_plan(teacher: int, trainable: int, d_params: int,
                saved: dict[str, tuple[int, int]]) -> dict[str, float]:
    """GiB per GPU at batch 1 (module docstring), from parameter counts and saved bytes."""
    rows = {
        "teacher UNet + ControlNet, fp32 (frozen)": 4 * teacher,
        "student's trainable parameters, fp32 (frozen: the teacher's)": 4 * trainable,
        "gradients, fp32 (trainable)": 4 * trainable,
        "DDP gradient buckets, fp32 (8 GPUs)": 4 * trainable,
        "AdamW moments, 2 x fp32 (trainable)": 8 * trainable,
        "EMA, fp32 (trainable only)": 4 * trainable,
        "discriminator: weights, grads, DDP buckets, AdamW (fp32)": 20 * d_params,
        "saved activations: student forward": saved["student"][0],
        "saved fp16 weight casts: student forward": saved["student"][1],
        "saved activations: teacher fake features": saved["teacher_fake"][0],
        "saved fp16 weight casts: teacher fake features": saved["teacher_fake"][1],
    }
    return {k: v / GIB for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", default=",".join(TRAINABLE), help="comma-separated subsets to run")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--tflops", type=float, default=300.0,
                        help="achieved TFLOP/s per GPU assumed for the time estimates")
    parser.add_argument("--iterations", type=int, default=30000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    kinds = [k for k in args.trainable.split(",") if k]
    bad = [k for k in kinds if k not in TRAINABLE]
    if bad:
        parser.error(f"--trainable: unknown {bad}; choose from {TRAINABLE}")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tadsr.nets.discriminator import LatentDiscriminator

    start = time.perf_counter()
    report: dict[str, Any] = {"latent": LATENT, "gt": HR, "teacher_steps": args.teacher_steps, "runs": {}}
    with FakeTensorMode():
        others = other_components()
        teacher = SeeSRPair()
        teacher.unet.requires_grad_(False)
        teacher.controlnet.requires_grad_(False)
        student = SeeSRPair()
        unet_p, cn_p = count([student.unet]), count([student.controlnet])
        image_p = sum(count([m]) for h in (student.unet_image, student.controlnet_image) for m in h.modules)
        cond_p = count([student.controlnet.controlnet_cond_embedding])
        report["parameters"] = {"unet": unet_p, "controlnet": cn_p, "image_attention": image_p,
                                "controlnet_cond_embedding": cond_p,
                                **{k: p for k, (p, _) in others.items()}}
        report["trainable"] = {"image-attention": image_p + cond_p, "full": unet_p + cn_p,
                               **{f"lora r={r}": lora_parameters(student.unet, r)
                                  for r in sorted({8, 64, args.lora_rank})}}
        report["forward_flops"] = {k: f for k, (_, f) in others.items() if f}
        with torch.no_grad():
            _, report["forward_flops"]["controlnet_unet"] = flops(lambda: teacher.eps(
                torch.empty(1, 4, LATENT, LATENT), torch.tensor([999]),
                {"text": torch.empty(1, 77, 1024), "img": torch.empty(1, 145, 512),
                 "cond": torch.empty(1, 3, HR, HR)}))
        for kind in kinds:
            if kind == "lora":
                add_lora(student.unet, args.lora_rank)
            trainable = select_trainable(student, kind)
            discriminator = LatentDiscriminator([320, 640, 1280, 1280], 320, 64, time_aware=True)
            run = iteration(teacher, student, discriminator)
            run["trainable"] = trainable
            run["student_parameters"] = count(student.modules())
            run["discriminator_parameters"] = count([discriminator])
            report["runs"][kind] = run
            print(f"[{time.perf_counter() - start:.0f} s] {kind}: done", file=sys.stderr)
    summarise(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def summarise(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Markdown tables of ``report`` (and the derived per-pair, per-iteration and memory figures, added to it)."""
    p, fwd = report["parameters"], report["forward_flops"]
    unet_cn = p["unet"] + p["controlnet"]
    print(f"## SeeSR -> TAD-SeeSR distillation at GT {report['gt']} (latent {report['latent']}), batch 1 per GPU\n")
    print("| component | params M | GFLOP / forward |\n|---|---:|---:|")
    rows = [("UNet (SD-2-base + image cross-attention)", p["unet"], None),
            ("ControlNet (with image cross-attention)", p["controlnet"], None),
            ("ControlNet + UNet, one eps call", unet_cn, fwd["controlnet_unet"]),
            ("VAE encode (512²)", p["vae_encode"], fwd["vae_encode"]),
            ("VAE decode (not in training)", p["vae_decode"], None),
            ("DAPE Swin-L + image_proj (384²)", p["dape"], fwd["dape"]),
            ("DAPE tag head", p["tag_head"], fwd["tag_head"]),
            ("text encoder (77 tokens)", p["text_encoder"], fwd["text_encoder"])]
    for name, n, f in rows:
        print(f"| {name} | {n / 1e6:.1f} | {'' if f is None else f'{f / 1e9:.1f}'} |")
    print("\n| family.trainable | trainable params M | share of UNet + ControlNet |\n|---|---:|---:|")
    for name, n in report["trainable"].items():
        print(f"| {name} | {n / 1e6:.2f} | {100 * n / unet_cn:.2f}% |")
    print(f"\n(image-attention = {p['image_attention'] / 1e6:.1f} M image cross-attention in both networks + "
          f"{p['controlnet_cond_embedding'] / 1e6:.2f} M controlnet_cond_embedding)")

    # the teacher's work for one pair (what distill.teacher_cache precomputes)
    per_pair = (2 * fwd["vae_encode"] + fwd["dape"] + fwd["tag_head"] + 2 * fwd["text_encoder"]
                + args.teacher_steps * 2 * fwd["controlnet_unet"])
    report["per_pair_flops"] = per_pair
    extra = p["vae_encode"] + p["vae_decode"] + p["dape"] + p["tag_head"] + p["text_encoder"]
    print(f"\nOne pair's teacher work (VAE encode x 2, DAPE + tag head, text encoder x 2, {args.teacher_steps} steps "
          f"x 2 (CFG) x (ControlNet + UNet)): {per_pair / 1e12:.1f} TFLOP")
    print("\n| TFLOP per iteration | " + " | ".join(report["runs"]) + " |\n|---|" + "---:|" * len(report["runs"]))
    phases = next(iter(report["runs"].values()))["flops"]
    for phase in phases:
        print(f"| {phase} | " + " | ".join(f"{r['flops'][phase] / 1e12:.2f}" for r in report["runs"].values()) + " |")
    for run in report["runs"].values():
        run["iteration_flops_cached"] = sum(run["flops"].values())
        run["iteration_flops_uncached"] = run["iteration_flops_cached"] + per_pair
    print("| **with the teacher cache** | " + " | ".join(
        f"**{r['iteration_flops_cached'] / 1e12:.2f}**" for r in report["runs"].values()) + " |")
    print("| **without (+ one pair's teacher work)** | " + " | ".join(
        f"**{r['iteration_flops_uncached'] / 1e12:.1f}**" for r in report["runs"].values()) + " |")
    rate = args.tflops * 1e12
    print(f"\nAt an assumed {args.tflops:.0f} TFLOP/s achieved per GPU, {args.iterations} iterations on each of "
          f"{args.gpus} GPUs (batch {args.gpus} in all):")
    for name, run in report["runs"].items():
        cached = run["iteration_flops_cached"] / rate
        uncached = run["iteration_flops_uncached"] / rate
        run["seconds_cached"], run["seconds_uncached"] = cached, uncached
        print(f"- {name}: {1e3 * cached:.0f} ms / iteration with the cache ({cached * args.iterations / 3600:.1f} h "
              f"wall, {cached * args.iterations * args.gpus / 3600:.0f} GPU-h), {uncached:.2f} s without "
              f"({uncached * args.iterations / 3600:.1f} h wall, "
              f"{uncached * args.iterations * args.gpus / 3600:.0f} GPU-h)")
    print(f"- building a cache of N pairs: {per_pair / rate:.2f} s per pair on one GPU (N = 10000: "
          f"{per_pair * 10000 / rate / 3600:.1f} GPU-h)")

    print("\n| GiB per GPU | " + " | ".join(report["runs"]) + " |\n|---|" + "---:|" * len(report["runs"]))
    plans = {name: memory_plan(unet_cn, run["trainable"], run["discriminator_parameters"],
                               run["saved"]) for name, run in report["runs"].items()}
    for row in next(iter(plans.values())):
        print(f"| {row} | " + " | ".join(f"{plan[row]:.2f}" for plan in plans.values()) + " |")
    for plan in plans.values():
        plan["total with the cache"] = sum(plan.values())
        plan["total without the cache"] = plan["total with the cache"] + 4 * extra / GIB
    print("| **total, the iteration's networks only (with the cache, nothing else need stay loaded)** | " + " | ".join(
        f"**{plan['total with the cache']:.1f}**" for plan in plans.values()) + " |")
    print(f"| **total, + VAE, DAPE, tag head, text encoder fp32 ({4 * extra / GIB:.2f}; needed without the cache, "
          "and kept loaded by tadsr's family either way)** | " + " | ".join(
              f"**{plan['total without the cache']:.1f}**" for plan in plans.values()) + " |")
    report["memory_gib"] = plans
    print("\nA student that is a full separate copy (frozen parameters not shared with the teacher) would add "
          + ", ".join(f"{name} {4 * (run['student_parameters'] - run['trainable']) / GIB:.1f} GiB"
                      for name, run in report["runs"].items()) + ".")
    print(f"\nFeature shapes the discriminator reads: {next(iter(report['runs'].values()))['feature_shapes']}")
    cache = {"lq (3, 128, 128)": 3 * 128 * 128, "gt (3, 512, 512)": 3 * HR * HR,
             "DAPE embeddings (145, 512)": 145 * 512, "prompt embedding (77, 1024)": 77 * 1024,
             "z_gt, z_lr, noise, z_tch (4 x 4 x 64 x 64)": 4 * 4 * LATENT ** 2}
    per = 4 * sum(cache.values())
    report["cache_bytes_per_pair_fp32"] = per
    parts = ", ".join(f"{k} {4 * v / 2**20:.2f}" for k, v in cache.items())
    print(f"Teacher cache (tadsr.training.families.seesr's batch tensors), fp32 per pair: {per / 2**20:.2f} MiB "
          f"({parts}); per rank, every rank holding it all: 2000 pairs {per * 2000 / GIB:.1f} GiB, 10000 pairs "
          f"{per * 10000 / GIB:.1f} GiB")


if __name__ == "__main__":
    main()
