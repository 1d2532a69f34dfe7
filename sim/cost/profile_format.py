"""The profile file format and its loader (plain Python: no torch, no numpy).

A profile is one CSV file whose first line is a comment holding a JSON object (the metadata:
what was measured, on what, with which software, when), followed by an ordinary CSV table with a
header row. ``pandas.read_csv(path, comment="#")`` reads the table; this module reads both.

Compute profiles (``format`` = ``ditsim-compute-profile/1``), one row per measured shape:

=============  ========================================================================
column         meaning
=============  ========================================================================
op             ``block``, ``attention``, ``embed``, ``final``, ``scheduler_step``
variant        block family for ``block`` (``cross``, ``dit``, ``joint``, ``single``),
               ``self`` for ``attention``, empty otherwise
batch          effective batch of the call (2 with classifier-free guidance)
q_tokens       query image tokens (a patch under PipeFusion)
kv_tokens      key/value image tokens (the full sequence under PipeFusion)
heads          attention heads in the call (fewer than the model's: head-sharded shapes)
repeats        timed calls after the warm-up calls
median_s       median of the timed calls, seconds (the value the cost model uses)
min_s, p25_s,  spread of the timed calls, seconds
p75_s, max_s
=============  ========================================================================

Link profiles (``format`` = ``ditsim-link-profile/1``), one row per (op, message size):
``op`` (``p2p``; ``host_msg``, the host time one message costs each of its ranks on CPU as
PipeFusion's messages travel, each direction on its own process group; ``host_coll``, the same
with both directions on one group, as an asynchronous collective's messages travel; the
collectives under their schedule names ``all_reduce``, ``all_gather``, ``all_to_all``,
``ring_kv`` (one whole K,V rotation: ``world - 1`` rounds of isend/irecv around the ring) and
``reduce_scatter``, each timed with the ranks idle, as a blocking call waits, or with
``_async`` appended when timed while every rank computes, as an asynchronous one overlaps
compute), ``world`` (ranks), ``nbytes`` (each rank's message, bytes), ``repeats``,
``median_s`` ... ``max_s`` (seconds; ``p2p`` is one way: half a ping-pong round trip),
``algbw_Bps`` (nbytes / median, bytes/s),
``busbw_Bps`` (the nccl-tests bus bandwidth: algbw x 2(n-1)/n for all-reduce, x (n-1)/n for
all-gather and all-to-all) and ``mean_s``, the mean of the timed samples (seconds; empty or
absent in profiles collected before it existed). A collective is costed from its mean where
the profile has one (``LinkProfile.collective_table``): a run pays the sum of its calls, whose
expectation is the mean, and on CPU processes sharing cores a call's time has a long tail
(the transport threads waiting to be scheduled) that the median leaves out.
The metadata's ``fits`` holds, per op, the fitted latency (s) and
bandwidth (bytes/s) of each message-size regime: ``time = latency_s + nbytes / bandwidth_Bps``.

Every number is checked as the file loads (``RANGES``: finite, counts and sizes at least 1,
times and fitted bandwidths above zero, nothing beyond a day, a terabyte or a petabyte per
second): one bad value refuses the whole file, naming its line and column, so a corrupted
profile is never partly used. A link profile's rows must also name a known op, measure each
(op, size) once, hold one world size per op, and a collective at least 2 ranks.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, NamedTuple

from sim.errors import UserError
from sim.outputs import atomic_write
from sim.schedule import OpKind

COMPUTE_FORMAT = "ditsim-compute-profile/1"
LINK_FORMAT = "ditsim-link-profile/1"
HEADER_PREFIX = "# ditsim-profile "


# Collectives a link profile may time, by their schedule names (``Collective.kind``).
COLLECTIVE_OPS = (OpKind.ALL_REDUCE, OpKind.ALL_GATHER, OpKind.ALL_TO_ALL, OpKind.RING_KV,
                  OpKind.REDUCE_SCATTER)
# Host time per message (CPU transports), by how the two directions travel: ``host_msg`` on
# separate process groups (PipeFusion's hidden states forward, latents back), ``host_coll`` on
# one group (a ring's K,V rotation, DistriFusion's gathers).
HOST_OPS = ("host_msg", "host_coll")
# Blocking collectives timed on CPU ranks after a short stretch of compute rather than after the
# reference op (``profiles.links --busy`` on gloo; the metadata's ``stretch_s`` holds both
# stretches' seconds): ``<op>_short``.
SHORT_SUFFIX = "_short"
SHORT_OPS = tuple(op + SHORT_SUFFIX for op in COLLECTIVE_OPS)
LINK_OPS = ("p2p", *HOST_OPS, *COLLECTIVE_OPS,
            *(op + OpKind.ASYNC_SUFFIX for op in COLLECTIVE_OPS), *SHORT_OPS)


class ProfileError(UserError):
    """A profile file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Sample:
    """One measured compute shape; times in seconds."""

    op: str
    variant: str
    batch: int
    q_tokens: int
    kv_tokens: int
    heads: int
    repeats: int
    median_s: float
    min_s: float
    p25_s: float
    p75_s: float
    max_s: float


