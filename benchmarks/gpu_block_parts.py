"""Where a block's GPU time goes: GEMMs, attention and the rest, from the profiler's kernels.

The H200 check found whole blocks at 32-51 % of the dense peak while their GEMMs alone reach
46-77 % (README "One H200"). This runs the executor's own block call (what ``profiles.collect``
times: ``run_blocks`` of one block on a full 1024-px image) under ``torch.profiler`` and sums
the device time of its kernels in three classes by kernel name: GEMM (cuBLAS/CUTLASS/nvjet),
attention (flash, memory-efficient, cuDNN SDPA) and the rest (normalisation, modulation,
activations, copies). On CPU (``--dry-run``, tiny models) it classifies the CPU operators
instead. Writes ``--out`` (JSON: per model the classes and the 15 largest kernels) after each
model and prints a table.

    python benchmarks/gpu_block_parts.py --out parts.json
    python benchmarks/gpu_block_parts.py --dry-run --out parts.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

GEMM = re.compile(r"gemm|cutlass|nvjet|xmma|cublas|addmm|aten::mm|aten::bmm|matmul|linear",
                  re.I)
ATTENTION = re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)


def classify(name: str) -> str:
    """``attention``, ``gemm`` or ``rest`` for one kernel (or CPU operator) name."""
    if ATTENTION.search(name):
        return "attention"
    if GEMM.search(name):
        return "gemm"
    return "rest"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=5, help="profiled calls per block")
    p.add_argument("--dry-run", action="store_true", help="CPU, fp32, tiny models, 256 px")
    a = p.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from executor.pace import op_runner
    from sim.models import get_model

    cuda = not a.dry_run
    if cuda:
        names, dev, dtype, res = ("pixart-alpha", "sd3-medium", "flux-dev"), "cuda", "bf16", 1024
    else:
        names, dev, dtype, res = ("pixart-tiny", "sd3-tiny", "flux-tiny"), "cpu", "fp32", 256
    results: list[dict] = []
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "dtype": dtype, "calls": a.calls,
            "source": "torch.profiler kernel device time" if cuda
            else "torch.profiler CPU operator self time"}

    def measure(name: str) -> None:
        model = get_model(name)
        runner = op_runner(model, dev, dtype, (res,))
        tokens = model.image_tokens(res, res)
        for kind in sorted({model.block_kind(i) for i in range(model.num_blocks)}):
            fn = runner.block(res, tokens, tokens, kind)
            with torch.no_grad():
                for _ in range(3):
                    fn()
                if cuda:
                    torch.cuda.synchronize()
                acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
                with profile(activities=acts) as prof:
                    for _ in range(a.calls):
                        fn()
                    if cuda:
                        torch.cuda.synchronize()
            row = summarise(prof, name, kind, res, tokens)
            results.append(row)
            print(f"{name:13s} {kind:7s} {row['device_seconds_per_block'] * 1e3:8.3f} ms of "
                  f"kernels per block: " + ", ".join(
                      f"{k} {v * 1e3:.3f} ms ({row['shares'][k] * 100:.0f} %)"
                      for k, v in row["classes"].items()), flush=True)
            Path(a.out).write_text(json.dumps({"meta": meta, "blocks": results}, indent=1))

    def summarise(prof, name: str, kind: str, res: int, tokens: int) -> dict:
        sums = {"gemm": 0.0, "attention": 0.0, "rest": 0.0}
        kernels = []
        for evt in prof.key_averages():
            if cuda:
                if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
                    continue
                us = getattr(evt, "self_device_time_total", None)
                if us is None:  # torch releases before the rename
                    us = evt.self_cuda_time_total
            elif evt.key.startswith("aten::"):
                us = evt.self_cpu_time_total
            else:
                continue
            cls = classify(evt.key)
            sums[cls] += us / 1e6 / a.calls
            kernels.append({"name": evt.key[:160], "class": cls, "calls": evt.count,
                            "seconds_per_block": us / 1e6 / a.calls})
        total = sum(sums.values())
        kernels.sort(key=lambda k: -k["seconds_per_block"])
        return {"model": name, "kind": kind, "resolution": res, "tokens": tokens,
                "device_seconds_per_block": total, "classes": sums,
                "shares": {k: v / total if total else 0.0 for k, v in sums.items()},
                "top_kernels": kernels[:15]}

    for name in names:
        try:
            measure(name)
        except Exception as e:  # noqa: BLE001 - one model's failure must not lose the others
            print(f"{name}: failed: {type(e).__name__}: {e}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
