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
``op`` (``p2p``, ``all_reduce``, ``all_gather``, ``all_to_all``), ``world`` (ranks),
``nbytes`` (each rank's message, bytes), ``repeats``, ``median_s`` ... ``max_s`` (seconds;
``p2p`` is one way: half a ping-pong round trip), ``algbw_Bps`` (nbytes / median, bytes/s) and
``busbw_Bps`` (the nccl-tests bus bandwidth: algbw x 2(n-1)/n for all-reduce, x (n-1)/n for
all-gather and all-to-all). The metadata's ``fits`` holds, per op, the fitted latency (s) and
bandwidth (bytes/s) of each message-size regime: ``time = latency_s + nbytes / bandwidth_Bps``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from sim.errors import UserError

COMPUTE_FORMAT = "ditsim-compute-profile/1"
LINK_FORMAT = "ditsim-link-profile/1"
HEADER_PREFIX = "# ditsim-profile "


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


@dataclass(frozen=True)
class LinkFit:
    """``time = latency_s + nbytes / bandwidth_Bps`` over ``lo_bytes..hi_bytes`` (inclusive)."""

    regime: str
    lo_bytes: int
    hi_bytes: int
    latency_s: float
    bandwidth_Bps: float
    rms_rel_err: float  # root-mean-square relative error of the fit over its samples


def _convert(cls: type, row: dict[str, str], where: str) -> object:
    kwargs = {}
    for f in fields(cls):
        if f.name not in row or row[f.name] is None:
            raise ProfileError(f"{where}: missing column '{f.name}'")
        raw = row[f.name]
        try:
            kwargs[f.name] = int(raw) if f.type == "int" else float(raw) if f.type == "float" \
                else raw
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
    for i, row in enumerate(csv.DictReader(io.StringIO(body)), start=3):
        rows.append(_convert(row_cls, row, f"{path} line {i}"))
    if not rows:
        raise ProfileError(f"{path} holds no measurements")
    for r in rows:
        times = (r.min_s, r.p25_s, r.median_s, r.p75_s, r.max_s)
        if not all(t > 0 for t in times):
            raise ProfileError(f"{path}: non-positive time in {r}")
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
        w.writerow([f"{d[n]:.6g}" if isinstance(d[n], float) else d[n] for n in names])
    p.write_text(buf.getvalue())
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
        return cls(meta, rows, str(path))


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

    def host_table(self) -> tuple[tuple[int, float], ...]:
        """(message bytes, seconds) of host time one message costs each of its two ranks
        (``host_msg`` rows, measured by ``profiles.links --busy`` on CPU ranks); empty when
        the profile has none (GPU transports, older profiles). Negative measurements (noise
        around zero) count as zero."""
        return tuple((s.nbytes, max(0.0, s.median_s)) for s in self.select("host_msg"))


def slug(text: str) -> str:
    """Lower-case file-name-safe form of ``text`` (runs of other characters become '-')."""
    out = []
    for ch in text.lower():
        out.append(ch if ch.isalnum() or ch == "." else "-")
    s = "".join(out)
    while "--" in s:
        s = s.replace("--", "-")
    return s.strip("-")