@dataclass(frozen=True)
class LinkSample:
    """One measured message size of one communication op; times in seconds, rates in B/s."""

    op: str
    world: int
    nbytes: int
    repeats: int
    median_s: float
    min_s: float
    p25_s: float
    p75_s: float
    max_s: float
    algbw_Bps: float
    busbw_Bps: float
    mean_s: float | None = None  # None: not recorded (profiles older than the column)


@dataclass(frozen=True)
class LinkFit:
    """``time = latency_s + nbytes / bandwidth_Bps`` over ``lo_bytes..hi_bytes`` (inclusive)."""

    regime: str
    lo_bytes: int
    hi_bytes: int
    latency_s: float
    bandwidth_Bps: float
    rms_rel_err: float  # root-mean-square relative error of the fit over its samples


class Range(NamedTuple):
    """The values a numeric column may hold: finite, ``lo`` (itself allowed when ``lo_ok``)
    up to ``hi``, in ``unit``."""

    lo: float
    lo_ok: bool
    hi: float
    unit: str = ""


# Beyond these a value is a corrupted file, not a measurement: one op or message lasting
# over a day, a message over a terabyte, a link faster than a petabyte per second.
MAX_TIME_S = 86400.0
MAX_BYTES = 2**40
MAX_BANDWIDTH_BPS = 1e15

_COUNT = Range(1, True, math.inf)  # batch, tokens, heads, repeats, ranks
_TIME = Range(0.0, False, MAX_TIME_S, " s")  # a zero time would divide by zero downstream
_RATE = Range(0.0, True, MAX_BANDWIDTH_BPS, " B/s")  # 0 on host_msg rows (no transfer)
# host_msg rows hold differences of two medians (and of two means): noise around zero may be
# negative (LinkProfile.host_table counts it as zero).
_HOST_TIME = Range(-MAX_TIME_S, True, MAX_TIME_S, " s")
_TIMES = ("median_s", "min_s", "p25_s", "p75_s", "max_s")

# Every numeric column of each row type, and of the link fits in the metadata.
RANGES: dict[str, dict[str, Range]] = {
    "Sample": {"batch": _COUNT, "q_tokens": _COUNT, "kv_tokens": _COUNT, "heads": _COUNT,
               "repeats": _COUNT, **dict.fromkeys(_TIMES, _TIME)},
    "LinkSample": {"world": _COUNT, "nbytes": Range(1, True, MAX_BYTES, " B"),
                   "repeats": _COUNT, **dict.fromkeys(_TIMES, _TIME), "algbw_Bps": _RATE,
                   "busbw_Bps": _RATE, "mean_s": _TIME},
    "LinkFit": {"lo_bytes": Range(1, True, MAX_BYTES, " B"),
                "hi_bytes": Range(1, True, MAX_BYTES, " B"),
                "latency_s": Range(0.0, True, MAX_TIME_S, " s"),
                "bandwidth_Bps": Range(0.0, False, MAX_BANDWIDTH_BPS, " B/s"),
                "rms_rel_err": Range(0.0, True, math.inf)},
}


