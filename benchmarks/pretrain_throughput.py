#!/usr/bin/env python
"""DINO pretraining throughput: does the data pipeline keep the accelerator fed?

For ViT-T/16 and ViT-S/16 (torch.compile by default; `--modes eager,compile` for both) it
measures images/s of
  (a)      the bare DINO step on device tensors (2 global views, student fwd+bwd, teacher fwd,
           loss, fused AdamW, EMA) — the ceiling,
  (b)      the full pipeline with the paper's augmentations on CPU DataLoader workers (PIL),
  (c)      the full pipeline with workers that only decode PNG frames (PIL) + the batched GPU
           augmentation,
  (c-jpeg) the full pipeline with workers that only hand over JPEG bytes; the main process
           decodes each batch on the GPU (nvjpeg; on the CPU elsewhere), then augments it there,
and prints (b), (c) and (c-jpeg) as ratios to (a) from the same run, the model FLOP utilisation
(MFU) of (a) against the card's dense bf16 peak, and the rates of the feeds alone (loader +
decode + augmentation, no model step), which say whether the feed or the step limits a row;
among them, JPEG frames decoded by the workers, as the recipes read `--format jpeg` shards.
`--compare` adds (c) as the previous GPU run had it (float32 colour ops, fed in line) and (c)
with the compiled augmentation, timed against the same compiled step.
Inputs are prepared-size (256 px) synthetic frames held in memory, PNG and JPEG (quality 95),
as `sewer-hf prepare --format png|jpeg` writes them. The device-side preparation (copy, decode,
augmentation) of the next batches runs in a background thread on its own CUDA stream while the
step works on the current one, as in the recipes (`--feed stream`: one batch ahead on a side
stream from the main thread; `--feed inline`: in the loop). The colour ops of the GPU
augmentation run in float16 on CUDA (`--aug-dtype float32` for the former path); the feeds-alone
line also times the float32 augmentation for comparison.

Steady state: each loader worker builds whole batches and the loader hands them over worker by
worker, so batches come in rounds of `workers`. Every loader timing runs whole rounds (one to
warm up, then whole rounds for at least `--warmup` seconds, then whole rounds for at least
`--seconds`, between two device syncs), so both ends of the timed window sit at the same point
of the workers' cycle, and the sampler is long enough that no epoch boundary falls inside.

    python benchmarks/pretrain_throughput.py            # full size on a GPU
    python benchmarks/pretrain_throughput.py --quick    # tiny, on the CPU (a smoke test of the code)
"""
from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import os
import time

import numpy as np
import torch

from sewer_hf.data.prepare import JPEG_QUALITY
from sewer_hf.feed.augment import DecodeForGPU, PretrainTransform
from sewer_hf.feed.batched import GPUPretrainAugment, compile_augment, resolve_photometric_dtype
from sewer_hf.feed.device import (
    FEED_MODES,
    DevicePrefetcher,
    collate_encoded,
    decode_batch,
    encoded_tensor,
    nvjpeg_supported,
    split_encoded,
)
from sewer_hf.models.dino import DINOLoss, cancel_last_layer_gradients
from sewer_hf.models.vit import build_student_teacher
from sewer_hf.train.optim import ema_update, param_groups

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}  # dense
PREFETCH_FACTOR = 2  # DataLoader's default: batches queued per worker
ENDLESS = 1 << 30  # dataset length: no epoch boundary (and its refill stall) inside a timing


def vit_forward_flops(dim: int, depth: int, tokens: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256) -> float:
    """FLOPs of one forward pass of ViT + DINO head for one image view (2 FLOPs per MAC)."""
    per_layer = 24 * tokens * dim * dim + 4 * tokens * tokens * dim  # qkv+proj+mlp, attention
    patch = 2 * (tokens - 1) * (3 * 16 * 16) * dim
    head = 2 * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * out_dim)
    return depth * per_layer + patch + head


