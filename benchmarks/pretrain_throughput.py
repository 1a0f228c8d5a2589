#!/usr/bin/env python
"""DINO pretraining throughput: does the data pipeline keep the accelerator fed?

For ViT-T/16 and ViT-S/16, eager and torch.compile, it measures images/s of
  (a) the bare DINO step on device tensors (2 global views, student fwd+bwd, teacher fwd,
      loss, fused AdamW, EMA) — the ceiling,
  (b) the full pipeline with the paper's augmentations on CPU DataLoader workers (PIL),
  (c) the full pipeline with workers that only decode + the batched GPU augmentation,
and prints (b) and (c) as ratios to (a) from the same run, plus the model FLOP utilisation
(MFU) of (a) against the card's dense bf16 peak. Inputs are prepared-size (256 px) PNG frames
of the synthetic generator, held in memory, as `sewer-hf prepare` would give them.

    python benchmarks/pretrain_throughput.py            # full size on a GPU
    python benchmarks/pretrain_throughput.py --quick    # tiny, on the CPU (a smoke test of the code)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
import torch

from sewer_hf.augment import DecodeForGPU, PretrainTransform
from sewer_hf.dino import DINOLoss, cancel_last_layer_gradients, ema_update, param_groups
from sewer_hf.gpu_augment import GPUPretrainAugment
from sewer_hf.model import build_student_teacher

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}  # dense


def vit_forward_flops(dim: int, depth: int, tokens: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256) -> float:
    """FLOPs of one forward pass of ViT + DINO head for one image view (2 FLOPs per MAC)."""
    per_layer = 24 * tokens * dim * dim + 4 * tokens * tokens * dim  # qkv+proj+mlp, attention
    patch = 2 * (tokens - 1) * (3 * 16 * 16) * dim
    head = 2 * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * out_dim)
    return depth * per_layer + patch + head


class PNGFrames(torch.utils.data.Dataset):
    """In-memory PNG frames, cycled to `length` items so that every loader worker gets batches
    (a worker builds whole batches: fewer batches per epoch than workers would idle some)."""

    def __init__(self, blobs: list[bytes], transform, length: int) -> None:
        self.blobs, self.transform, self.length = blobs, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.blobs[i % len(self.blobs)])).convert("RGB"))


def collate_views(items):
    if isinstance(items[0], list):
        return [torch.stack(v) for v in zip(*items)]
    return torch.stack(items)


def make_frames(n: int, size: int) -> list[bytes]:
    from sewer_hf.synth import sample_labels, render_frame

    blobs = []
    for i in range(n):
        rng = np.random.default_rng(i)
        labels, water = sample_labels(rng)
        image = render_frame(labels, water, size=(352, 288), rng=rng).resize((size, size))
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        blobs.append(buf.getvalue())
    return blobs


class Step:
    """One DINO optimisation step, as the recipe does it (bf16 autocast on CUDA)."""

    def __init__(self, arch: str, size: int, out_dim: int, device, compile_model: bool) -> None:
        self.student, self.teacher = build_student_teacher(arch, img_size=size, out_dim=out_dim)
        self.student.to(device)
        self.teacher.to(device)
        self.loss = DINOLoss(out_dim, n_epochs=10, warmup_teacher_temp_epochs=1).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.student), lr=1e-4, fused=device.type == "cuda")
        self.device = device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.s_fwd = torch.compile(self.student) if compile_model else self.student
        self.t_fwd = torch.compile(self.teacher) if compile_model else self.teacher

    def __call__(self, views) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.device.type == "cuda"):
            with torch.no_grad():
                t = self.t_fwd(views[:2])
            s = self.s_fwd(views)
            loss = self.loss(s, t, epoch=1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 3.0)
        cancel_last_layer_gradients(self.student, 1)
        self.opt.step()
        ema_update(self.teacher, self.student, 0.996)
        return loss


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n_warmup: int, n_steps: int, batch: int, device) -> float:
    for _ in range(n_warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        fn()
    sync(device)
    return n_steps * batch / (time.perf_counter() - start)


def loader_fn(loader, step: Step, device, gpu_aug=None):
    it = iter(loader)

    def run():
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if gpu_aug is not None:
            views = gpu_aug(batch.to(device, non_blocking=True))
        else:
            views = [v.to(device, non_blocking=True) for v in batch]
        step(views)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on whatever device (code smoke test)")
    parser.add_argument("--archs", default="vit_tiny,vit_small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    size, out_dim, batch, steps, warm = 224, 32768, args.batch, args.steps, 5
    if args.quick:
        size, out_dim, batch, steps, warm = 32, 256, 8, 3, 1
        args.archs, args.modes = "vit_tiny", "eager"
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    print(f"device: {name}; batch {batch}, {size} px, {out_dim} prototypes, {args.workers} loader workers")
    blobs = make_frames(max(2 * batch, 64) if not args.quick else 16, 256 if not args.quick else 48)

    rows = []
    for arch in args.archs.split(","):
        dim, depth = {"vit_tiny": (192, 12), "vit_small": (384, 12)}[arch]
        flops_per_image = 8 * vit_forward_flops(dim, depth, (size // 16) ** 2 + 1, out_dim)  # 2 views x (3 student + 1 teacher)
        for mode in args.modes.split(","):
            torch.manual_seed(0)
            step = Step(arch, size, out_dim, device, compile_model=mode == "compile")
            views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
            bare = timed(lambda: step(views), warm, steps, batch, device)
            kw = dict(batch_size=batch, num_workers=args.workers, collate_fn=collate_views, drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=args.workers > 0, shuffle=True)
            length = 4 * max(1, args.workers) * batch
            cpu_loader = torch.utils.data.DataLoader(PNGFrames(blobs, PretrainTransform(size=size), length), **kw)
            cpu = timed(loader_fn(cpu_loader, step, device), 2, max(3, steps // 3), batch, device)
            gpu_aug = GPUPretrainAugment(size=size).to(device)
            aug_fn = torch.compile(gpu_aug) if mode == "compile" else gpu_aug
            gpu_loader = torch.utils.data.DataLoader(PNGFrames(blobs, DecodeForGPU(256 if not args.quick else 48), length), **kw)
            gpu = timed(loader_fn(gpu_loader, step, device, aug_fn), 2, steps, batch, device)
            mfu = bare * flops_per_image / peak if peak else float("nan")
            rows.append({"arch": arch, "mode": mode, "bare": bare, "cpu_aug": cpu, "gpu_aug": gpu, "mfu": mfu})
            print(f"{arch:9s} {mode:7s}  (a) bare {bare:8.1f} img/s  MFU {100 * mfu:5.1f}%   "
                  f"(b) CPU aug {cpu:8.1f} img/s = {cpu / bare:5.3f} x (a)   "
                  f"(c) GPU aug {gpu:8.1f} img/s = {gpu / bare:5.3f} x (a)", flush=True)
            del step, views, cpu_loader, gpu_loader
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n| arch | mode | (a) bare img/s | MFU | (b) CPU aug img/s | (b)/(a) | (c) GPU aug img/s | (c)/(a) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arch']} | {r['mode']} | {r['bare']:.0f} | {100 * r['mfu']:.1f}% | {r['cpu_aug']:.0f} | "
              f"{r['cpu_aug'] / r['bare']:.3f} | {r['gpu_aug']:.0f} | {r['gpu_aug'] / r['bare']:.3f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "batch": batch, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
