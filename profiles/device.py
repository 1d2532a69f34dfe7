"""Which device a profile was measured on: its human name, its file-name key, and the
attention kernels torch enables there. Shared by the compute and link profilers.

torch is imported inside the functions that ask it: the profilers' command lines read these
names before deciding to measure, and answer ``--help`` or bad flags without loading torch."""

from __future__ import annotations

from sim.cost.profile import this_cpu
from sim.cost.profile_format import slug


def device_name(device: str) -> str:
    """Human name of the device: the CPU model, or the CUDA device name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return this_cpu()  # the name sim.cost.profile compares a profile's host with


def device_slug(device: str, name: str, threads: int) -> str:
    """File-name key of the device: ``cpu-<model>-t<threads>`` or ``cuda-<name>``."""
    if device == "cpu":
        return f"cpu-{slug(name)}-t{threads}"
    return f"cuda-{slug(name)}"


def attention_backend(device: str) -> str:
    """Which attention implementation the blocks run (recorded in the metadata)."""
    import torch

    base = "torch.nn.functional.scaled_dot_product_attention (diffusers AttnProcessor2_0 " \
           "layout)"
    if device == "cuda":
        flags = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                 "math": torch.backends.cuda.math_sdp_enabled()}
        if hasattr(torch.backends.cuda, "cudnn_sdp_enabled"):
            flags["cudnn"] = torch.backends.cuda.cudnn_sdp_enabled()
        return base + "; enabled: " + ", ".join(k for k, v in flags.items() if v)
    return base + "; CPU kernel chosen by torch"