# ----------------------------------------------------------------------------- data
class Frames(torch.utils.data.Dataset):
    """In-memory encoded frames, decoded with PIL and transformed in the worker, cycled."""

    def __init__(self, blobs: list[bytes], transform) -> None:
        self.blobs, self.transform = blobs, transform

    def __len__(self) -> int:
        return ENDLESS

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.blobs[i % len(self.blobs)])).convert("RGB"))


class EncodedFrames(torch.utils.data.Dataset):
    """In-memory encoded frames handed over as bytes (uint8 tensors), cycled."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = [encoded_tensor(b) for b in blobs]

    def __len__(self) -> int:
        return ENDLESS

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.blobs[i % len(self.blobs)]


def collate_views(items):
    if isinstance(items[0], list):
        return [torch.stack(v) for v in zip(*items)]
    return torch.stack(items)


def make_frames(n: int, size: int) -> tuple[list[bytes], list[bytes]]:
    """PNG (fast zlib level, as the synthetic generator) and JPEG encodings of the same frames."""
    from sewer_hf.synth import render_frame, sample_labels

    png, jpeg = [], []
    for i in range(n):
        rng = np.random.default_rng(i)
        labels, water = sample_labels(rng)
        image = render_frame(labels, water, size=(352, 288), rng=rng).resize((size, size))
        for blobs, options in ((png, dict(format="PNG", compress_level=1)), (jpeg, dict(format="JPEG", quality=JPEG_QUALITY))):
            buf = io.BytesIO()
            image.save(buf, **options)
            blobs.append(buf.getvalue())
    return png, jpeg


def make_loader(dataset, batch: int, workers: int, collate, device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, num_workers=workers, collate_fn=collate, drop_last=True,
        pin_memory=device.type == "cuda", prefetch_factor=PREFETCH_FACTOR if workers else None)


# ----------------------------------------------------------------------------- model step
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


# ----------------------------------------------------------------------------- timing
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(step, batch: int, device, round_len: int, warmup_s: float, seconds: float) -> float:
    """Images/s of ``step`` (one batch per call) in steady state, counted in whole rounds of
    ``round_len`` calls: one round (compilation, loader start-up), whole rounds for
    ``warmup_s`` (none for 0), then timed whole rounds for at least ``seconds`` between two
    device syncs."""

    def rounds(min_seconds: float) -> int:
        start, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - start < min_seconds:
            for _ in range(round_len):
                step()
            n += 1
        return n

    rounds(0.0)
    if warmup_s > 0:
        rounds(warmup_s)
    sync(device)
    start = time.perf_counter()
    n = rounds(seconds)
    sync(device)
    return n * round_len * batch / (time.perf_counter() - start)


def feed(loader, prepare, device, mode: str):
    """Prepared batches of ``loader`` through the device prefetcher (thread, stream or inline)."""
    return iter(DevicePrefetcher(loader, prepare, device, mode=mode))


def loader_rate(loader, prepare, consume, args, device, batch: int, workers: int, feed_mode: str | None = None) -> float:
    """Steady-state images/s of ``consume(prepare(batch))`` over ``loader`` (fed as ``--feed``
    says unless ``feed_mode``); stops its workers. A variant that fails prints why and gives
    NaN, so that the others still report."""
    batches = feed(loader, prepare, device, feed_mode or args.feed)
    try:
        return rate(lambda: consume(next(batches)), batch, device, max(1, workers), args.warmup, args.seconds)
    except Exception as exc:  # noqa: BLE001 - one broken variant must not hide the others
        print(f"  failed: {type(exc).__name__}: {exc}", flush=True)
        return float("nan")
    finally:
        batches.close()  # drops the loader's iterator: its workers exit before the next timing
        gc.collect()


def nvjpeg_check(jpeg_blobs: list[bytes], device) -> str:
    """Which decoder (c-jpeg) uses here, and on CUDA how far nvjpeg is from the CPU decoder."""
    if not nvjpeg_supported(device):
        return "CPU (torchvision.io, main process)"
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [encoded_tensor(b) for b in jpeg_blobs[:16]]
    try:
        on_gpu = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)).cpu()
    except RuntimeError as exc:
        return f"CPU: nvjpeg failed ({exc})"
    on_cpu = torch.stack([decode_jpeg(e, mode=ImageReadMode.RGB) for e in encoded])
    diff = (on_gpu.int() - on_cpu.int()).abs().float()
    return f"nvjpeg (vs CPU libjpeg on 16 frames: mean |diff| {diff.mean():.3f}, max {diff.max():.0f} levels)"


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on whatever device (code smoke test)")
    parser.add_argument("--archs", default="vit_tiny,vit_small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="(b), (c): decoding workers")
    parser.add_argument("--jpeg-workers", type=int, default=4, help="(c-jpeg): workers that only hand over bytes")
    parser.add_argument("--modes", default="compile", help="eager and/or compile, comma-separated")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up after the first round")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    parser.add_argument("--compile-aug", action="store_true", help="also torch.compile the GPU augmentation (compile mode)")
    parser.add_argument("--feed", choices=FEED_MODES, default="thread",
                        help="how the device-side preparation overlaps the step (default: a background thread)")
    parser.add_argument("--aug-dtype", choices=("auto", "float32", "float16"), default="auto",
                        help="dtype of the GPU augmentation's colour ops (auto: float16 on CUDA)")
    parser.add_argument("--compare", action="store_true",
                        help="also (c) as the last GPU run had it (float32 colour ops, in line) and with --compile-aug, "
                             "against the same compiled step")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.modes, args.batch = "vit_tiny", "eager", 8
        args.workers, args.jpeg_workers = min(args.workers, 2), min(args.jpeg_workers, 1)
        args.warmup, args.seconds = 0.0, 0.2
    return args


def decoding_loader(blobs: list[bytes], args, device, decode_size: int) -> torch.utils.data.DataLoader:
    """Workers that decode the frames (PIL) and resize them to ``decode_size``, as the recipes'."""
    return make_loader(Frames(blobs, DecodeForGPU(decode_size)), args.batch, args.workers, collate_views, device)


