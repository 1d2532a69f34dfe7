"""GPU and link registry: peak FLOP/s, memory, bandwidths, latencies, each with its source.

Units: FLOP/s, bytes, bytes/s, seconds. Achieved (not spec) numbers are what predict, so links
carry the bandwidth a transfer really gets, and GPUs carry the fraction of dense peak that whole
DiT pipelines reach.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sim.errors import UserError

GB = 1e9
_DOC = "docs/design.md#"  # sources cite sections of the design document by anchor
_DESIGN_GPU = _DOC + "gpu-table (vendor datasheets, dense BF16 tensor)"
_DESIGN_EFF = _DOC + "pipeline-efficiency: end-to-end DiT pipelines reach 40-45 % of peak " \
    "on A100, 50-70 % on L40/L20, 30 % (eager) to 50 % (compiled) on H100"
_LINK_DOC = _DOC + "link-bandwidth-and-latency"
_SM = "vendor whitepapers (Ada, Ampere, Hopper, Volta, Turing): streaming multiprocessors"
_LAUNCH = ("eager PyTorch per-op CPU dispatch plus cudaLaunchKernel, commonly 5-20 us; 12 us "
           "taken; measured on one H200 host (benchmarks/host_floor.py on the shipped H200 "
           "profiles): 10.8 us (pixart-alpha) and 10.5 us (sd3-medium) per operator")


@dataclass(frozen=True)
class GPU:
    """One accelerator model. ``efficiency`` is the fraction of ``peak_flops`` that large DiT
    kernels achieve; ``parallel_units`` is what small kernels must fill (SMs, or CPU cores)."""

    name: str
    peak_flops: float  # dense BF16 tensor FLOP/s (fp32 for the CPU)
    memory_bytes: float
    mem_bandwidth: float  # bytes/s
    pcie: str  # link kind of its host connection
    nvlink: str | None  # link kind through NVSwitch, or None for PCIe-only parts
    efficiency: float
    parallel_units: int
    launch_overhead_s: float  # CPU time to issue one kernel in eager mode
    p2p: bool = True  # peer-to-peer over PCIe (RTX 4090: no, transfers bounce through the host)
    sources: tuple[tuple[str, str], ...] = ()


def _gpu(name: str, tflops: float, gb: float, gbs: float, pcie: str, nvlink: str | None,
         eff: float, eff_src: str, sms: int, p2p: bool = True) -> GPU:
    return GPU(name, tflops * 1e12, gb * GB, gbs * GB, pcie, nvlink, eff, sms, 12e-6, p2p,
               sources=(("peak/memory/bandwidth/interconnect", _DESIGN_GPU),
                        ("efficiency", eff_src), ("parallel_units", _SM),
                        ("launch_overhead_s", _LAUNCH)))


_ADA = "assumed like L40/L20 (same Ada generation): " + _DESIGN_EFF
_OLD = "assumption (no measurement at hand): 50 %, between the A100 and L40 figures"
# One H200 measured here (docs/gpu-check-2026-11-30): the efficiency at which this roofline
# matches executor.run's serial loop, bf16, eager, 20 steps, was 0.372 and 0.365 (pixart-alpha
# 1024/2048 px) and 0.360 and 0.396 (sd3-medium 1024/2048 px); 0.37 is their median. The
# H100 SXM has the same GH100 compute (132 SMs, same clocks and dense peak), so it takes it
# too; the H100 PCIe (114 SMs, 350 W) keeps the design figure.
_HOPPER_EFF = ("measured: docs/gpu-check-2026-11-30 (one H200, executor.run serial loops of "
               "pixart-alpha and sd3-medium at 1024/2048 px, median of the implied 0.360-0.396)")

GPUS: dict[str, GPU] = {g.name: g for g in [
    _gpu("l40", 181, 48, 864, "pcie-gen4", None, 0.60, _DESIGN_EFF, 142),
    _gpu("l40s", 362, 48, 864, "pcie-gen4", None, 0.60, _ADA, 142),
    _gpu("l20", 119.5, 48, 864, "pcie-gen4", None, 0.60, _DESIGN_EFF, 92),
    _gpu("rtx4090", 165, 24, 1008, "pcie-gen4", None, 0.60, _ADA, 128, p2p=False),
    _gpu("a100-pcie-80g", 312, 80, 1935, "pcie-gen4", None, 0.42, _DESIGN_EFF, 108),
    _gpu("a100-sxm-80g", 312, 80, 2039, "pcie-gen4", "nvlink3", 0.42, _DESIGN_EFF, 108),
    _gpu("h100-pcie", 756, 80, 2000, "pcie-gen5", None, 0.35, _DESIGN_EFF, 114),
    _gpu("h100-sxm", 989, 80, 3350, "pcie-gen5", "nvlink4", 0.37, _HOPPER_EFF, 132),
    _gpu("h200", 989, 141, 4800, "pcie-gen5", "nvlink4", 0.37, _HOPPER_EFF, 132),
    _gpu("h20", 148, 96, 4000, "pcie-gen5", "nvlink4", 0.60, _ADA.replace("Ada", "compute-bound "
         "Hopper; its low peak is easy to fill, like"), 78),
    _gpu("v100-sxm2-32g", 125, 32, 900, "pcie-gen3", "nvlink2", 0.50, _OLD, 80),
    _gpu("t4", 65, 16, 320, "pcie-gen3", None, 0.50, _OLD, 40),
]}

# The CPU entry describes a CPU process of the reference executor (gloo); use a measured
# profile for real work. Peak: 2 cores x 3 GHz x 2 AVX-512 FMA x 16 fp32 x 2 FLOP.
GPUS["cpu"] = GPU(
    "cpu", 384e9, 24 * GB, 20 * GB, "loopback", None, 0.5, 2, 2e-6,
    sources=(("peak", "this dev machine (2-core AMD EPYC, AVX-512): 2x3 GHz x 2 FMA x 16 x 2"),
             ("memory", "this dev machine: 24 GB"),
             ("mem_bandwidth", "assumption: 20 GB/s for a 2-core VM share"),
             ("efficiency", "assumption: 50 % of AVX-512 peak for fp32 GEMMs"),
             ("launch_overhead_s", "eager PyTorch per-op dispatch on CPU, ~2 us")),
)


@dataclass(frozen=True)
class LinkKind:
    """One kind of link: achieved bandwidth per direction (bytes/s) and one-way latency (s)."""

    name: str
    bandwidth: float
    latency_s: float
    source: str


LINKS: dict[str, LinkKind] = {k.name: k for k in [
    LinkKind("pcie-gen3", 11 * GB, 15e-6,
             "x16 spec 15.75 GB/s; achieved ~70 % as for Gen4 (25 of 31.5 GB/s); "
             "latency: small messages cost a fixed 10-60 us, " + _LINK_DOC),
    LinkKind("pcie-gen4", 25 * GB, 15e-6,
             _LINK_DOC + ": point-to-point over PCIe Gen4 measured 23-26 GB/s on A100 and "
             "L20 boxes; latency: 10-60 us per small message (same section)"),
    LinkKind("pcie-gen5", 50 * GB, 15e-6,
             "x16 spec 63 GB/s; achieved taken at the Gen4 ratio (~80 %); latency as Gen4"),
    LinkKind("nvlink2", 120 * GB, 8e-6,
             "V100 SXM2 NVLink2 spec 150 GB/s per direction; achieved assumed 80 %"),
    LinkKind("nvlink3", 200 * GB, 8e-6,
             _LINK_DOC + ": NCCL all-reduce bus bandwidth ~200 GB/s on 8 A100 SXM "
             "(300 spec)"),
    LinkKind("nvlink4", 370 * GB, 8e-6,
             _LINK_DOC + ": NCCL all-reduce bus bandwidth ~370 GB/s on 8 H100 SXM "
             "(450 spec)"),
    LinkKind("upi", 20 * GB, 5e-6,
             _LINK_DOC + ": GPU traffic collapses to about 20 GB/s once it crosses the "
             "CPU socket link"),
    LinkKind("ib-hdr", 23 * GB, 5e-6,
             "InfiniBand HDR 200 Gb/s = 25 GB/s line rate; RDMA achieves ~92 % (assumption)"),
    LinkKind("ib-ndr", 46 * GB, 5e-6,
             "InfiniBand NDR 400 Gb/s = 50 GB/s line rate; RDMA achieves ~92 % (assumption)"),
    LinkKind("eth-100g", 11 * GB, 12e-6,
             "100 GbE = 12.5 GB/s line rate; RoCE achieves ~88 % (assumption)"),
    LinkKind("eth-200g", 22 * GB, 12e-6,
             "200 GbE = 25 GB/s line rate; RoCE achieves ~88 % (assumption)"),
    LinkKind("loopback", 10 * GB, 30e-6,
             "assumption for gloo between CPU processes on one host (use a link profile)"),
]}

_COMM = "../shared/GPU-COMM.md is the brief; sources: "


@dataclass(frozen=True)
class HostBus:
    """How a PCIe host moves GPU data between sockets and among many peers, per PCIe
    generation (taken as the host's generation). Rates in bytes/s, each with its source."""

    name: str
    socket_link: float  # the CPU socket link, per direction, as NCCL models it
    many_to_many: float  # all-to-all across the sockets: achieved / sum of the link rates
    source: str
    cpu: str = "intel"  # the CPU vendor such hosts usually have (see HOST_CPUS)


# Socket link: NCCL's own assumed rates (nccl src/graph/topo.h): Intel Skylake 10 GB/s (the
# Gen3 hosts), AMD 16 GB/s (Gen4 hosts are mostly EPYC Rome/Milan), Sapphire Rapids 22 GB/s
# (Gen5). (9.7 GB/s in aggregate, flashinfer PR #4870, was P2P through the CPUs, which NCCL no
# longer uses across sockets.) Many-to-many: all-to-all on 8-GPU two-socket PCIe boxes reaches
# 0.41-0.44 of the ideal aggregate (rtx6kpro pcie-bandwidth notes); 0.42 taken. Inside one
# socket there is no such collapse (nccl #1603: all-to-all = all-reduce = 18 GB/s via SHM).
_BUS = ("GPU-COMM.md sections 1-2: nccl src/graph/topo.h (socket link); rtx6kpro "
        "pcie-bandwidth notes (all-to-all 0.41-0.44 of ideal)")
HOST_BUSES: dict[str, HostBus] = {b.name: b for b in [
    HostBus("pcie-gen3", 10 * GB, 0.42, _BUS, "intel"),
    HostBus("pcie-gen4", 16 * GB, 0.42, _BUS, "amd"),
    HostBus("pcie-gen5", 22 * GB, 0.42, _BUS, "intel"),
]}

# The host CPU vendor decides two things NCCL does differently (GPU-COMM.md sections 1-2):
# the socket link rate it assumes (nccl src/graph/topo.h: Intel Skylake/Ice Lake 10 GB/s,
# Sapphire Rapids 22, any AMD 16) and whether PCIe peer-to-peer may cross the CPU's root
# complex (see nccl_p2p_through_cpu). ``--host-cpu`` overrides the generation's usual vendor.
HOST_CPUS = ("intel", "amd")
_SOCKET_LINK = {("intel", "pcie-gen3"): 10 * GB, ("intel", "pcie-gen4"): 10 * GB,
                ("intel", "pcie-gen5"): 22 * GB}
AMD_SOCKET_LINK = 16 * GB


def host_bus(pcie: str, cpu: str | None = None) -> HostBus:
    """The host bus of a ``pcie`` generation with ``cpu`` (default: the generation's usual
    vendor) and the socket-link rate NCCL assumes for that vendor and generation."""
    bus = HOST_BUSES[pcie]
    if cpu is None or cpu == bus.cpu:
        return bus
    if cpu not in HOST_CPUS:
        raise UserError(f"unknown --host-cpu '{cpu}'; choose one of: {', '.join(HOST_CPUS)}")
    rate = AMD_SOCKET_LINK if cpu == "amd" else _SOCKET_LINK[("intel", pcie)]
    return replace(bus, socket_link=rate, cpu=cpu)


# NCCL behaviour by version (GPU-COMM.md section 1): "2.23" is 2.23.4 and later (the
# default: current releases), "2.22" is 2.22 and earlier.
NCCL_VERSIONS = ("2.23", "2.22")


def nccl_p2p_through_cpu(nccl: str, cpu: str, gpus_per_node: int) -> bool:
    """Whether NCCL uses PCIe peer-to-peer across the CPU's root complex (rather than SHM
    through host memory) between GPUs that share no PCIe switch. NCCL >= 2.23.4 does so only
    on AMD hosts with at most 2 GPUs (NVIDIA/nccl commit 68b54236, v2.23.4 release notes);
    NCCL <= 2.22 does so on every AMD host, never on Intel (nccl src/graph/paths.cc at
    v2.20.5/v2.21.5). NCCL decides per communicator; the node's GPU count stands in for it."""
    if nccl not in NCCL_VERSIONS:
        raise UserError(f"unknown --nccl '{nccl}'; choose one of: {', '.join(NCCL_VERSIONS)} "
                        f"(2.23 means 2.23.4 and later)")
    if cpu != "amd":
        return False
    return nccl == "2.22" or gpus_per_node <= 2


# All-to-all over PCIe P2P through the CPU collapses: 4x RTX 4090 reached an all-to-all bus
# bandwidth of 2 GB/s with P2P against 18 GB/s through host memory ("CPUs make very poor PCI
# switches", nccl #1603), i.e. 2 / 24 of the Gen4 x16 rate NCCL models. Taken as the
# many-to-many efficiency of such flows (ring patterns, neighbour-only, are not affected).
P2P_CPU_MANY_TO_MANY = 2 / 24
P2P_CPU_SOURCE = "nccl #1603: all-to-all 2 GB/s with P2P through the CPU vs 18 via SHM"

# Compute that overlaps the GPU's own communication runs slower: HBM bandwidth and SMs are
# shared with NCCL's kernels. Overlapped compute slowed 18.9 % on average (max 40 %) in
# arXiv 2507.03114; on A100 SXM an overlapped all-gather slowed attention 1.8x and a GEMM 1.8x
# (nccl #1428). Over PCIe the traffic is an order of magnitude smaller and no source measures
# a slowdown: none is charged.
OVERLAP_SLOWDOWN = {"nvlink": 1.189, "pcie": 1.0}

# Whether ring attention's K,V exchange runs under the partial attention it is issued before.
# Without CUDA_DEVICE_MAX_CONNECTIONS set the exchange is partly serialized with the attention
# (ifromeast/AI_analysis #2), and on NVLink the attention kernel itself nearly doubles while an
# NCCL kernel shares the GPU (0.18 -> 0.33 ms on A100 SXM, nccl #1428): overlapping buys
# almost nothing there, so on NVLink the engine runs the exchange, then the attention. Over
# PCIe NCCL drives a peer with 2 channels (2 of the GPU's SMs; nccl paths.cc/search.cc logs in
# GPU-COMM.md section 4) and the attention keeps the rest: the exchange hides under it. This
# is a choice between the two ends the sources describe, not a fitted fraction; the published
# L20 ring rows (PCIe) agree with the overlap and the A100 ones (NVLink) with the serial end.
RING_EXCHANGE_OVERLAPS = {"nvlink": False, "pcie": True}
# ``--ring-overlap``: the link's default, or either end whatever the link (a runtime that sets
# CUDA_DEVICE_MAX_CONNECTIONS overlaps on NVLink too).
RING_OVERLAP_CHOICES = {"auto": None, "yes": True, "no": False}

# Default GPU per --link, as the planner's help says.
DEFAULT_GPU = {"pcie": "l40", "nvlink": "a100-sxm-80g"}


def get_gpu(name: str) -> GPU:
    """Look a GPU up by name; raises ``UserError`` listing the known names."""
    key = name.lower()
    if key not in GPUS:
        raise UserError(f"unknown GPU '{name}'; choose one of: {', '.join(GPUS)}")
    return GPUS[key]


def get_link(name: str) -> LinkKind:
    """Look a link kind up by name; raises ``UserError`` listing the known names."""
    key = name.lower()
    if key not in LINKS:
        raise UserError(f"unknown link kind '{name}'; choose one of: {', '.join(LINKS)}")
    return LINKS[key]
