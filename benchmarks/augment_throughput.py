"""Throughput of the paper's augmentations: CPU reference (PIL, one image at a time, one
process) vs the batched module of ``sewer_hf.feed.batched`` on the best device available.

Prints images/s for each and the ratio batched / reference, measured in the same run.
Image decoding is not included (both start from decoded pixels).

On a GPU the eager batched module is bound by memory traffic, not arithmetic, so it also
prints the bytes its ATen ops read and write per image, for float32 and float16 colour ops
(counted with a dispatch mode; views move nothing, index ops count the rows they move). The
count is the same on every device, so a CPU run tells what a GPU would have to move.

Unless ``--no-libraries``, it also times what the libraries offer for the same pipeline, on
the same device and batch (issue #8: "kornia or torchvision.transforms.v2 where they serve -
measure"): torchvision.transforms.v2 called once per image (per-sample parameters: the
reference pipeline on device tensors); v2 called once per batch (one draw for the whole batch,
so NOT the paper's augmentation: timed only as a bound); kornia.augmentation (per-sample
parameters; needs ``pip install kornia``, else a line says it was not timed).

    python benchmarks/augment_throughput.py [--quick] [--mode pretrain|finetune|both]
        [--height 256 --width 320] [--batch 128] [--device cuda] [--compile] [--no-libraries]
"""
from __future__ import annotations

import argparse
import time


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    parser.add_argument("--mode", choices=("pretrain", "finetune", "both"), default="both")
    parser.add_argument("--height", type=int, default=256, help="input height (prepared, small images)")
    parser.add_argument("--width", type=int, default=320, help="input width")
    parser.add_argument("--batch", type=int, default=None, help="batch size of the batched module")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the batched module")
    parser.add_argument("--no-libraries", dest="libraries", action="store_false",
                        help="skip timing torchvision.transforms.v2 and kornia on the same batch")
    return parser.parse_args(argv)


def library_pipelines(mode: str, device) -> dict:
    """name -> callable(uint8 batch) giving the mode's views, built from the libraries with the
    paper's values (``PretrainAugConfig`` / ``FinetuneAugConfig``)."""
    import torch

    from sewer_hf.feed.augment import FinetuneAugConfig, PretrainAugConfig, PretrainTransform, finetune_transform

    if mode == "pretrain":
        per_image, views = PretrainTransform().global_view, 2
    else:
        per_image, views = finetune_transform().transforms[1], 1  # without to_rgb, which takes one image
    pipelines = {
        "torchvision v2, one call per image": lambda batch: [torch.stack([per_image(im) for im in batch])
                                                             for _ in range(views)],
        "torchvision v2, one call per batch (one draw for all: not per sample)":
            lambda batch: [per_image(batch) for _ in range(views)],
    }
    try:
        import kornia.augmentation as K
    except ImportError:
        print(f"{mode:9s} kornia: not installed (pip install kornia), not timed")
        return pipelines
    if mode == "pretrain":
        cfg = PretrainAugConfig()
        ops = [K.RandomResizedCrop((cfg.size, cfg.size), scale=cfg.scale, ratio=cfg.ratio, resample="bicubic"),
               K.RandomHorizontalFlip(p=cfg.flip_p),
               K.ColorJitter(*cfg.color_jitter, p=cfg.color_jitter_p),
               K.RandomGrayscale(p=cfg.grayscale_p),
               K.RandomGaussianBlur((cfg.blur_kernel_size,) * 2, sigma=cfg.blur_sigma, p=cfg.blur_p),
               K.RandomEqualize(p=cfg.equalize_p),
               K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_p),  # threshold 0.5 = 128/255
               K.Normalize(torch.tensor(cfg.mean), torch.tensor(cfg.std))]
    else:
        cfg = FinetuneAugConfig()
        ops = [K.Resize((cfg.size, cfg.size), resample="bicubic", antialias=True),
               K.ColorJitter(*cfg.color_jitter, p=cfg.color_jitter_p),
               K.RandomHorizontalFlip(p=cfg.flip_p),
               K.RandomEqualize(p=cfg.equalize_p),
               K.RandomAutoContrast(p=cfg.autocontrast_p),
               K.RandomAffine(degrees=cfg.rotation_degrees, resample=cfg.affine_interpolation),
               K.Normalize(torch.tensor(cfg.mean), torch.tensor(cfg.std)),
               K.RandomErasing(scale=cfg.erase_scale, ratio=cfg.erase_ratio, value=cfg.erase_value, p=cfg.erase_p)]
    sequence = K.AugmentationSequential(*ops).to(device)
    pipelines["kornia.augmentation (per sample)"] = lambda batch: [sequence(batch.float() / 255) for _ in range(views)]
    return pipelines