def prepare_decoded(aug_fn, device):
    """Device-side preparation of a batch the workers decoded: copy, then augment."""
    return lambda batch: aug_fn(batch.to(device, non_blocking=True))


def gpu_feeds(args, device, aug_fn, png, jpeg, decode_size: int) -> dict[str, tuple]:
    """(loader, prepare, workers) of the two device-side feeds: (c) PNG decoded by the workers,
    (c-jpeg) JPEG bytes decoded on the device; ``prepare`` ends with the GPU augmentation."""
    png_loader = decoding_loader(png, args, device, decode_size)
    jpeg_loader = make_loader(EncodedFrames(jpeg), args.batch, args.jpeg_workers, collate_encoded, device)
    return {
        "png": (png_loader, prepare_decoded(aug_fn, device), args.workers),
        "jpeg": (jpeg_loader, lambda b: aug_fn(decode_batch(split_encoded(b), device, size=decode_size)),
                 args.jpeg_workers),
    }


def measure_feeds(args, device, aug_fn, png, jpeg, size: int, decode_size: int) -> dict[str, float]:
    """The feeds alone: no model step, so their rates bound (c) and (c-jpeg) from above; and the
    eager augmentation with float32 colour ops, for comparison."""
    batch = args.batch
    images = torch.randint(0, 256, (batch, 3, decode_size, decode_size), dtype=torch.uint8, device=device)
    feeds = {"aug": rate(lambda: aug_fn(images), batch, device, 1, args.warmup, args.seconds)}
    feeds["aug_float32"] = rate(lambda: former_aug(size, device)(images), batch, device, 1, args.warmup, args.seconds)
    for name, (loader, prepare, workers) in gpu_feeds(args, device, aug_fn, png, jpeg, decode_size).items():
        feeds[name] = loader_rate(loader, prepare, lambda views: None, args, device, batch, workers)
    # JPEG shards decoded by the workers (PIL), as the recipes read them: is nvjpeg needed at all?
    feeds["jpeg_workers"] = loader_rate(decoding_loader(jpeg, args, device, decode_size), prepare_decoded(aug_fn, device),
                                        lambda views: None, args, device, batch, args.workers)
    return feeds