def out_of_range(value: float, rule: Range) -> str | None:
    """What is wrong with ``value`` under ``rule`` ("is not a finite number", "is
    non-positive (must be > 0 s)", ...), or ``None`` when it is fine."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    lo, lo_ok, hi, unit = rule
    if value < lo or (value == lo and not lo_ok):
        if lo_ok:
            return f"is {'negative' if lo == 0 else 'too small'} (must be at least {lo:g}{unit})"
        return f"is {'non-positive' if lo == 0 else 'too small'} (must be > {lo:g}{unit})"
    if value > hi:
        return f"is over {hi:g}{unit}, beyond any real measurement (a corrupted file?)"
    return None


def check_row(row: Sample | LinkSample, where: str, raw: dict[str, str] | None = None) -> None:
    """Raise ``ProfileError`` naming ``where`` (file and line) and the column when a numeric
    field of ``row`` is non-finite or out of range (``raw``: the text read, for the
    message)."""
    rules = RANGES[type(row).__name__]
    host = isinstance(row, LinkSample) and row.op in HOST_OPS
    for name, rule in rules.items():
        if host and (name in _TIMES or name == "mean_s"):
            rule = _HOST_TIME
        value = getattr(row, name)
        if value is None:  # an optional column left empty
            continue
        problem = out_of_range(value, rule)
        if problem:
            shown = raw[name] if raw else value
            raise ProfileError(f"{where}, column '{name}': {shown} {problem}; the profile is "
                               f"refused")


def check_fit(fit: LinkFit, where: str) -> None:
    """Raise ``ProfileError`` naming ``where`` when a fitted latency, bandwidth or size range
    of ``fit`` is non-finite or out of range: a zero or negative bandwidth would stall the
    engine or divide by zero, a NaN latency would spread through every time."""
    for name, rule in RANGES["LinkFit"].items():
        problem = out_of_range(getattr(fit, name), rule)
        if problem:
            raise ProfileError(f"{where}, regime '{fit.regime}', {name}: "
                               f"{getattr(fit, name)} {problem}; the profile is refused")
    if fit.lo_bytes > fit.hi_bytes:
        raise ProfileError(f"{where}, regime '{fit.regime}': lo_bytes {fit.lo_bytes} exceeds "
                           f"hi_bytes {fit.hi_bytes}; the profile is refused")


def _convert(cls: type, row: dict[str, str], where: str) -> object:
    kwargs = {}
    for f in fields(cls):
        optional = f.default is None
        if f.name not in row or row[f.name] is None:
            if optional:  # a column added later: older files lack it
                continue
            raise ProfileError(f"{where}: missing column '{f.name}'")
        raw = row[f.name]
        if optional and raw == "":
            continue
        try:
            kwargs[f.name] = int(raw) if f.type == "int" else float(raw) \
                if f.type in ("float", "float | None") else raw
        except ValueError:
            raise ProfileError(f"{where}: column '{f.name}' has '{raw}', not a number") from None
    return cls(**kwargs)


def _read(path: str | Path, fmt: str, row_cls: type) -> tuple[dict, list]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ProfileError(f"cannot read profile {path}: {e.strerror or e}") from None
    first, _, body = text.partition("\n")
    if not first.startswith(HEADER_PREFIX):
        raise ProfileError(f"{path} is not a ditsim profile (its first line must start with "
                           f"'{HEADER_PREFIX.strip()}')")
    try:
        meta = json.loads(first[len(HEADER_PREFIX):])
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: metadata line is not JSON ({e.msg})") from None
    if meta.get("format") != fmt:
        raise ProfileError(f"{path} has format '{meta.get('format')}', expected '{fmt}' "
                           f"(a {'link' if fmt == LINK_FORMAT else 'compute'} profile)")
    rows = []
    reader = csv.DictReader(io.StringIO(body))
    for row in reader:
        # The body starts on the file's line 2 (its header); line_num counts body lines read.
        where = f"{path} line {reader.line_num + 1}"
        rows.append(_convert(row_cls, row, where))
        check_row(rows[-1], where, row)  # one bad value refuses the whole file
    if not rows:
        raise ProfileError(f"{path} holds no measurements")
    return meta, rows


def _write(path: str | Path, meta: dict, rows: list, row_cls: type) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(row_cls)]
    buf = io.StringIO()
    buf.write(HEADER_PREFIX + json.dumps(meta, sort_keys=True) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for r in rows:
        d = asdict(r)
        w.writerow([f"{d[n]:.6g}" if isinstance(d[n], float) else "" if d[n] is None
                    else d[n] for n in names])
    # Temporary file, then rename: a full disk or a crash mid-write must not leave a truncated
    # profile that would later load as a smaller, valid-looking one.
    atomic_write(p, lambda tmp: tmp.write_text(buf.getvalue()))
    return p


@dataclass
class _Profile:
    """Metadata and rows of one profile file; subclasses name the format, the row type and
    the metadata keys a usable file must have."""

    FORMAT: ClassVar[str]
    ROW: ClassVar[type]
    REQUIRED: ClassVar[tuple[str, ...]]

    meta: dict
    samples: list = field(default_factory=list)
    path: str = ""

    def write(self, path: str | Path) -> Path:
        """Write the profile (metadata line + CSV); returns the path."""
        return _write(path, dict(self.meta, format=self.FORMAT), self.samples, self.ROW)

    @classmethod
    def read(cls, path: str | Path):
        """Read a profile of this kind; raises ``ProfileError`` (a ``UserError``) when
        unusable."""
        meta, rows = _read(path, cls.FORMAT, cls.ROW)
        for key in cls.REQUIRED:
            if not meta.get(key):
                raise ProfileError(f"{path}: metadata lacks '{key}'")
        prof = cls(meta, rows, str(path))
        # Line 1 is the metadata, line 2 the header: sample i is on line i + 3.
        prof.check_samples(lambda i: f"{path} line {i + 3}")
        prof.check_meta(f"{path} line 1 (metadata)")
        return prof

    def check_meta(self, where: str) -> None:
        """Raise ``ProfileError`` naming ``where`` when the metadata holds an unusable value
        (subclasses check theirs; the compute format's metadata is descriptive only)."""

    def check_samples(self, where: Callable[[int], str]) -> None:
        """Raise ``ProfileError`` naming ``where(i)`` for a sample that is valid alone but not
        in this profile (subclasses check theirs; every compute row stands alone)."""

    def check(self) -> None:
        """Validate a profile built in memory (``read`` validates each row as it loads): raise
        ``ProfileError`` at the first non-finite or out-of-range value, naming the sample."""
        name = self.path or f"{type(self).__name__} in memory"
        for i, s in enumerate(self.samples):
            check_row(s, f"{name} sample {i}")
        self.check_samples(lambda i: f"{name} sample {i}")
        self.check_meta(f"{name} metadata")


@dataclass
class ComputeProfile(_Profile):
    """Measured compute times of one model on one device (see the module docstring)."""

    FORMAT: ClassVar[str] = COMPUTE_FORMAT
    ROW: ClassVar[type] = Sample
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "dtype", "device")
    samples: list[Sample] = field(default_factory=list)

    @property
    def model(self) -> str:
        """Registry name of the model measured (``sim.models.MODELS``)."""
        return str(self.meta.get("model", ""))

    @property
    def dtype(self) -> str:
        """Data type the model ran in (``bf16``, ``fp16``, ``fp32``)."""
        return str(self.meta.get("dtype", ""))

    def select(self, op: str, variant: str | None = None) -> list[Sample]:
        """Samples of ``op`` (and ``variant`` when given)."""
        return [s for s in self.samples
                if s.op == op and (variant is None or s.variant == variant)]


