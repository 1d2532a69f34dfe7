"""GEMM and attention efficiency of the DiT blocks' own shapes on one GPU (bf16, eager).

The roofline gives each GPU one efficiency; the H200 check found Flux's blocks at 40-51 % of
the dense peak where PixArt's and SD3's reach 32-39 % (README "One H200"). This times the
kernels those blocks are made of, in isolation, to tell which part differs: the four GEMMs of
a block (QKV, attention output, MLP up and down: ``tokens x hidden`` by ``hidden x width``)
for PixArt-alpha, SD3-medium and Flux-dev at a full 1024-px image and at an eighth of it
(PipeFusion M = 8), and ``scaled_dot_product_attention`` with each model's heads and head
dimension at 1024 and 2048 px. Each shape: 3 warm-up calls, then two timings, as TFLOP/s and
as a fraction of the registry's dense peak:

- ``seconds``: the GPU's own time per call. ``--calls`` calls are captured in a CUDA graph and
  the graph is replayed ``--repeats`` times between CUDA events (the median replay, divided by
  the calls), so no CPU dispatch is in it. Where a kernel cannot be captured, ``graph`` is
  false and the calls run back to back between the events instead.
- ``seconds_eager``: one eager call between CUDA events after a synchronisation (the median of
  ``--repeats``), which holds the CPU's dispatch of the call too. On the small shapes (PixArt on
  an eighth of the image) that dispatch, not the GPU, set the first H200 run's figures, which
  timed only this way.

On CPU (``--dry-run``) both are wall-clock times, the first of back-to-back calls. Writes
``--out`` (JSON) and prints a table.

    python benchmarks/gpu_kernels.py --out kernels.json          # on the GPU
    python benchmarks/gpu_kernels.py --dry-run --out k.json      # CPU, fp32, shapes / 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from sim.hardware import GPUS  # noqa: E402

# (model, hidden, heads, head_dim, mlp width, text tokens, guidance batch)
MODELS = (("pixart-alpha", 1152, 16, 72, 4608, 0, 2),
          ("sd3-medium", 1536, 24, 64, 6144, 333, 2),
          ("flux-dev", 3072, 24, 128, 12288, 512, 1))


def shapes(scale: int) -> list[dict]:
    """The kernels to time; ``scale`` divides every size (the dry run's small shapes)."""
    out = []
    for name, h, heads, d, mlp, text, batch in MODELS:
        for label, image in (("1024px", 4096), ("1024px/8", 512)):
            m = batch * (image + text) // scale
            for gemm, k, n in (("qkv", h, 3 * h), ("out", h, h), ("mlp_up", h, mlp),
                               ("mlp_down", mlp, h)):
                out.append({"model": name, "kind": "gemm", "what": f"{gemm} {label}",
                            "m": m, "k": k // scale, "n": n // scale,
                            "flops": 2.0 * m * (k // scale) * (n // scale)})
        for label, image in (("1024px", 4096), ("2048px", 16384)):
            s = (image + text) // scale
            out.append({"model": name, "kind": "sdpa", "what": f"attention {label}",
                        "batch": batch, "heads": heads, "seq": s, "head_dim": d,
                        "flops": 4.0 * batch * heads * s * s * d})
        if name == "pixart-alpha":  # its head dimension, 72, against native tile sizes
            for d_alt in (64, 128):
                s = (4096 + text) // scale
                out.append({"model": name, "kind": "sdpa", "what": f"attention 1024px d={d_alt}",
                            "batch": batch, "heads": heads, "seq": s, "head_dim": d_alt,
                            "flops": 4.0 * batch * heads * s * s * d_alt})
    n = 8192 // scale  # the reference every GPU datasheet's peak is closest to
    out.append({"model": "-", "kind": "gemm", "what": "square 8192", "m": n, "k": n, "n": n,
                "flops": 2.0 * n**3})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--calls", type=int, default=20,
                   help="calls per CUDA graph (or per back-to-back run) for the GPU's own time")
    p.add_argument("--dry-run", action="store_true", help="CPU, fp32, every size / 16")
    a = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    dev = "cpu" if a.dry_run else "cuda"
    dtype = torch.float32 if a.dry_run else torch.bfloat16
    peak = GPUS["cpu" if a.dry_run else "h200"].peak_flops
    cuda = dev == "cuda"

    def eager(fn) -> float:
        """Median seconds of one call from a synchronised start, its dispatch included."""
        for _ in range(3):
            fn()
        times = []
        for _ in range(a.repeats):
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def device_time(fn) -> tuple[float, bool]:
        """Median seconds per call of ``a.calls`` calls with no CPU dispatch in them (a CUDA
        graph's replay), and whether the graph could be captured."""
        run = fn
        graph = False
        if cuda:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
                    for _ in range(3):
                        fn()
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    for _ in range(a.calls):
                        fn()
                run, graph = g.replay, True
            except RuntimeError as e:  # a kernel that cannot be captured: time back to back
                print(f"  (no CUDA graph: {str(e).splitlines()[0][:80]})", file=sys.stderr)
        per_run = 1 if graph else a.calls

        def batch() -> None:
            for _ in range(per_run):
                run()

        return eager(batch) / a.calls, graph

    rows = []
    for s in shapes(16 if a.dry_run else 1):
        if s["kind"] == "gemm":
            x = torch.randn(s["m"], s["k"], device=dev, dtype=dtype)
            w = torch.randn(s["k"], s["n"], device=dev, dtype=dtype)
            fn = partial(torch.matmul, x, w)
        else:
            q, k, v = (torch.randn(s["batch"], s["heads"], s["seq"], s["head_dim"], device=dev,
                                   dtype=dtype) for _ in range(3))
            fn = partial(F.scaled_dot_product_attention, q, k, v)
        sec, graph = device_time(fn)
        sec_eager = eager(fn)
        s.update(seconds=sec, tflops=s["flops"] / sec / 1e12, of_peak=s["flops"] / sec / peak,
                 graph=graph, seconds_eager=sec_eager,
                 of_peak_eager=s["flops"] / sec_eager / peak)
        rows.append(s)
        print(f"{s['model']:13s} {s['what']:22s} {sec * 1e3:9.3f} ms {s['tflops']:7.1f} TFLOP/s "
              f"{s['of_peak'] * 100:5.1f} % of peak (one eager call: {sec_eager * 1e3:.3f} ms, "
              f"{s['of_peak_eager'] * 100:.1f} %)", flush=True)
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "dtype": str(dtype), "repeats": a.repeats, "peak_flops": peak,
            "calls": a.calls,
            "timing": ("seconds: CUDA graph of `calls` calls replayed between CUDA events, "
                       "median / calls; seconds_eager: one call between CUDA events, median")
            if cuda else "perf_counter, median (seconds: back-to-back calls / calls)"}
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