def measure_arch(args, device, arch: str, mode: str, aug_fn, png, jpeg, size: int, out_dim: int, decode_size: int) -> dict:
    batch = args.batch
    torch.manual_seed(0)
    step = Step(arch, size, out_dim, device, compile_model=mode == "compile")
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
    row = {"arch": arch, "mode": mode, "bare": rate(lambda: step(views), batch, device, 1, args.warmup, args.seconds)}
    views.clear()  # frees the synthetic views' device memory
    to_device = lambda vs: [v.to(device, non_blocking=True) for v in vs]  # noqa: E731
    cpu_loader = make_loader(Frames(png, PretrainTransform(size=size)), batch, args.workers, collate_views, device)
    row["cpu_aug"] = loader_rate(cpu_loader, to_device, step, args, device, batch, args.workers)
    for name, (loader, prepare, workers) in gpu_feeds(args, device, aug_fn, png, jpeg, decode_size).items():
        row[{"png": "gpu_aug", "jpeg": "gpu_aug_jpeg"}[name]] = loader_rate(
            loader, prepare, step, args, device, batch, workers)
    if args.compare:  # (c) the former way, and with the compiled augmentation, against the same step
        compiled = aug_fn if mode == "compile" and args.compile_aug else compiled_aug(aug_fn)
        for key, other_aug, feed_mode in (("gpu_aug_former", former_aug(size, device), "inline"),
                                          ("gpu_aug_compiled", compiled, None)):
            row[key] = loader_rate(decoding_loader(png, args, device, decode_size), prepare_decoded(other_aug, device),
                                   step, args, device, batch, args.workers, feed_mode=feed_mode)
    return row


@functools.cache
def former_aug(size: int, device) -> GPUPretrainAugment:
    """The augmentation as the second session's GPU run had it: float32 colour ops."""
    return GPUPretrainAugment(size=size, photometric_dtype="float32").to(device)


@functools.cache  # one compilation for every arch
def compiled_aug(aug_fn):
    """``aug_fn`` with its pixel work compiled (``compile_augment``)."""
    return compile_augment(aug_fn)