@dataclass
class LinkProfile(_Profile):
    """Measured communication times over one kind of link (see the module docstring)."""

    FORMAT: ClassVar[str] = LINK_FORMAT
    ROW: ClassVar[type] = LinkSample
    REQUIRED: ClassVar[tuple[str, ...]] = ("link_kind",)
    samples: list[LinkSample] = field(default_factory=list)

    @property
    def link_kind(self) -> str:
        """Registry link kind these measurements describe (``sim.hardware.LINKS``)."""
        return str(self.meta.get("link_kind", ""))

    @property
    def backend(self) -> str:
        """``torch.distributed`` backend measured (``gloo``, ``nccl``)."""
        return str(self.meta.get("backend", ""))

    def select(self, op: str) -> list[LinkSample]:
        """Samples of ``op`` sorted by message size."""
        return sorted((s for s in self.samples if s.op == op), key=lambda s: s.nbytes)

    def fits(self, op: str) -> list[LinkFit]:
        """Fitted regimes of ``op`` (``small``, ``large``, ..., and ``all`` over every size)."""
        return [LinkFit(**f) for f in self.meta.get("fits", {}).get(op, [])]

    def check_meta(self, where: str) -> None:
        """Raise ``ProfileError`` naming ``where`` unless every fit in the metadata has the
        fields of ``LinkFit`` with finite, in-range values (``check_fit``)."""
        fits = self.meta.get("fits", {})
        if not isinstance(fits, dict):
            raise ProfileError(f"{where}: 'fits' must map op names to lists of fits")
        names = {f.name for f in fields(LinkFit)}
        for op, entries in fits.items():
            if not isinstance(entries, list) or not all(
                    isinstance(e, dict) and set(e) == names for e in entries):
                raise ProfileError(f"{where}: the fits of '{op}' must be a list of objects "
                                   f"with exactly {', '.join(sorted(names))}")
            for e in entries:
                check_fit(LinkFit(**e), f"{where}, fit of '{op}'")

    def check_samples(self, where: Callable[[int], str]) -> None:
        """Raise ``ProfileError`` naming ``where(i)`` (file and line) at the first sample
        whose op is unknown, whose (op, size) was already measured, whose world size differs
        from the op's earlier rows, or that is a collective over fewer than 2 ranks."""
        seen: set[tuple[str, int]] = set()
        worlds: dict[str, int] = {}
        for i, s in enumerate(self.samples):
            if s.op not in LINK_OPS:
                raise ProfileError(f"{where(i)}, column 'op': unknown op '{s.op}' (a link "
                                   f"profile holds {', '.join(LINK_OPS)}); the profile is "
                                   f"refused")
            if (s.op, s.nbytes) in seen:
                raise ProfileError(f"{where(i)}: {s.op} at {s.nbytes} bytes is measured twice; "
                                   f"the profile is refused")
            seen.add((s.op, s.nbytes))
            if worlds.setdefault(s.op, s.world) != s.world:
                raise ProfileError(f"{where(i)}, column 'world': {s.op} over {s.world} ranks "
                                   f"beside rows over {worlds[s.op]}; one profile holds one "
                                   f"world size per op (collect one per group size); the "
                                   f"profile is refused")
            if s.op not in ("p2p", *HOST_OPS) and s.world < 2:
                raise ProfileError(f"{where(i)}, column 'world': a collective over {s.world} "
                                   f"rank is no communication; the profile is refused")

    def stretches(self) -> tuple[float, float] | None:
        """Seconds of compute before each blocking call of the ``<op>_short`` rows and of the
        plain rows (``stretch_s``: short, reference), or ``None`` when the profile has no
        ``<op>_short`` rows; ``ProfileError`` when the metadata's values are unusable."""
        if not any(s.op in SHORT_OPS for s in self.samples):
            return None
        st = self.meta.get("stretch_s")
        where = f"link profile {self.path or '(in memory)'}"
        try:
            short, ref = float(st["short"]), float(st["reference"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise ProfileError(f"{where}: it has {SHORT_SUFFIX} rows but no 'stretch_s' with "
                               f"'short' and 'reference' seconds; collect it again") from None
        if not 0.0 < short < ref <= MAX_TIME_S:
            raise ProfileError(f"{where}: 'stretch_s' must hold 0 < short < reference seconds, "
                               f"got {short} and {ref}")
        return short, ref

    def collective_table(self, op: str) -> tuple[int, tuple[tuple[int, float], ...]] | None:
        """(ranks, ((bytes per rank, seconds of one call), ...) by size) of collective ``op``
        (a schedule name, ``_async`` appended for the busy timing), or ``None`` when the
        profile did not time it. A call's seconds are its samples' mean when every row of
        ``op`` has one, else their median: a schedule makes the call many times and pays the
        sum, whose expectation is the mean (the median of a long-tailed call time, as on CPU
        processes that share cores, falls short of it)."""
        rows = self.select(op)
        if not rows or op not in LINK_OPS[2:]:
            return None
        means = all(s.mean_s is not None for s in rows)
        return rows[0].world, tuple((s.nbytes, s.mean_s if means else s.median_s)
                                    for s in rows)

    def fit(self, op: str = "p2p", nbytes: float | None = None) -> LinkFit:
        """The fit of ``op`` whose regime holds ``nbytes`` (the ``all`` fit when ``None``)."""
        fits = self.fits(op)
        if not fits:
            raise ProfileError(f"link profile {self.path or ''} has no fit for '{op}'; it "
                               f"holds: {', '.join(sorted(self.meta.get('fits', {}))) or 'none'}")
        if nbytes is None:
            return next((f for f in fits if f.regime == "all"), fits[-1])
        parts = [f for f in fits if f.regime != "all"] or fits
        for f in parts:
            if f.lo_bytes <= nbytes <= f.hi_bytes:
                return f
        # Outside the measured sizes: the nearest regime's line extends the best.
        return parts[0] if nbytes < parts[0].lo_bytes else parts[-1]

    def host_table(self, op: str = "host_msg") -> tuple[tuple[int, float], ...]:
        """(message bytes, seconds) of host time one message costs each of its two ranks
        (``op``: ``host_msg`` rows, a point-to-point message of the executor's message layer,
        or ``host_coll`` rows, a message of an asynchronous collective; both measured by
        ``profiles.links --busy`` on CPU ranks); empty when the profile has none (GPU
        transports, older profiles; profiles older than ``host_coll`` timed their
        ``host_msg`` rows with both directions on one group, as ``host_coll`` is now). The
        row's ``mean_s`` where it has one, as the collectives are costed from their mean call
        (a run pays the sum; since 2026-12-01 the median over the collection's rounds of each
        round's difference of means, ``profiles.links._host_overhead``); of the medians in
        profiles older than that column. Negative measurements (noise around zero) count as zero."""
        return tuple((s.nbytes, max(0.0, s.median_s if s.mean_s is None else s.mean_s))
                     for s in self.select(op))


def slug(text: str) -> str:
    """Lower-case file-name-safe form of ``text`` (runs of other characters become '-')."""
    out = []
    for ch in text.lower():
        out.append(ch if ch.isalnum() or ch == "." else "-")
    s = "".join(out)
    while "--" in s:
        s = s.replace("--", "-")
    return s.strip("-")
