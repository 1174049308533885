"""CPU latency of the exported ONNX model (onnxruntime) vs our eager PyTorch inference.

Setup (not timed): a ``--arch`` (default mobilenet_v2, the pipeline's default in params.yaml) SK-RD4AD model with
a random teacher and an untrained student (only timing matters; the weights' values do not change
the work), BatchNorm folded and channels_last as :func:`skrd4ad.evaluate.evaluate` loads it,
wrapped in :class:`skrd4ad.export.AnomalyDetector` with the default map settings (sum, sigma 4,
max score) and exported with :func:`skrd4ad.export.to_onnx` (the exporter :func:`skrd4ad.export.export_onnx` uses).

Timed, interleaved round by round (see ``_common``) at batch 1 and 8, on the same random uint8
``(B, S, S, 3)`` images, both float32 on the CPU with the same thread count (onnxruntime's
intra-op threads = ``torch.get_num_threads()``; its default sequential execution uses no inter-op
pool).  onnxruntime's threads do not spin after a run (``spinning=False``): spinning, they took
the cores from the eager call after them in the interleaved order, slowing it up to 2x at batch 1:

- ``eager``: :func:`skrd4ad.inference.predict_batch` (normalisation, teacher + student, maps with
  the matrix Gaussian, scores);
- ``onnx``: ``InferenceSession.run`` of the exported model (the same steps in one graph, default
  graph optimisations), via :func:`skrd4ad.export.verify_onnx` on one reused session.

The JSON holds each side's median seconds and ms/image, and the per-round ratio ``eager_over_onnx``
(> 1: onnxruntime is faster) as median with min and max; also the maximum map difference between
the two sides relative to the map range.

    python benchmarks/bench_export.py            # about 15 s on 2 cores
    python benchmarks/bench_export.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import fmt_ratio, interleaved, machine, ratio_summary, side_summary, write_result
from skrd4ad.config import EvalConfig
from skrd4ad.export import AnomalyDetector, onnx_session, to_onnx, verify_onnx
from skrd4ad.inference import predict_batch
from skrd4ad.models.fold import fold_batchnorm
from skrd4ad.models.build import build_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/bench_export.json"))
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--variant", default="skrd4ad")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds after 1 warm-up")
    parser.add_argument("--dynamo", action="store_true", help="export with torch.export instead of TorchScript")
    parser.add_argument("--quick", action="store_true", help="64 px, 2 rounds (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.rounds = 64, 2
    threads = torch.get_num_threads()
    size = args.image_size

    torch.manual_seed(0)
    model = build_model(args.arch, args.variant, teacher_weights=None).eval()
    fold_batchnorm(model)
    model = model.to(memory_format=torch.channels_last)  # as load_checkpoint returns it
    detector = AnomalyDetector(model, size, EvalConfig(device="cpu")).eval()
    with torch.inference_mode():
        detector(torch.zeros(1, size, size, 3, dtype=torch.uint8))  # fills the caches eagerly first
    t0 = time.perf_counter()
    data = to_onnx(detector, dynamo=args.dynamo).SerializeToString()
    export_s = time.perf_counter() - t0
    session = onnx_session(data, threads, spinning=False)

    result: dict = {
        "benchmark": "bench_export", "machine": machine(),
        "config": {k: str(v) for k, v in vars(args).items()},
        "what": ("eager predict_batch (BatchNorm folded, channels_last) vs onnxruntime CPU on the exported "
                 "AnomalyDetector; same float32 model (random teacher, untrained student), same uint8 input, "
                 f"{threads} threads each (onnxruntime without spinning)"),
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "export_seconds": export_s, "onnx_megabytes": len(data) / 1e6, "threads": threads, "batches": {},
    }
    for batch in args.batches:
        images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(batch))
        array = images.numpy()
        times, values = interleaved({
            "eager": lambda: predict_batch(model, images, EvalConfig(device="cpu")),
            "onnx": lambda: verify_onnx(session, array),
        }, args.rounds)
        ref_maps = values["eager"][0].numpy()
        scale = float(ref_maps.max() - ref_maps.min())
        summary = {k: side_summary(v) for k, v in times.items()}
        result["batches"][str(batch)] = {
            "seconds": summary,
            "ms_per_image_of_median": {k: 1000 * v["median_s"] / batch for k, v in summary.items()},
            "eager_over_onnx": ratio_summary(times["eager"], times["onnx"]),
            "max_map_diff_rel": float(np.abs(values["onnx"][1] - ref_maps).max()) / scale,
        }
        r = result["batches"][str(batch)]
        print(f"batch {batch}: eager {r['ms_per_image_of_median']['eager']:.1f} ms/image, onnx "
              f"{r['ms_per_image_of_median']['onnx']:.1f} ms/image, eager/onnx {fmt_ratio(r['eager_over_onnx'])}, "
              f"max map diff {r['max_map_diff_rel']:.1e}", flush=True)
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
