"""The compute profiles shipped with the project (``profiles/data/``), found by GPU, model
and data type, for ``--profile shipped``.

Read as files, not imported: ``profiles`` is a higher layer, and its ``data`` folder is package
data installed beside ``sim``."""

from __future__ import annotations

from pathlib import Path

from sim.cost.profile_format import ComputeProfile
from sim.errors import UserError
from sim.hardware import GPU, get_gpu

SHIPPED = "shipped"
DATA_DIR = Path(__file__).resolve().parents[2] / "profiles" / "data"

# The names torch.cuda.get_device_name() (and nvidia-smi) report for the registry's GPUs,
# as NVIDIA's drivers name the boards; a profile's ``device_name`` maps to its GPU through it.
DEVICE_NAMES = {
    "NVIDIA H200": "h200",
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H20": "h20",
    "NVIDIA A100-SXM4-80GB": "a100-sxm-80g",
    "NVIDIA A100 80GB PCIe": "a100-pcie-80g",
    "NVIDIA L40": "l40",
    "NVIDIA L40S": "l40s",
    "NVIDIA L20": "l20",
    "NVIDIA GeForce RTX 4090": "rtx4090",
    "Tesla V100-SXM2-32GB": "v100-sxm2-32g",
    "Tesla T4": "t4",
}


def profile_gpu(path: str | Path) -> tuple[ComputeProfile, GPU]:
    """The compute profile at ``path`` and the registry GPU it was measured on, or a
    ``UserError`` when it was not measured on a GPU the registry knows by name."""
    prof = ComputeProfile.read(path)
    name = DEVICE_NAMES.get(prof.meta.get("device_name", ""))
    if prof.meta.get("device") != "cuda" or name is None:
        raise UserError(f"{path}: not a profile of a known GPU (device_name "
                        f"{prof.meta.get('device_name')!r}); known: {', '.join(DEVICE_NAMES)}")
    return prof, get_gpu(name)


def shipped_gpu_profiles(data_dir: Path = DATA_DIR) -> list[tuple[str, str, str, Path]]:
    """(registry GPU, model, dtype, path) of every shipped GPU compute profile."""
    found = []
    for path in sorted(data_dir.glob("cuda-*.csv")):
        try:
            prof, gpu = profile_gpu(path)
        except UserError:
            continue  # a link profile (cuda- too), or a GPU the registry does not name
        found.append((gpu.name, prof.meta["model"], prof.meta["dtype"], path))
    return found


def shipped_profile(model: str, gpu: GPU, dtype: str, data_dir: Path = DATA_DIR) -> Path:
    """The shipped profile of ``model`` (its registry name) on ``gpu`` in ``dtype``, or a
    ``UserError`` naming what is shipped and how to measure one."""
    found = shipped_gpu_profiles(data_dir)
    for g, m, d, path in found:
        if (g, m, d) == (gpu.name, model, dtype):
            return path
    have = ", ".join(f"{m} on {g} ({d})" for g, m, d, _ in found) or "none"
    raise UserError(f"--profile shipped: no shipped profile of {model} on {gpu.name} in "
                    f"{dtype} (shipped: {have}); measure one with python -m profiles.collect "
                    f"--model {model} --device cuda --dtype {dtype} on that GPU and pass its "
                    f"file, or leave --profile out for the roofline")
