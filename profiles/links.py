"""Measure point-to-point and collective times over message sizes: ``python -m profiles.links``.

Run under torchrun, one process per device (CPU processes with gloo, GPUs with NCCL)::

    torchrun --nproc_per_node 2 -m profiles.links --backend gloo
    torchrun --nproc_per_node 8 -m profiles.links --backend nccl --link-kind nvlink4

For each message size from ``--min-bytes`` (1 KiB) to ``--max-bytes`` (256 MiB) by factors of
``--factor`` it times:

- ``p2p``: a ping-pong between ranks 0 and 1; one way is half the round trip.
- ``all_reduce``, ``all_gather``, ``all_to_all`` over all ranks, ``nbytes`` being each rank's
  input, with the calls the executor makes (``all_to_all_single``, ``all_gather`` into a list);
  ``ring_kv``: ring attention's K,V rotation, ``world - 1`` rounds of ``batch_isend_irecv``
  (send ``nbytes`` to the next rank, receive as many from the previous). A call's time is the
  slowest rank's (each rank times its own call; the per-call maximum over ranks is kept), as a
  collective has finished only when every rank has.

With ``--busy`` the collectives are timed twice: idle (their plain names: a blocking call
waits with its rank idle) and busy, issued asynchronously and waited for (``<op>_async``:
an asynchronous collective overlaps the rank's compute, and on CPU processes sharing few
cores its transport threads compete with that compute). The engine costs each
``Collective`` of the schedule from the row of its name (``sim.engine.collective_call``).
On gloo the idle rows of ``--busy`` time the calls as the executor makes them: one call
per sample, after every rank ran the reference op (about 6 ms of DiT-like compute; not back
to back, which hides the transport's wake-up); and, as ``<op>_short``, per call of chains of
(0.7 ms of compute, call) less that compute alone, as a tiny model's Ulysses or
tensor-parallel block calls. The metadata's ``stretch_s`` holds both stretches' seconds, and
the engine interpolates between the two rows by the compute a run does between its calls
(``sim.cost.link_profile.collective_curves``).
``p2p`` stays timed with no compute thread under ``--busy`` (since 2026-12-02): the engine
charges a message's wire time (this row's fit) apart from the host time it costs the ranks
(``host_msg``), and a message on a run's critical path is one its receiver waits for, idle.
With a compute thread beside each ping-pong the two processes share the 2-core VM with four
busy threads, and the rows came out bimodal (0.1 or 1.5 ms at 256 KiB from one collection to
the next; the large-message fit's latency 0.01-1.8 ms over 20 collections) where PipeFusion's
messages took 0.34 ms at 128 KiB in a run, receiver waiting, host time included.

Each size: warm-up calls, then timed samples (at least ``--repeats``, more for fast sizes),
spread over interleaved passes over all sizes in shuffled orders (a slow spell of a shared
machine then touches every size alike instead of a few); ``--order ascending`` instead times
every kind of call at one size before the next, smallest first (``_collect``: on CPU
processes a call's long tail comes up more often once the process has moved large messages).
A sample is one call, or for calls under 2 ms a back-to-back run of calls lasting about 2 ms
divided by its length (single short calls mostly measure the wake-up jitter of processes that
share cores).
The median sample is kept with its spread, and the mean (``mean_s``), which the engine costs
collectives from: a run pays the sum of its calls, and on CPU processes that share cores a
call's time is long-tailed (a 64 KiB all_to_all on the 2-core VM: median 0.93 ms, mean 1.68
ms, the ninth decile 5 ms). Then, per op, ``time = latency + nbytes / bandwidth`` is fitted
(least absolute relative error) over a small-message and a large-message regime (the split
that fits best) and over all sizes.
Rank 0 writes the link profile (format: ``sim/cost/profile_format.py``, ``profiles/README.md``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiles.device import device_name, device_slug
from profiles.progress import progress_bar
from sim.cli import at_least, finite, parser, run_main
from sim.cost.interp import fit_regimes
from sim.cost.profile_format import HOST_OPS, SHORT_SUFFIX, LinkProfile, LinkSample
from sim.errors import UserError
from sim.hardware import LINKS
from sim.outputs import check_folder, check_writable, output_errors
from sim.schedule import OpKind, Tag
from sim.stats import nearest_rank

OPS = ("p2p", "all_reduce", "all_gather", "all_to_all", "ring_kv")
COLLECTIVES = OPS[1:]
KIB = 1024
INNER_S = 2e-3  # a timed sample lasts at least this long (seconds), see _measure
ORDERS = ("ascending", "shuffled")  # --order
MIB = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024**3  # --max-bytes beyond this is a typo, not a message to time
MAX_MIN_TIME_S = 3600.0  # --min-time per size: an hour already means days for a full sweep


@dataclass(frozen=True)
class LinkSettings:
    """What one link collection measures; sizes in bytes, times in seconds."""

    backend: str
    link_kind: str
    ops: tuple[str, ...]
    sizes: tuple[int, ...]
    repeats: int
    warmup: int
    min_total_s: float
    out: Path | None
    progress: bool
    passes: int = 3  # interleaved passes over all (op, size) pairs, sharing the repeats
    busy: bool = False  # a compute thread runs on every rank while collectives are timed
    order: str = "shuffled"  # passes over all sizes; "ascending": smallest size first
    host_rounds: int = 10  # HOST_ROUNDS: rounds of the host-time loop per size (--busy, gloo)


def parse_size(text: str) -> int:
    """Bytes from ``1024``, ``64KiB``, ``16MiB``, ``1GiB`` (also K, M, G)."""
    t = text.strip().lower().replace(" ", "")
    num, mult = t, 1
    for suffix, m in (("gib", 1024**3), ("mib", MIB), ("kib", KIB), ("g", 1024**3),
                      ("m", MIB), ("k", KIB), ("b", 1)):
        if t.endswith(suffix):
            num, mult = t[: -len(suffix)], m
            break
    try:
        value = float(num) * mult
    except ValueError:
        raise UserError(f"cannot read size '{text}' (use e.g. 1024, 64KiB, 256MiB)") from None
    # NaN fails both comparisons, and inf or 1e30 bytes is no message to allocate.
    if not 4 <= value <= MAX_MESSAGE_BYTES:
        raise UserError(f"message size must be between 4 bytes and "
                        f"{MAX_MESSAGE_BYTES // 1024**3} GiB, got '{text}'")
    return int(value)


def size_grid(lo: int, hi: int, factor: int) -> tuple[int, ...]:
    """``lo, lo*factor, ...`` up to ``hi`` (``hi`` included), each a multiple of 4 bytes."""
    out = []
    n = lo
    while n <= hi:
        out.append(n - n % 4)
        n *= factor
    if out[-1] != hi - hi % 4:
        out.append(hi - hi % 4)
    return tuple(out)


def parse(argv: list[str] | None) -> LinkSettings:
    """Parse the command line (raises ``UserError`` for bad input)."""
    ap = parser("python -m profiles.links", __doc__.split("\n\n")[0])
    ap.add_argument("--backend", required=True, choices=("gloo", "nccl"),
                    help="gloo (CPU processes) or nccl (GPUs)")
    ap.add_argument("--link-kind", help="registry link kind measured; unset: loopback for "
                    "gloo; required for nccl, e.g. nvlink4, pcie-gen4")
    ap.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)}")
    ap.add_argument("--min-bytes", default="1KiB", help="smallest message")
    ap.add_argument("--max-bytes", default="256MiB", help="largest message")
    ap.add_argument("--factor", type=int, default=2, help="size step factor")
    ap.add_argument("--repeats", type=int, default=5, help="least timed calls per size")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per size (at least "
                    "3: their median sizes the timed runs)")
    ap.add_argument("--min-time", type=float, default=0.2, help="keep timing a size until "
                    "this many seconds are spent (at most 40x --repeats calls)")
    ap.add_argument("--passes", type=int, default=3, help="interleaved passes over all sizes "
                    "in shuffled orders (--quick: 1)")
    ap.add_argument("--quick", action="store_true", help="up to 16 MiB by factors of 4, "
                    "3 repeats")
    ap.add_argument("--out", help="output CSV; unset: links_<backend>_<kind>_w<world>_"
                    "<device>.csv in the current folder")
    ap.add_argument("--busy", action="store_true",
                    help="time collectives idle first (plain names, as a blocking call "
                         "waits) and then with one compute thread busy on every rank, "
                         "issued asynchronously (<op>_async rows), as the executor's compute "
                         "overlaps them; p2p stays idle (a message on the critical path is "
                         "one its receiver waits for); on gloo also the host time per "
                         "message (host_msg, host_coll rows)")
    ap.add_argument("--order", choices=ORDERS, default="shuffled",
                    help="shuffled: the passes run over all sizes in shuffled orders; "
                         "ascending: every kind of call at one size, smallest size first, so "
                         "no sample follows a larger transfer (an experiment: see "
                         "profiles/README.md)")
    ap.add_argument("--host-rounds", type=int, default=HOST_ROUNDS,
                    help="rounds of the host-time loop per size (--busy on gloo), each timing "
                         f"{HOST_ITERS} iterations alone and in each layout; fewer when "
                         "several launches are pooled (profiles.pooled_links)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    kind = a.link_kind or ("loopback" if a.backend == "gloo" else None)
    if kind is None:
        raise UserError("--backend nccl needs --link-kind (the registry link the GPUs use, "
                        f"one of: {', '.join(LINKS)})")
    if kind not in LINKS:
        raise UserError(f"unknown --link-kind '{kind}'; choose one of: {', '.join(LINKS)}")
    ops = tuple(o.strip() for o in a.ops.split(",") if o.strip())
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise UserError(f"--ops must name some of {', '.join(OPS)}, got '{a.ops}'")
    lo, hi = parse_size(a.min_bytes), parse_size(a.max_bytes)
    if a.quick:
        hi = min(hi, 16 * MIB)
    if hi < lo:
        raise UserError(f"--max-bytes {hi} is below --min-bytes {lo}")
    factor = 4 if a.quick else a.factor
    at_least(factor, 2, "--factor")
    for flag, value, least in (("--repeats", a.repeats, 1), ("--passes", a.passes, 1),
                               ("--warmup", a.warmup, 0), ("--host-rounds", a.host_rounds, 1)):
        at_least(value, least, flag)
    finite(a.min_time, "--min-time", 0, MAX_MIN_TIME_S, " s")
    return LinkSettings(a.backend, kind, ops, size_grid(lo, hi, factor),
                        3 if a.quick else a.repeats, 1 if a.quick else a.warmup,
                        0.05 if a.quick else a.min_time, Path(a.out) if a.out else None,
                        not a.no_progress, 1 if a.quick else a.passes, a.busy, a.order,
                        a.host_rounds)


def bus_factor(op: str, world: int) -> float:
    """nccl-tests bus-bandwidth factor: what each link carries relative to ``nbytes``."""
    if op == "all_reduce":
        return 2.0 * (world - 1) / world
    if op in ("all_gather", "all_to_all"):
        return (world - 1) / world
    return 1.0


def _measure(s: LinkSettings, overlapped: bool = False, after_compute: str | None = None,
             bar: Any = None) -> tuple[list[LinkSample], dict]:
    """Time ``s.ops`` at ``s.sizes``; with ``overlapped`` the collectives are issued
    asynchronously and waited for, and their rows are named ``<op>_async``. With
    ``after_compute`` every sample is one call made as the executor makes a blocking one:
    after a barrier each rank runs a stretch of DiT-like compute, then calls; the sample runs
    from the last rank's call to the last rank's return (the engine starts a collective when
    its last member arrives); the stretch is the reference op (``"reference"``:
    ``_reference_op``, about 6 ms on one EPYC core). With ``"short"`` (rows named
    ``<op>_short``) a sample is a chain of ``CHAIN_CALLS`` iterations of (one layer of it on 64
    tokens, ``_short_op``, about 0.7 ms; one call) less the same stretches alone, per call: as
    a tiny model's Ulysses or tensor-parallel block calls, with what its compute loses after
    each call."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if s.backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    red_dev = dev  # NCCL reduces only CUDA tensors; gloo CPU ones

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run_op(op: str, n: int) -> tuple[Callable[[], object], float]:
        elems = n // 4
        x = torch.ones(elems, dtype=torch.float32, device=dev)
        if op == "p2p":
            buf = torch.empty_like(x)

            def ping() -> None:
                if rank == 0:
                    dist.send(x, 1)
                    dist.recv(buf, 1)
                elif rank == 1:
                    dist.recv(buf, 0)
                    dist.send(buf, 0)
                sync()
            return ping, 0.5  # one way is half the round trip
        if op == "ring_kv":
            nxt, prv = (rank + 1) % world, (rank - 1) % world
            bufs = [torch.empty_like(x) for _ in range(world - 1)]

            def rotate() -> None:
                send = x
                for buf in bufs:  # each round passes on what the last one brought
                    for w in dist.batch_isend_irecv([dist.P2POp(dist.isend, send, nxt),
                                                     dist.P2POp(dist.irecv, buf, prv)]):
                        w.wait()
                    send = buf
                sync()
            return rotate, 1.0

        def call(fn: Callable[..., object]) -> Callable[[], None]:
            if not overlapped:
                return lambda: (fn(), sync())
            return lambda: (fn(async_op=True).wait(), sync())

        if op == "all_reduce":
            return call(lambda **k: dist.all_reduce(x, **k)), 1.0
        if op == "all_gather":
            outs = [torch.empty_like(x) for _ in range(world)]
            return call(lambda **k: dist.all_gather(outs, x, **k)), 1.0
        out = torch.empty(elems - elems % world, dtype=x.dtype, device=dev)
        xa = x[: out.numel()]
        return call(lambda **k: dist.all_to_all_single(out, xa, **k)), 1.0

    before = {None: None, "reference": _reference_op, "short": _short_op}[after_compute]
    before = before() if before is not None else None
    chain = after_compute == "short"
    tasks = [(op, n) for op in s.ops for n in s.sizes]
    passes = max(1, s.passes)
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(len(tasks) * passes, f"links {s.backend} x{world}",
                           rank == 0 and s.progress, unit="size")
    inner_of: dict[tuple[str, int], int] = {}
    times_of: dict[tuple[str, int], list[float]] = {t: [] for t in tasks}
    per_pass = max(1, -(-s.repeats // passes))
    for p in range(passes):
        order = list(tasks)
        if passes > 1:  # same seed on every rank: all ranks walk the same order
            random.Random(1000 + p).shuffle(order)
        for op, n in order:
            bar.set_postfix_str(f"{op} {n} B")
            fn, mult = run_op(op, n)
            warm = []
            for _ in range(max(3, s.warmup) if p == 0 else 1):
                t0 = time.perf_counter()
                fn()
                warm.append(time.perf_counter() - t0)
            if before is not None:
                inner_of[(op, n)] = 1  # one call per sample, as the executor makes them
            if (op, n) not in inner_of:
                # Calls shorter than INNER_S are timed in back-to-back runs of ``inner`` calls
                # (the same count on every rank): one call of 50 us is dominated by the
                # wake-up jitter of processes that share cores; a run of them measures the
                # steady per-call time. The median warm-up call sizes the run (the first call
                # may also open the connection).
                est = torch.tensor([statistics.median_high(warm)], dtype=torch.float64,
                                   device=red_dev)
                dist.all_reduce(est, op=dist.ReduceOp.MAX)
                inner_of[(op, n)] = max(1, min(1000, int(INNER_S / max(float(est), 1e-7))))
            inner = inner_of[(op, n)]
            times: list[float] = []
            calls: list[tuple[float, float]] = []  # (start, end) of each call after compute
            cap = 40 * per_pass
            spent = 0.0  # seconds of timed calls (of chains, for ``chain``)
            while True:
                dist.barrier()
                if chain and before is not None:
                    # A chain of (short stretch, call), less the same stretches alone: the
                    # call, the wait for the other ranks and what the compute after it loses
                    # (caches, the transport's threads still on the core), as a block with
                    # several calls pays them.
                    t0 = time.perf_counter()
                    for _ in range(CHAIN_CALLS):
                        before()
                        fn()
                    t1 = time.perf_counter()
                    dist.barrier()
                    a0 = time.perf_counter()
                    for _ in range(CHAIN_CALLS):
                        before()
                    alone = time.perf_counter() - a0
                    # A chain that ran no longer than its stretches alone (the noise of
                    # processes sharing cores) counts as a call of CHAIN_FLOOR_S: a call is
                    # never free, and a profile's times must be positive.
                    times.append(max(CHAIN_FLOOR_S, ((t1 - t0) - alone) / CHAIN_CALLS))
                    spent += t1 - t0
                else:
                    if before is not None:
                        before()
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        fn()
                    t1 = time.perf_counter()
                    times.append((t1 - t0) * mult / inner)
                    calls.append((t0, t1))
                    spent += (t1 - t0) * mult
                # All ranks must agree on when to stop: decide on the slowest rank's total.
                flag = torch.tensor([spent], dtype=torch.float64, device=red_dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                enough = len(times) >= per_pass and float(flag) >= s.min_total_s / passes
                if enough or len(times) >= cap:
                    break
            if before is not None and not chain:
                # perf_counter is the host's monotonic clock, shared by the ranks of one host:
                # the last start and the last end over the ranks bound the call's own time.
                t = torch.tensor(calls, dtype=torch.float64, device=red_dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                times_of[(op, n)].extend((t[:, 1] - t[:, 0]).cpu().tolist())
            else:
                t = torch.tensor(times, dtype=torch.float64, device=red_dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)  # done when all ranks are
                times_of[(op, n)].extend(t.cpu().tolist())
            del fn
            bar.update(1)
    if own_bar:
        bar.close()
    samples: list[LinkSample] = []
    for op, n in tasks:
        xs = sorted(times_of[(op, n)])
        med = statistics.median(xs)
        algbw = n / med
        # Nearest-rank quartiles (not interpolated), as the shipped link profiles hold.
        name = op + OpKind.ASYNC_SUFFIX if overlapped and op in COLLECTIVES else op
        if after_compute == "short":
            name = op + SHORT_SUFFIX
        samples.append(LinkSample(name, world if op != "p2p" else 2, n, len(xs), med, xs[0],
                                  nearest_rank(xs, 0.25), nearest_rank(xs, 0.75), xs[-1], algbw,
                                  algbw * bus_factor(op, world), statistics.fmean(xs)))
    hosts: list = [None] * world
    dist.all_gather_object(hosts, socket.gethostname())
    info = {"world_size": world, "nodes": len(set(hosts)),
            "device": dev.type,
            "device_name": device_name("cuda" if dev.type == "cuda" else "cpu"),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    return samples, info


def _busy_thread() -> Callable[[], None]:
    """Start a thread that keeps computing (torch matmuls, which release the GIL) until the
    returned function is called."""
    import torch

    done = threading.Event()
    a = torch.randn(256, 256)

    def spin() -> None:
        while not done.is_set():
            torch.mm(a, a)

    t = threading.Thread(target=spin, daemon=True)
    t.start()

    def stop() -> None:
        done.set()
        t.join()

    return stop


HOST_SIZES = (4 * 1024, 32 * 1024, 256 * 1024, 2 * MIB)  # bytes per message
HOST_ROUNDS = 10  # alternating rounds with and without messages (drift hits both alike); the
# means charged are long-tailed, so twice the rounds of the first (median) version
HOST_ITERS = 40  # loop iterations per round
CHAIN_CALLS = 5  # (short stretch, call) iterations per sample of the <op>_short rows
CHAIN_FLOOR_S = 1e-6  # seconds: the least a chain's call is counted (see _measure)


def dit_layers(layers: int, tokens: int) -> Callable[[], None]:
    """``layers`` pre-norm transformer layers (width 128, 2 heads, batch 2) on ``tokens``
    tokens in plain torch, as a callable."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    b, n, h, heads = 2, tokens, 128, 2
    x0 = torch.randn(b, n, h, generator=g)
    weights = [(torch.randn(3 * h, h, generator=g) / h ** 0.5,
                torch.randn(h, h, generator=g) / h ** 0.5,
                torch.randn(4 * h, h, generator=g) / h ** 0.5,
                torch.randn(h, 4 * h, generator=g) / (4 * h) ** 0.5) for _ in range(layers)]

    def run() -> None:
        x = x0
        with torch.inference_mode():
            for qkv_w, o_w, up_w, down_w in weights:
                y = F.layer_norm(x, (h,))
                q, k, v = F.linear(y, qkv_w).view(b, n, 3, heads, h // heads).unbind(2)
                a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                   v.transpose(1, 2))
                x = x + F.linear(a.transpose(1, 2).reshape(b, n, h), o_w)
                y = F.layer_norm(x, (h,))
                x = x + F.linear(F.gelu(F.linear(y, up_w)), down_w)

    return run


def _short_op() -> Callable[[], None]:
    """One layer of the reference op on 64 tokens: about 0.7 ms on one core of the 2-core
    EPYC VM (2026-12-01), the compute a tiny model's Ulysses or tensor-parallel block does
    between two of its blocking calls (0.3-0.7 ms for pixart-tiny, sd3-tiny, flux-tiny)."""
    return dit_layers(1, 64)


def _reference_op() -> Callable[[], None]:
    """A fixed stand-in for a stage's compute between messages: two pre-norm transformer
    layers (width 128, 2 heads, 256 tokens, batch 2) in plain torch: about 0.47 GFLOP, 5.5-6.5
    ms on one core of the 2-core EPYC VM (2026-12-01; earlier text said a millisecond, which
    it never was there). Its Python-level op mix is that of a DiT block, so messages disturb
    it as they disturb the executor's blocks (transport threads taking the core, caches
    refilled)."""
    return dit_layers(2, 256)


def per_message_seconds(alone: list[list[float]], streaming: list[list[float]]
                        ) -> list[float]:
    """Host seconds one message costs each endpoint, from one rank's iteration times (s) of
    the host-time loop, per round without messages (``alone``) and with them
    (``streaming``): first the difference of the medians over every iteration, then per
    round the difference of that round's means; each halved, as an iteration sends one
    message and takes one (``_host_overhead``)."""
    every = [t for r in alone for t in r], [t for r in streaming for t in r]
    return [(statistics.median(every[1]) - statistics.median(every[0])) / 2,
            *((statistics.fmean(s) - statistics.fmean(a)) / 2
              for a, s in zip(alone, streaming, strict=True))]


def _host_overhead(sizes: tuple[int, ...] = HOST_SIZES, rounds: int = HOST_ROUNDS
                   ) -> list[LinkSample]:
    """Host time one message costs its sender and its receiver (seconds), on CPU ranks.

    Every rank runs the reference op in a loop, alone and then streaming: after each op it
    sends a message to the next rank and takes the one the previous rank sent an iteration
    earlier, through the executor's own message layer (``executor.comm``: isend, receives
    posted ahead, watcher threads). The message is long there when it is taken, so the wire
    latency is hidden, as in a pipeline's steady state; what remains is the CPU the transport
    takes from the loop: issuing, posting, completing, the transport threads preempting the
    compute thread, and the caches the op refills after them. Per message endpoint, in
    ``mean_s`` (which the engine charges): per round, the difference of the means of the
    loop's iteration time with and without messages, halved (each iteration sends one message
    and takes one) and averaged over ranks; of the rounds, the median. The mean within a round
    because a run pays the sum of its messages and the disturbance is long-tailed (a transport
    thread now and then taking the core for milliseconds); the median over rounds because a
    round (``HOST_ITERS`` messages) is a sum as a run is, and validation scores the median
    run: the grand mean over all rounds let one stall of a few milliseconds in one round set
    the figure (on the 2-core EPYC VM, 2026-12-01, six collections of four rounds at 16 KiB:
    grand means 0.49-1.41 ms, medians of round means 0.43-0.83 ms, one round 4.2 ms). The
    difference of the medians over all iterations is kept beside it (``median_s``).

    Two layouts, each timed in every round (their order alternating, so drift hits both
    alike), give two rows per size:

    - ``host_msg``: as PipeFusion's messages travel in the executor, each direction on its
      own process group (hidden states forward on one, the latents from the last rank back
      to the first on another: the groups of ``executor.runtime.process_groups`` itself), so
      each on its own connection;
    - ``host_coll``: both directions on one group, as an asynchronous collective's messages
      travel (the ring's K,V rotation by ``batch_isend_irecv``, DistriFusion's gathers:
      ``executor.collectives``).

    They can differ: on the 2-core EPYC VM (2026-12-01, pixart-tiny's block as the op, 16
    KiB) one group cost 0.50-0.56 ms per message at the mean, the split layout 0.32-0.38 ms
    in five runs of six (medians 0.18-0.27 ms in both). Before the two rows, ``host_msg``
    was timed on one group and charged to PipeFusion's messages too."""
    import torch
    import torch.distributed as dist

    from executor.comm import Comm
    from executor.runtime import process_groups

    rank, world = dist.get_rank(), dist.get_world_size()
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    op = _reference_op()
    for _ in range(5):
        op()
    origin = time.perf_counter()
    cpu = torch.device("cpu")
    # The executor's own groups (created once per process, so the ascending order's one call
    # per size reuses them).
    fwd, back, _ = process_groups(rank, world, cpu, 300.0)
    clock = lambda: time.perf_counter() - origin  # noqa: E731
    # (row, message layer, what this rank sends, what it takes): on separate groups a
    # latent goes back from the last rank to the first, hidden states go forward elsewhere.
    layouts = [("host_msg", Comm(rank, 1, 1, 300.0, clock, cpu, fwd=fwd, back=back),
                "latent" if rank == world - 1 else "hidden",
                "latent" if rank == 0 else "hidden"),
               ("host_coll", Comm(rank, 1, 1, 300.0, clock, cpu, fwd=None, back=None),
                "hidden", "hidden")]
    samples = []
    serial = 0

    def stream(comm: Comm, sends: str, takes: str, msg: torch.Tensor) -> list[float]:
        nonlocal serial
        out = [Tag(sends, serial + i, 0, -1) for i in range(HOST_ITERS + 1)]
        into = [Tag(takes, serial + i, 0, -1) for i in range(HOST_ITERS + 1)]
        serial += HOST_ITERS + 1
        times = []
        comm.post_recv(prv, into[0], tuple(msg.shape), msg.dtype)
        comm.post_recv(prv, into[1], tuple(msg.shape), msg.dtype)
        comm.isend(nxt, out[0], msg)
        for i in range(1, HOST_ITERS + 1):
            t0 = time.perf_counter()
            op()
            comm.isend(nxt, out[i], msg)
            comm.wait_recv(into[i - 1])
            if i + 1 <= HOST_ITERS:
                comm.post_recv(prv, into[i + 1], tuple(msg.shape), msg.dtype)
            times.append(time.perf_counter() - t0)
        comm.wait_recv(into[HOST_ITERS])
        comm.wait_sends()
        return times

    try:
        for n in sizes:
            msg = torch.ones(n // 4)
            alone: list[list[float]] = []  # per round, the iterations' seconds
            streaming: dict[str, list[list[float]]] = {name: [] for name, *_ in layouts}
            for r in range(rounds):
                dist.barrier()
                alone.append([])
                for _ in range(HOST_ITERS):
                    t0 = time.perf_counter()
                    op()
                    alone[-1].append(time.perf_counter() - t0)
                for name, comm, sends, takes in (layouts if r % 2 == 0 else layouts[::-1]):
                    dist.barrier()
                    streaming[name].append(stream(comm, sends, takes, msg))
            for name, times in streaming.items():
                t = torch.tensor(per_message_seconds(alone, times), dtype=torch.float64)
                dist.all_reduce(t)
                med, *by_round = (float(x) / world for x in t)
                samples.append(LinkSample(name, world, n, len(times) * HOST_ITERS, med, med,
                                          med, med, med, 0.0, 0.0,
                                          statistics.median(by_round)))
    finally:
        for _, comm, *_ in layouts:
            comm.close()
    return samples


def collect_links(s: LinkSettings) -> LinkProfile | None:
    """Measure under an initialised or torchrun-provided process group; returns the profile
    on rank 0 and ``None`` elsewhere."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        raise UserError("run under torchrun, e.g. torchrun --nproc_per_node 2 -m profiles."
                        "links --backend gloo")
    own = not dist.is_initialized()
    if own:
        if s.backend == "nccl":
            import torch

            if not torch.cuda.is_available():
                raise UserError("--backend nccl but torch sees no CUDA device; use gloo")
        dist.init_process_group(s.backend)
    try:
        if dist.get_world_size() < 2:
            raise UserError("link profiles need at least 2 processes (torchrun "
                            "--nproc_per_node 2 ...)")
        started = time.perf_counter()
        samples, info = _collect(s)
        rank = dist.get_rank()
    finally:
        if own:
            dist.destroy_process_group()
    if rank != 0:
        return None
    return _profile(s, samples, info, started)


def _collect(s: LinkSettings) -> tuple[list[LinkSample], dict]:
    """Every row of the collection, in groups of sizes: per group the blocking collectives
    (idle, after compute; ``--busy`` only), then the ping-pong (``p2p``, never beside the
    busy thread), then with the busy thread the other rows of ``--ops`` (collectives
    asynchronous), then the host time per message (``--busy`` on gloo).
    ``--order shuffled``: one group of every size, the host time at ``HOST_SIZES`` last.
    ``--order ascending``: one group per size, smallest first, the host time at its size.

    Why the blocking collectives are timed after compute: no compute runs during the call. On
    CPU processes (gloo, one host) each is timed one call at a time after every rank
    computed, as the executor calls them between a block's parts: back to back, a 64 KiB
    all_to_all took a third of the time the same call took inside a Ulysses run (sd3-tiny and
    flux-tiny, 2-core Xeon VM), whose transport threads had gone idle during the compute and
    whose ranks arrive at different moments.

    Why the ascending order exists: on the 2-core EPYC VM a gloo call's long tail (a few
    milliseconds now and then, the transport's threads waiting for a core) grows more
    frequent once the process has moved large messages, and stays so for seconds. With sizes
    up to 16 MiB interleaved, a 64 KiB all_to_all after compute averaged 1.3-1.8 ms (median
    0.37 ms); timed among sizes up to 256 KiB only, 0.40-0.61 ms, near what a pixart-tiny
    256 px Ulysses run paid per call (0.45-0.63 ms). A run that moves only small messages has
    not moved large ones either; there each sample follows transfers no larger than its own,
    and every size still gets ``passes`` interleaved passes over its kinds of call.

    Why it is not the default: two quick validation grids and one MM-DiT grid collected that
    way (2026-11-30, EPYC VM) took the tiny models' worst rows from +51-124 % (Ulysses) to
    within 19 %, but left every Ulysses row short (by 6-19 %, pixart-small and sd3/flux-small
    too) and the grid's median a point worse: runs pay a tail rate between the two
    orders'."""
    import torch.distributed as dist

    world = dist.get_world_size()
    idle = tuple(op for op in s.ops if op in COLLECTIVES) if s.busy else ()
    host_sizes = HOST_SIZES if s.busy and s.backend == "gloo" else ()
    if s.order == "ascending":
        groups = [((n,) if n in s.sizes else (), (n,) if n in host_sizes else ())
                  for n in sorted(set(s.sizes) | set(host_sizes))]
    else:
        groups = [(s.sizes, host_sizes)]
    # (Not the ring's rotation: ring attention issues it asynchronously.)
    short = tuple(op for op in idle if op != OpKind.RING_KV) if s.backend == "gloo" else ()
    # The ping-pong is timed with no compute thread (module docstring), the rest of --ops
    # with it.
    quiet = ("p2p",) if s.busy and "p2p" in s.ops else ()
    rest = tuple(op for op in s.ops if op not in quiet)
    kinds = len(idle) + len(short) + len(s.ops)
    bar = progress_bar(kinds * len(s.sizes) * max(1, s.passes), f"links {s.backend} x{world}",
                       dist.get_rank() == 0 and s.progress, unit="size")
    samples: list[LinkSample] = []
    info: dict = {}
    try:
        for sizes, hosts in groups:
            if sizes:
                group = dataclasses.replace(s, sizes=sizes)
                if idle:
                    idle_s = dataclasses.replace(group, ops=idle, busy=False)
                    cpu = s.backend == "gloo"
                    more, info = _measure(idle_s, after_compute="reference" if cpu else None,
                                          bar=bar)
                    samples += more
                    if short:  # and between short stretches, as a tiny model's block calls
                        more, _ = _measure(dataclasses.replace(idle_s, ops=short),
                                           after_compute="short", bar=bar)
                        samples += more
                if quiet:
                    more, info = _measure(dataclasses.replace(group, ops=quiet, busy=False),
                                          bar=bar)
                    samples += more
                if rest:
                    stop = _busy_thread() if s.busy else None
                    try:
                        more, info = _measure(dataclasses.replace(group, ops=rest),
                                              overlapped=s.busy, bar=bar)
                        samples += more
                    finally:
                        if stop is not None:
                            stop()
            if hosts:
                samples += _host_overhead(hosts, s.host_rounds)
    finally:
        bar.close()
    # Rows by kind (blocking collectives, the other rows of --ops, host time), each by
    # size, whatever the order they were timed in.
    names = [*idle, *(op + SHORT_SUFFIX for op in short),
             *(op + OpKind.ASYNC_SUFFIX if s.busy and op in COLLECTIVES else op
               for op in s.ops), *HOST_OPS]
    samples.sort(key=lambda x: (names.index(x.op), x.nbytes))
    if short:
        info = dict(info, stretch_s=_stretch_seconds())
    return samples, info


def _stretch_seconds() -> dict[str, float]:
    """The median seconds of the two stretches blocking collectives are timed after
    (``reference``, ``short``), each over 15 calls, averaged over the ranks: the engine
    interpolates between the two rows by the compute a run does between its calls."""
    import torch
    import torch.distributed as dist

    out = {}
    for name, make in (("reference", _reference_op), ("short", _short_op)):
        op = make()
        for _ in range(3):
            op()
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
        t = torch.tensor([statistics.median(times)], dtype=torch.float64)
        dist.all_reduce(t)
        out[name] = float(t) / dist.get_world_size()
    return out


def _profile(s: LinkSettings, samples: list[LinkSample], info: dict, started: float
             ) -> LinkProfile:
    """The link profile of a collection: its samples, per-op fits and metadata."""
    fits = {}
    for op in dict.fromkeys(x.op for x in samples if x.op not in HOST_OPS):
        pts = [x for x in samples if x.op == op]
        fits[op] = fit_regimes([x.nbytes for x in pts], [x.median_s for x in pts], robust=True)
    meta = {
        "backend": s.backend, "link_kind": s.link_kind, **info, "busy": s.busy,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sizes": list(s.sizes), "repeats": s.repeats, "warmup": s.warmup,
        "min_total_s": s.min_total_s, "inner_s": INNER_S, "passes": s.passes,
        "order": s.order,
        **({"host_rounds": s.host_rounds,
            "host_stat": "mean_s of host rows: median over rounds of the round's difference "
                         "of means"} if s.busy and s.backend == "gloo" else {}),
        "timing": "time.perf_counter around each sample after a barrier (CUDA synchronised "
                  "after each call); a sample is one call or a run of calls lasting inner_s, "
                  "divided by its length; max over ranks per sample; p2p = half a ping-pong "
                  "round trip" + (", no compute thread running" if s.busy else "")
                  + ("; blocking collectives (rows without _async): one call per sample "
                     "after each rank ran the reference op, from the last rank's call to "
                     "the last rank's return; <op>_short rows: per call of chains of (short "
                     "stretch, call) less the stretches alone (stretch_s)"
                     if s.busy and s.backend == "gloo" else ""),
        "fits": fits, "fit_model": "time_s = latency_s + nbytes / bandwidth_Bps, least "
                                   "absolute relative error (robust to sizes caught in a slow "
                                   "mode); rms_rel_err reports the scatter",
        "units": "seconds, bytes, bytes/s",
        "collect_s": round(time.perf_counter() - started, 2),
        "command": "torchrun ... -m profiles.links " + " ".join(sys.argv[1:]),
    }
    return LinkProfile(meta, samples)


def default_out(prof: LinkProfile) -> Path:
    """``links_<backend>_<kind>_w<world>[_busy]_<device>.csv`` in the current folder."""
    m = prof.meta
    dev = device_slug(m["device"], m["device_name"], m["threads"])
    busy = "_busy" if m.get("busy") else ""
    return Path.cwd() / (f"links_{m['backend']}_{m['link_kind']}_w{m['world_size']}{busy}_"
                       f"{dev}.csv")


def main(argv: list[str] | None = None) -> int:
    """Measure and write the link profile on rank 0; returns the exit status (bad input
    raises ``UserError`` on rank 0 and returns 2 quietly elsewhere)."""
    try:
        s = parse(argv)
        # Checked on every rank (they share the host), before the timing, not after it.
        if s.out is not None:
            check_writable(s.out, "--out", make_folders=True)
        else:
            check_folder(Path.cwd(), "--out (default: the current folder)")
        prof = collect_links(s)
    except UserError:
        if os.environ.get("RANK", "0") != "0":
            return 2  # every rank sees the same bad input: rank 0 alone reports it
        raise
    if prof is None:
        return 0
    path = s.out or default_out(prof)
    with output_errors("--out", path):
        prof.write(path)  # atomically: a full disk leaves no truncated profile
    p2p = prof.fit("p2p") if "p2p" in s.ops else None
    extra = (f"; p2p {p2p.latency_s * 1e6:.1f} us + {p2p.bandwidth_Bps / 1e9:.2f} GB/s"
             if p2p else "")
    print(f"wrote {path}: {len(prof.samples)} sizes in {prof.meta['collect_s']} s{extra}")
    return 0


if __name__ == "__main__":
    run_main(main)