def main(argv=None) -> int:
    import torchvision

    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick and device.type == "cpu":
        torch.set_num_threads(1)  # a smoke test on a shared CPU: spinning OpenMP threads stall badly
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    size, out_dim, decode_size, n_frames = (32, 256, 48, 16) if args.quick else (224, 32768, 256, 2 * args.batch)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    print(f"device: {name}; torch {torch.__version__}, torchvision {torchvision.__version__}; batch {args.batch}, "
          f"{size} px, {out_dim} prototypes; {args.workers} decoding workers, {args.jpeg_workers} byte workers; "
          f"feed: {args.feed}; colour ops of the GPU augmentation in {str(resolve_photometric_dtype(args.aug_dtype, device)).replace('torch.', '')}")
    png, jpeg = make_frames(n_frames, decode_size)
    print(f"frames: {n_frames} at {decode_size} px, PNG {np.mean([len(b) for b in png]) / 1e3:.0f} kB, "
          f"JPEG q{JPEG_QUALITY} {np.mean([len(b) for b in jpeg]) / 1e3:.0f} kB; (c-jpeg) decodes with "
          f"{nvjpeg_check(jpeg, device)}", flush=True)

    rows, feeds = [], {}
    for mode in args.modes.split(","):
        gpu_aug = GPUPretrainAugment(size=size, photometric_dtype=args.aug_dtype).to(device)
        # eager by default, as the pretraining recipe runs it (only the model is compiled there)
        aug_fn = compile_augment(gpu_aug) if mode == "compile" and args.compile_aug else gpu_aug
        feeds[mode] = measure_feeds(args, device, aug_fn, png, jpeg, size, decode_size)
        f = feeds[mode]
        print(f"feeds alone ({'compiled' if aug_fn is not gpu_aug else 'eager'} augmentation, no model step): GPU aug of a device batch {f['aug']:.0f} img/s "
              f"(float32 colour ops, eager: {f['aug_float32']:.0f}), "
              f"(c) PNG workers + aug {f['png']:.0f} img/s, (c-jpeg) bytes + decode + aug {f['jpeg']:.0f} img/s, "
              f"JPEG decoded by the workers + aug {f['jpeg_workers']:.0f} img/s", flush=True)
        for arch in args.archs.split(","):
            dim, depth = {"vit_tiny": (192, 12), "vit_small": (384, 12)}[arch]
            row = measure_arch(args, device, arch, mode, aug_fn, png, jpeg, size, out_dim, decode_size)
            flops_per_image = 8 * vit_forward_flops(dim, depth, (size // 16) ** 2 + 1, out_dim)  # 2 views x (3 student + 1 teacher)
            row["mfu"] = row["bare"] * flops_per_image / peak if peak else float("nan")
            rows.append(row)
            print(f"{arch:9s} {mode:7s}  (a) {row['bare']:8.1f} img/s  MFU {100 * row['mfu']:5.1f}%   "
                  f"(b) {row['cpu_aug']:8.1f} = {row['cpu_aug'] / row['bare']:5.3f} x (a)   "
                  f"(c) {row['gpu_aug']:8.1f} = {row['gpu_aug'] / row['bare']:5.3f} x (a)   "
                  f"(c-jpeg) {row['gpu_aug_jpeg']:8.1f} = {row['gpu_aug_jpeg'] / row['bare']:5.3f} x (a)", flush=True)
            if args.compare:
                print(f"{'':18s}(c) former (float32 colour ops, in line) {row['gpu_aug_former']:8.1f} = "
                      f"{row['gpu_aug_former'] / row['bare']:5.3f} x (a)   (c) compiled augmentation "
                      f"{row['gpu_aug_compiled']:8.1f} = {row['gpu_aug_compiled'] / row['bare']:5.3f} x (a)", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n| arch | mode | (a) bare img/s | MFU | (b) CPU aug img/s | (b)/(a) | (c) PNG workers + GPU aug img/s "
          "| (c)/(a) | (c-jpeg) nvjpeg + GPU aug img/s | (c-jpeg)/(a) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arch']} | {r['mode']} | {r['bare']:.0f} | {100 * r['mfu']:.1f}% | {r['cpu_aug']:.0f} | "
              f"{r['cpu_aug'] / r['bare']:.3f} | {r['gpu_aug']:.0f} | {r['gpu_aug'] / r['bare']:.3f} | "
              f"{r['gpu_aug_jpeg']:.0f} | {r['gpu_aug_jpeg'] / r['bare']:.3f} |")
    if args.compare:
        print("\n| arch | mode | (c) former: float32 colour ops, in line, img/s | /(a) | (c) compiled augmentation img/s | /(a) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['arch']} | {r['mode']} | {r['gpu_aug_former']:.0f} | {r['gpu_aug_former'] / r['bare']:.3f} | "
                  f"{r['gpu_aug_compiled']:.0f} | {r['gpu_aug_compiled'] / r['bare']:.3f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "batch": args.batch, "workers": args.workers, "jpeg_workers": args.jpeg_workers,
                       "feed": args.feed, "aug_dtype": args.aug_dtype, "rows": rows, "feeds": feeds}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