def traffic_per_image(module, batch) -> float:
    """Bytes read + written per image by the ATen ops of one eager ``module(batch)`` call."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def nbytes(tensor) -> int:
        return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0

    class Count(TorchDispatchMode):
        moved = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            if func.is_view or name.startswith("empty") or name in ("_to_copy", "to") and out is args[0]:
                return out
            if name in ("index_copy_", "index_copy"):  # reads and writes the copied rows
                self.moved += 2 * nbytes(args[3]) + (2 * nbytes(args[0]) if name == "index_copy" else 0)
            elif name == "index_select":
                self.moved += 2 * nbytes(out)
            else:
                self.moved += sum(map(nbytes, tree_leaves((args, kwargs)))) + sum(map(nbytes, tree_leaves(out)))
            return out

    with torch.inference_mode(), Count() as count:
        module(batch)
    return count.moved / len(batch)


def _time_reference(transform, image, seconds: float, min_images: int) -> float:
    transform(image)  # warm-up
    count, start = 0, time.perf_counter()
    while count < min_images or time.perf_counter() - start < seconds:
        transform(image)
        count += 1
    return count / (time.perf_counter() - start)


def _time_batched(module, batch, iterations: int, sync) -> float:
    for _ in range(2):  # warm-up (and compilation)
        module(batch)
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        module(batch)
    sync()
    return iterations * len(batch) / (time.perf_counter() - start)


def main(argv=None) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from sewer_hf.feed.augment import PretrainTransform, finetune_transform
    from sewer_hf.feed.batched import GPUFinetuneAugment, GPUPretrainAugment, compile_augment

    args = _parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size = args.batch or (256 if device.type == "cuda" else 32)
    if args.quick:
        batch_size = min(batch_size, 64 if device.type == "cuda" else 8)
    seconds, min_images, iterations = (0.5, 5, 2) if args.quick else (5.0, 50, 10 if device.type == "cuda" else 3)

    rng = np.random.default_rng(0)
    # Smooth structure + noise: equalize/blur see realistic, not flat, histograms.
    yy, xx = np.mgrid[0 : args.height, 0 : args.width]
    pixels = np.stack([xx / args.width * 180, yy / args.height * 160, 90 + 0 * xx], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).repeat(batch_size, 1, 1, 1).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"input {args.width}x{args.height} uint8, batch {batch_size}, batched module on {name}")

    modes = ("pretrain", "finetune") if args.mode == "both" else (args.mode,)
    for mode in modes:
        if mode == "pretrain":
            reference, module, views = PretrainTransform(), GPUPretrainAugment(), 2
        else:
            reference, module, views = finetune_transform(), GPUFinetuneAugment(), 1
        module = module.to(device)
        runner = compile_augment(module) if args.compile else module
        with torch.inference_mode():
            ref_rate = _time_reference(reference, image, seconds, min_images)
            batched_rate = _time_batched(runner, batch, iterations, sync)
        print(
            f"{mode:9s} ({views} view{'s' if views > 1 else ''}/image): reference PIL {ref_rate:8.1f} img/s (1 process)"
            f" | batched {batched_rate:9.1f} img/s | ratio {batched_rate / ref_rate:6.2f}x"
        )
        if args.libraries:
            with torch.inference_mode():
                for name, pipeline in library_pipelines(mode, device).items():
                    rate = _time_batched(pipeline, batch, iterations, sync)
                    print(f"{mode:9s}   {name}: {rate:9.1f} img/s | ours / it {batched_rate / rate:6.2f}x")
        cls = type(module)
        moved = {dtype: traffic_per_image(cls(photometric_dtype=dtype).to(device), batch) / 1e6 for dtype in ("float32", "float16")}
        print(f"{mode:9s} memory traffic of the eager batched module: float32 colour ops {moved['float32']:.1f} MB/img, "
              f"float16 {moved['float16']:.1f} MB/img ({moved['float16'] / moved['float32']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
