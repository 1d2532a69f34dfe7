"""Cost model from measured profiles.

``ProfileCost`` implements the ``CostModel`` protocol of ``sim.cost`` from a compute profile
(``profiles/data/*.csv``, collected by ``python -m profiles.collect``). Each op's time has a
source:

- ``measured``: the shape was measured; its median.
- ``interpolated``: inside the measured range. A PipeFusion patch (q < kv) at a profiled kv
  interpolates that kv's measured blocks along q, monotone and in log-log space; at a kv
  between two profiled ones, each neighbour's curve is moved to kv by the attention term
  (a monotone log-log fit of the measured attention core against q·kv, scaled by how much
  more attention costs inside a block, fitted from blocks measured at one q and several kv)
  and the two are blended in log kv. A full image (q = kv) interpolates the measured
  full-image blocks over n = q = kv. Embedding, final layer and scheduler step interpolate in
  log-log space over their tokens.
- ``roofline``: outside the measured range, or an op never measured (text encoder, VAE):
  ``sim.cost.RooflineCost`` scaled by the efficiency the profile implies, the ratio of
  measured to roofline time at the nearest measured shape (for unmeasured ops, at the most
  compute-bound measured block), so the two meet at the edge of the range. Each fallback
  leaves a line in ``notes``.

Batch: a patch of batch ``b`` on ``q`` tokens costs like the profile's batch ``B`` on
``q·b/B`` tokens (the same GEMM rows and attention pairs); a full image scales by ``b/B``.

Imports no torch: the loader and interpolation live in ``sim.cost.profile_format`` and
``sim.cost.interp``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sim.config import Workload
from sim.cost.base import SOURCES
from sim.cost.interp import MonotoneLogLog
from sim.cost.profile_format import ComputeProfile, Sample
from sim.cost.roofline import RooflineCost
from sim.errors import UserError
from sim.hardware import GPU
from sim.schedule import Compute, OpKind

TOKEN_OPS = {"embed": "embed", "final": "final", "scheduler_step": "scheduler_step",
             "condition": "condition"}
_REL = 1e-9


def _worst(a: str, b: str) -> str:
    return a if SOURCES.index(a) >= SOURCES.index(b) else b


@dataclass
class _BlockTable:
    """Measured blocks of one family at batch ``batch``, in two regimes: PipeFusion patches
    (q < kv) attend over the stale K,V buffer, full-image calls (q = kv) over fresh K,V."""

    batch: int
    exact: dict[tuple[int, int], float]
    levels: dict[int, MonotoneLogLog]  # kv -> patch-block seconds over q (q < kv samples)
    full: MonotoneLogLog | None  # full-image block seconds over n = q = kv
    attention: MonotoneLogLog | None  # standalone attention core seconds over q·kv, q < kv
    attention_scale: float  # in-block / standalone attention cost (see _attention_scale)
    tokens: MonotoneLogLog | None  # patch block less its in-block attention, seconds over q
    samples: list[Sample]


class ProfileCost:
    """Compute-op durations (seconds) for ``wl`` from a measured profile, with the roofline of
    ``gpu`` as the fallback outside the measured range; ``scale`` multiplies every time (1.0
    unless calibrating, as for ``RooflineCost``); ``notes`` join the notes it reports."""

    def __init__(self, wl: Workload, gpu: GPU, profile: ComputeProfile | str | Path,
                 scale: float = 1.0, notes: Iterable[str] = ()) -> None:
        if isinstance(profile, ComputeProfile):
            prof = profile
            prof.check()  # built in memory: validated here as read() validates a file
        else:
            prof = ComputeProfile.read(profile)
        where = prof.path or "the profile"
        if prof.model != wl.model.name:
            raise UserError(f"{where} was measured for model {prof.model}, not "
                            f"{wl.model.name}; collect one with python -m profiles.collect "
                            f"--model {wl.model.name}")
        if prof.dtype != wl.dtype:
            raise UserError(f"{where} was measured in {prof.dtype}, the workload runs "
                            f"{wl.dtype}; pass --dtype {prof.dtype} or collect a {wl.dtype} "
                            f"profile")
        self.wl = wl
        self.model = wl.model
        self.gpu = gpu
        self.profile = prof
        self.scale = scale
        self.roof = RooflineCost(wl, gpu)
        self.notes: set[str] = set(notes)  # e.g. speed_check's, from the command line
        other = other_host(prof.meta)
        if other:
            self.notes.add(other)
        self._cache: dict[tuple, tuple[float, str]] = {}
        self._blocks: dict[str, _BlockTable] = {}
        # Tensor-parallel shards measured as such (block rows with heads/T heads), per
        # (block kind, T).
        self._shards: dict[tuple[str, int], _BlockTable] = {}
        for variant in sorted({s.variant for s in prof.select("block")}):
            # The whole block has the most heads: the collector times shards besides it.
            heads = sorted({s.heads for s in prof.select("block", variant)})
            self._blocks[variant] = self._block_table(variant, heads[-1])
            for h in heads[:-1]:
                if heads[-1] % h == 0:
                    self._shards[(variant, heads[-1] // h)] = self._block_table(variant, h)
        self._tokens: dict[str, tuple[MonotoneLogLog, dict[tuple[int, int], float], int]] = {}
        for op in TOKEN_OPS.values():
            samples = prof.select(op)
            if samples:
                batch = samples[0].batch
                mine = [s for s in samples if s.batch == batch]
                fn = MonotoneLogLog([s.q_tokens for s in mine], [s.median_s for s in mine])
                exact = _pooled_exact(mine)
                self._tokens[op] = (fn, exact, batch)

    # ---- tables -------------------------------------------------------------------------
    def _block_table(self, variant: str, heads: int) -> _BlockTable:
        samples = [s for s in self.profile.select("block", variant) if s.heads == heads]
        batch = max(Counter(s.batch for s in samples).items(), key=lambda kv: kv[1])[0]
        samples = [s for s in samples if s.batch == batch]
        patches = [s for s in samples if s.q_tokens < s.kv_tokens]
        fulls = [s for s in samples if s.q_tokens == s.kv_tokens]
        by_kv: dict[int, list[Sample]] = {}
        for s in patches:
            by_kv.setdefault(s.kv_tokens, []).append(s)
        levels = {kv: MonotoneLogLog([s.q_tokens for s in ss], [s.median_s for s in ss])
                  for kv, ss in by_kv.items()}
        full = (MonotoneLogLog([s.kv_tokens for s in fulls], [s.median_s for s in fulls])
                if fulls else None)
        att = [s for s in self.profile.select("attention") if s.batch == batch
               and s.heads == self.model.heads and s.q_tokens < s.kv_tokens]
        attention = (MonotoneLogLog([s.q_tokens * s.kv_tokens for s in att],
                                    [s.median_s for s in att]) if att else None)
        usable = []  # (q, block seconds, standalone attention seconds)
        if attention is not None:
            usable = [(s.q_tokens, s.median_s, attention(s.q_tokens * s.kv_tokens))
                      for s in patches if attention.contains(s.q_tokens * s.kv_tokens)]
        scale = _attention_scale(usable)
        # The token-level part of every patch block: its time less its in-block attention.
        pts = [(q, t - scale * a) for q, t, a in usable if t > scale * a]
        tokens = MonotoneLogLog([p[0] for p in pts], [p[1] for p in pts]) if pts else None
        return _BlockTable(batch, _pooled_exact(samples), levels, full, attention, scale,
                           tokens, samples)

    # ---- CostModel protocol -------------------------------------------------------------
    def compute_time(self, op: Compute) -> float:
        """Seconds of ``op``."""
        return self.estimate(op)[0]

    def source(self, op: Compute) -> str:
        """``measured``, ``interpolated`` or ``roofline``: where ``op``'s time came from."""
        return self.estimate(op)[1]

    def estimate(self, op: Compute) -> tuple[float, str]:
        """(seconds, source) of ``op``; cached, since pipelines repeat shapes many times."""
        key = (op.kind, op.layers, op.q_tokens, op.kv_tokens, op.batch, op.part, op.shard)
        hit = self._cache.get(key)
        if hit is None:
            t, src = self._estimate(op)
            hit = self._cache[key] = (t * self.scale, src)
        return hit

    def _estimate(self, op: Compute) -> tuple[float, str]:
        if op.kind == OpKind.BLOCKS:
            total, src = 0.0, "measured"
            for i in range(op.layers[0], op.layers[1] + 1):
                t, s = self._shard_time(i, op) if op.shard > 1 else \
                    self.block_time(i, op.q_tokens, op.kv_tokens, op.batch)
                total += t
                src = _worst(src, s)
            if op.part != "all":
                # Sequence/tensor-parallel pieces of a block (projections or attention core)
                # were not profiled: split the block in the proportions of the roofline's
                # pieces at the shard's own shape.
                roof = self.roof
                part = roof.compute_time(op)
                whole = roof.compute_time(Compute("blocks", op.step, op.patch, op.layers,
                                                  op.q_tokens, op.kv_tokens, op.batch,
                                                  shard=op.shard))
                return total * part / whole, _worst(src, "interpolated")
            return total, src
        if op.kind == OpKind.CONDITION and "condition" in self._tokens:
            # Independent of the image: the median over the profiled resolutions.
            _, exact, _ = self._tokens["condition"]
            vals = sorted(exact.values())
            return vals[len(vals) // 2], "measured"
        if op.kind in TOKEN_OPS and TOKEN_OPS[op.kind] in self._tokens:
            return self._token_op(op)
        # Never measured (text encoder, VAE decode, or an op missing from this profile): the
        # roofline at the efficiency the most compute-bound measured block achieved.
        t = self.roof.compute_time(op)
        if t == 0.0:
            return 0.0, "roofline"
        ratio, what = self._reference_ratio()
        self.notes.add(f"{op.kind}: not in the profile; roofline x {ratio:.3g} ({what})")
        return t * ratio, "roofline"

    # ---- blocks ---------------------------------------------------------------------------
    def _shard_time(self, index: int, op: Compute) -> tuple[float, str]:
        """(seconds, source) of block ``index`` cut to one rank's tensor-parallel share
        (``op.shard`` ranks): from the shard's own measurements where the profile has them
        (``profiles.collect --tensor-shards``) and ``op`` lies inside them; otherwise as the
        whole block on 1/shard of the query rows, which does the shard's GEMM and attention
        work and whose measured time carries the lower efficiency of smaller GEMMs (on the
        2-core Xeon VM half a block's work takes 0.6-0.7 of its time, not 0.5), though not
        that of the shard's narrower GEMMs and fewer heads: a pixart-small shard of 2 ran
        about 1.25 times that estimate in the 2026-11-30 validation runs."""
        table = self._shards.get((self.model.block_kind(index), op.shard))
        if table is not None:
            hit = self._from_table(table, op.q_tokens, op.kv_tokens, op.batch)
            if hit is not None:
                return hit
        t, src = self.block_time(index, max(1, round(op.q_tokens / op.shard)), op.kv_tokens,
                                 op.batch)
        return t, _worst(src, "interpolated")

    def block_time(self, index: int, q: int, kv: int, batch: int) -> tuple[float, str]:
        """(seconds, source) of block ``index`` on ``q`` query tokens over ``kv`` tokens."""
        kind = self.model.block_kind(index)
        table = self._blocks.get(kind)
        if table is None:
            t = self.roof.block_time(index, q, kv, batch)
            ratio, what = self._reference_ratio()
            self.notes.add(f"blocks: no {kind} blocks in the profile; roofline x {ratio:.3g} "
                           f"({what})")
            return t * ratio, "roofline"
        hit = self._from_table(table, q, kv, batch)
        if hit is not None:
            return hit
        qe = q * batch / table.batch
        # Outside: roofline scaled at the nearest measured shape (log distance in q and kv).
        near = min(table.samples, key=lambda s: math.hypot(math.log(s.q_tokens / qe),
                                                           math.log(s.kv_tokens / kv)))
        ratio = near.median_s / self.roof.block_time(index, near.q_tokens, near.kv_tokens,
                                                     near.batch)
        self.notes.add(f"blocks: q={q} kv={kv} batch={batch} outside the measured range "
                       f"({self._range_text(table)}); roofline x {ratio:.3g} from the measured "
                       f"q={near.q_tokens} kv={near.kv_tokens}")
        return self.roof.block_time(index, q, kv, batch) * ratio, "roofline"

    def _from_table(self, table: _BlockTable, q: int, kv: int, batch: int
                    ) -> tuple[float, str] | None:
        """(seconds, source) of a block at (q, kv, batch) from ``table``: its measurement at
        that shape, else interpolated inside its measured range; None outside it."""
        if batch == table.batch and (q, kv) in table.exact:
            return table.exact[(q, kv)], "measured"
        t = self._interpolate_block(table, q, kv, batch)
        return None if t is None else (t, "interpolated")

    def _interpolate_block(self, table: _BlockTable, q: int, kv: int, batch: int
                           ) -> float | None:
        """Block seconds at (q, kv, batch) inside the measured range, or ``None`` outside it.

        Full image (q = kv): the measured full blocks interpolated over n = q = kv, scaled by
        batch. Patch: the measured patch blocks of its kv interpolated along q (batch folded
        into q), or those of the neighbouring kv shifted by the attention fit; failing that
        (a q no kv level spans), the token-level part at q plus the attention at q·kv."""
        qe = q * batch / table.batch
        if q >= kv:
            if batch < table.batch:
                # Fewer images than profiled (a CFG half): the same GEMM rows and attention
                # pairs as a patch of q·b/B tokens over the whole image, whose measured time
                # holds the lower efficiency of the smaller GEMMs that a linear scaling of
                # the full image misses.
                t = self._from_levels(table, qe, kv)
                if t is not None:
                    return t
            if table.full is None or not table.full.contains(kv):
                return None
            return table.full(kv) * batch / table.batch
        t = self._from_levels(table, qe, kv)
        if t is not None:
            return t
        att, tok = table.attention, table.tokens
        if att is None or tok is None or not (tok.contains(qe) and att.contains(qe * kv)):
            return None
        return tok(qe) + table.attention_scale * att(qe * kv)

    def _from_levels(self, table: _BlockTable, q: float, kv: int) -> float | None:
        kvs = sorted(table.levels)
        if not kvs or not kvs[0] * (1 - _REL) <= kv <= kvs[-1] * (1 + _REL):
            return None
        exact = [k for k in kvs if abs(k - kv) <= _REL * k]
        if exact and table.levels[exact[0]].contains(q):
            return table.levels[exact[0]](q)
        lower = [k for k in kvs if k < kv and table.levels[k].contains(q)]
        upper = [k for k in kvs if k > kv and table.levels[k].contains(q)]
        picks = ([lower[-1]] if lower else []) + ([upper[0]] if upper else [])
        estimates = []
        for k in picks:
            t = self._shift_kv(table, k, q, kv)
            if t is not None:
                estimates.append((k, t))
        if not estimates:
            return None
        if len(estimates) == 1:
            return estimates[0][1]
        (k0, t0), (k1, t1) = estimates
        w = math.log(kv / k0) / math.log(k1 / k0)
        return math.exp((1 - w) * math.log(t0) + w * math.log(t1))

    def _shift_kv(self, table: _BlockTable, level: int, q: float, kv: int) -> float | None:
        """Patch-block time at measured ``level`` moved to ``kv`` by the attention fit."""
        att = table.attention
        if att is None or not (att.contains(q * kv) and att.contains(q * level)):
            return None
        t = table.levels[level](q) + table.attention_scale * (att(q * kv) - att(q * level))
        return t if t > 0 else None

    @staticmethod
    def _range_text(table: _BlockTable) -> str:
        # A profile of full images only has no patch levels: its own kv sizes then.
        kvs = sorted(table.levels) or sorted({s.kv_tokens for s in table.samples})
        qs = [s.q_tokens for s in table.samples]
        return (f"q {min(qs)}..{max(qs)}, kv {kvs[0]}..{kvs[-1]} at batch {table.batch}")

    # ---- token-level ops ------------------------------------------------------------------
    def _token_op(self, op: Compute) -> tuple[float, str]:
        name = TOKEN_OPS[op.kind]
        fn, exact, batch = self._tokens[name]
        if op.batch == batch and (op.q_tokens, 0) in exact:
            return exact[(op.q_tokens, 0)], "measured"
        qe = op.q_tokens * op.batch / batch
        if fn.contains(qe):
            return fn(qe), "interpolated"
        near_q = min(fn.x, key=lambda x: abs(math.log(x / qe)))
        ref = Compute(op.kind, op.step, op.patch, op.layers, int(near_q), op.kv_tokens, batch)
        ratio = fn(near_q) / self.roof.compute_time(ref)
        self.notes.add(f"{op.kind}: q={op.q_tokens} batch={op.batch} outside the measured "
                       f"q {fn.lo:g}..{fn.hi:g}; roofline x {ratio:.3g}")
        return self.roof.compute_time(op) * ratio, "roofline"

    def _reference_ratio(self) -> tuple[float, str]:
        """Measured / roofline time of the most compute-bound measured block (largest FLOPs):
        the profile's efficiency relative to the roofline's assumption."""
        best: tuple[float, float, Sample, int] | None = None
        for kind, table in self._blocks.items():
            index = next(i for i in range(self.model.num_blocks)
                         if self.model.block_kind(i) == kind)
            for s in table.samples:
                flops = self.model.block_flops(index, s.q_tokens, s.kv_tokens) * s.batch
                if best is None or flops > best[0]:
                    roof = self.roof.block_time(index, s.q_tokens, s.kv_tokens, s.batch)
                    best = (flops, s.median_s / roof, s, index)
        if best is None:
            return 1.0, "no measured blocks: unscaled"
        s = best[2]
        return best[1], f"efficiency of the measured block q={s.q_tokens} kv={s.kv_tokens}"

    # ---- reporting ------------------------------------------------------------------------
    def describe(self) -> dict:
        """What the cost model rests on, for JSON output: the profile (file, device, dtype,
        threads, date), the fitted in-block attention scale per block family, and the notes
        left by every roofline fallback so far."""
        m = self.profile.meta
        return {"profile": self.profile.path, "model": m.get("model"),
                "device_name": m.get("device_name"), "dtype": m.get("dtype"),
                "threads": m.get("threads"), "clock": m.get("clock"), "date": m.get("date"),
                "attention_scale": {k: round(t.attention_scale, 4)
                                    for k, t in self._blocks.items()},
                "notes": sorted(self.notes)}


def this_cpu() -> str:
    """This machine's CPU model as profiles record it (``/proc/cpuinfo``'s model name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform  # here: 3 ms of every sim import, for machines without /proc

    return platform.processor() or platform.machine()


def other_host(meta: dict) -> str | None:
    """A note when a CPU profile was measured on another CPU model than this machine's:
    its times are that CPU's, and a CPU run here (the executor, the validation) differs by the
    two CPUs' speed. None for GPU profiles (planning for a GPU from a laptop is the point) and
    for profiles measured here."""
    if meta.get("device") != "cpu":
        return None
    theirs, mine = str(meta.get("device_name", "")), this_cpu()
    if not theirs or theirs == mine:
        return None
    return (f"profile measured on {theirs} ({meta.get('date', 'date unknown')}), this machine "
            f"is {mine}: CPU runs here will differ by the two CPUs' speed; refresh it with "
            f"{refresh_command(meta)}")


def refresh_command(meta: dict) -> str:
    """The command that collects a fresh CPU profile like the one ``meta`` describes."""
    threads = meta.get("threads")
    return (f"python -m profiles.collect --model {meta.get('model', 'MODEL')} --device cpu "
            f"--quick{f' --threads {threads}' if threads and threads != 1 else ''} --out FILE")


# Probe results by (threads, clock): one probe per process, however many profiles and
# planner workers use them (forked workers inherit it).
_PROBED: dict[tuple[int | None, str], float | None] = {}


def _probe_once(threads: int | None, clock: str) -> float | None:
    key = (threads, clock)
    if key not in _PROBED:
        from sim.cost import probe  # its torch import waits until a probe is due

        _PROBED[key] = probe.reference_op_seconds(threads, clock)
    return _PROBED[key]


def speed_check(meta: dict, probe: Callable[[int | None, str], float | None] | None = None
                ) -> tuple[str | None, str | None]:
    """(warning, note) on whether a compute profile's speed still holds on this machine.

    GPU profiles: neither (planning for a GPU from a laptop is the point). A CPU profile from
    another CPU model: ``other_host``'s warning, and no probe (the two CPUs differ anyway).
    The same CPU model: ``probe(threads, clock)`` (default: ``reference_op_seconds``, run
    once per process, about a second) times the reference op the profile recorded; a factor
    beyond ``SPEED_TOLERANCE`` is a warning naming it and the refresh command, a factor
    within it a note. The note also says when the probe was skipped: the profile records no
    reference time, or torch is not installed (the probe returns None)."""
    from sim.cost.probe import REFERENCE_OP, SPEED_TOLERANCE

    if meta.get("device") != "cpu":
        return None, None
    other = other_host(meta)
    if other:
        return other, None
    ref = meta.get("reference_op_s")
    when = meta.get("date", "date unknown")
    if not isinstance(ref, (int, float)) or not ref > 0:
        return None, (f"speed probe skipped: the profile ({when}) records no reference-op "
                      f"time, so whether this machine still runs at its speed is unchecked; "
                      f"a profile collected now records one: {refresh_command(meta)}")
    threads = meta.get("threads")
    clock = str(meta.get("clock", "thread"))
    here = (probe or _probe_once)(threads if isinstance(threads, int) else None, clock)
    if here is None:
        return None, ("speed probe skipped: torch is not installed here, so this machine's "
                      "speed was not compared with the profile's (pip install torch to "
                      "check it)")
    factor = here / ref
    if abs(factor - 1) > SPEED_TOLERANCE:
        how = f"{factor:.2f}x slower" if factor > 1 else f"{1 / factor:.2f}x faster"
        return (f"this machine runs the reference op ({REFERENCE_OP}) {how} than when the "
                f"profile was collected ({when}: {ref * 1e3:.3g} ms, now {here * 1e3:.3g} "
                f"ms): CPU runs here will differ by about that factor; refresh it with "
                f"{refresh_command(meta)}"), None
    return None, (f"speed probe: the reference op takes {here * 1e3:.3g} ms here, "
                  f"{ref * 1e3:.3g} ms when the profile was collected (factor {factor:.2f}, "
                  f"within {SPEED_TOLERANCE:.0%})")


def _attention_scale(usable: list[tuple[int, float, float]]) -> float:
    """How much more attention costs inside a block than alone (dimensionless).

    The standalone attention core runs with its K,V warm in cache; inside a block the GEMMs
    between calls evict the stale buffer, so a block's time grows faster with kv than the
    standalone core's (about 1.25x on the 2-core EPYC VM). Patch blocks measured at the same q
    but different kv differ only in their attention, so ``block = tok(q) + s * attention`` is
    fitted by least squares in relative error over such groups, ``tok(q)`` free per q.
    ``usable`` holds (q, block seconds, standalone attention seconds). Without such groups
    the scale is 1; it is clamped to [0.5, 2].
    """
    groups: dict[int, list[tuple[float, float]]] = {}
    for q, t, a in usable:
        groups.setdefault(q, []).append((t, a))
    num = den = 0.0
    for members in groups.values():
        if len(members) < 2:
            continue
        w = [1.0 / (t * t) for t, _ in members]
        sw = sum(w)
        mean_t = sum(wi * t for wi, (t, _) in zip(w, members)) / sw
        mean_a = sum(wi * a for wi, (_, a) in zip(w, members)) / sw
        for wi, (t, a) in zip(w, members):
            num += wi * (a - mean_a) * (t - mean_t)
            den += wi * (a - mean_a) ** 2
    if den <= 0:
        return 1.0
    return min(2.0, max(0.5, num / den))


def _pooled_exact(samples: Iterable[Sample]) -> dict[tuple[int, int], float]:
    """Measured median per (q, kv) (token ops: kv ignored, keyed 0); repeats of a shape are
    pooled by their geometric mean."""
    acc: dict[tuple[int, int], list[float]] = {}
    for s in samples:
        key = (s.q_tokens, s.kv_tokens if s.op == "block" else 0)
        acc.setdefault(key, []).append(math.log(s.median_s))
    return {k: math.exp(sum(v) / len(v)) for k, v in acc.items()}

