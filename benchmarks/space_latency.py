"""The Space under load: N concurrent `/classify_image` calls through `gradio_client`.

Three settings of the same app, served in this process, each measured in this run:

* sequential: one call at a time (the latency of a lone user; the baseline of the ratios);
* one-at-a-time queue: N concurrent calls with the image event's concurrency 1 and no batching
  (what the Space did before: Gradio's default queue);
* as shipped: N concurrent calls with `IMAGE_CONCURRENCY` requests decoded/drawn at once and the
  model lane batching the waiting frames (up to `MAX_BATCH`) into one forward pass.

The model is a random-weight ViT-T/16 classifier at 224 px (the paper's size) and the frames are
synthetic 720x576 PNGs, written to a temporary folder (no downloads). Other jobs on the same cores
change every figure: compare the ratios within one run.

    python benchmarks/space_latency.py [--quick] [--calls 20] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls, smaller model input (smoke run)")
    parser.add_argument("--calls", type=int, default=None, help="concurrent calls (default 20, quick 8)")
    parser.add_argument("--threads", type=int, default=None, help="model threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of all settings (default 3, quick 1)")
    return parser.parse_args(argv)


def _model(folder: Path, image_size: int) -> str:
    import torch

    from sewer_hf.data import labels as L
    from sewer_hf.models.hf_export import save_classifier
    from sewer_hf.models.vit import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", img_size=image_size)
    head = torch.nn.Linear(backbone.num_features, L.NUM_CLASSES)
    return str(save_classifier(backbone, head, folder / "classifier", image_size=image_size, verify=False))


def _frames(folder: Path, n: int) -> list[str]:
    import numpy as np

    from sewer_hf.synth.render import render_frame

    paths = []
    for k in range(n):
        path = folder / f"frame_{k}.png"
        render_frame(["RO"] if k % 2 else ["AF"], 10, (720, 576), np.random.default_rng(k)).save(path)
        paths.append(str(path))
    return paths


def _timed_calls(url: str, frames: list[str], concurrent: bool) -> list[float]:
    from gradio_client import Client, handle_file

    client = Client(url, analytics_enabled=False, verbose=False)
    client.predict(handle_file(frames[0]), api_name="/classify_image")  # warm-up

    def one(path: str) -> float:
        start = time.perf_counter()
        client.predict(handle_file(path), api_name="/classify_image")
        return time.perf_counter() - start

    if not concurrent:
        return [one(p) for p in frames]
    with ThreadPoolExecutor(len(frames)) as pool:
        return list(pool.map(one, frames))


def main(argv=None) -> int:
    args = _parse(argv)
    calls = args.calls or (8 if args.quick else 20)
    if args.threads:
        os.environ["SPACE_THREADS"] = str(args.threads)
    from sewer_hf.hub import space_app

    with tempfile.TemporaryDirectory(prefix="space_latency_") as tmp:
        folder = Path(tmp)
        model = _model(folder, 224)
        frames = _frames(folder, calls)
        settings = (("sequential (1 user)", 1, 1, False),
                    ("one-at-a-time queue", 1, 1, True),
                    ("2 at a time, batched", 2, space_app.MAX_BATCH, True),
                    ("as shipped", space_app.IMAGE_CONCURRENCY, space_app.MAX_BATCH, True))
        demos = []
        for _, concurrency, _, _ in settings:
            demo = space_app.build_demo(model, image_concurrency=concurrency)  # one shared model lane
            demo.queue()
            demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", ssr_mode=False, quiet=True)
            demos.append(demo)
        lane = demos[0].lane
        # Other jobs on a shared machine come and go: the settings take turns, round after round,
        # and each figure is the median over the rounds.
        measured: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, *_ in settings}
        batches: dict[str, list[int]] = {}
        try:
            for _ in range(args.rounds or (1 if args.quick else 3)):
                for demo, (name, _, max_batch, concurrent) in zip(demos, settings):
                    lane.max_batch = max_batch
                    lane.batches.clear()
                    wall, cpu = time.perf_counter(), time.process_time()
                    latencies = _timed_calls(demo.local_url, frames, concurrent)
                    wall, cpu = time.perf_counter() - wall, (time.process_time() - cpu) / (len(frames) + 1)
                    measured[name].append((statistics.median(latencies), max(latencies), wall, cpu))
                    batches[name] = list(lane.batches)
        finally:
            for demo in demos:
                demo.close()
        rows = [(name, *(statistics.median(r[i] for r in measured[name]) for i in range(4)), batches[name])
                for name, *_ in settings]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{calls} calls of /classify_image, median of {len(measured[rows[0][0]])} round(s); ViT-T/16 at 224 px, "
              f"720x576 PNG frames; client and server in this process (cpu s/call counts both); "
              f"{os.cpu_count()} cores, load average {load:.1f}")
        base = rows[0][1]
        print(f"{'setting':<22} {'median s':>9} {'max s':>7} {'wall s':>7} {'median/seq':>11} {'cpu s/call':>11}"
              "  model batches")
        for name, median, worst, wall, cpu, batches in rows:
            shown = f"{len(batches)} (largest {max(batches)})" if batches else "-"
            print(f"{name:<22} {median:9.2f} {worst:7.2f} {wall:7.2f} {median / base:11.2f} {cpu:11.3f}  {shown}")
        before, after = rows[1], rows[-1]
        print(f"concurrent_median_speedup={before[1] / after[1]:.2f} concurrent_max_speedup={before[2] / after[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
