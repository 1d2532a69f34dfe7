"""Request streams for serving: request classes, seeded arrival processes and trace replay.

A request class is one image shape (width x height, diffusion steps) of the pool's model; a
stream is a list of ``Request`` sorted by arrival time (seconds). Generated streams are built
from a unit-rate stream scaled by ``1 / rate``, so that the streams of two rates with one seed
are the same requests at stretched times (common random numbers): the capacity bisection then
compares rates, not luck.

Torch-free, stdlib only.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from sim.errors import UserError
from sim.models import get_model

# Weights of --mix must sum to 1 within this (they are typed by hand, e.g. 0.7 + 0.2 + 0.1).
MIX_TOLERANCE = 1e-6


@dataclass(frozen=True)
class RequestClass:
    """One kind of request: image width and height in pixels, diffusion steps, and its share
    of the arrivals (``weight``, 0..1)."""

    width: int
    height: int
    steps: int
    weight: float

    @property
    def name(self) -> str:
        """``1024`` or ``2048x1024`` (``class_names`` adds ``@STEPS`` where sizes repeat)."""
        size = str(self.width) if self.width == self.height else f"{self.width}x{self.height}"
        return size


@dataclass(frozen=True)
class Request:
    """One request: its position in the stream, its class (index into the class list), its
    arrival time (seconds) and, from a trace, its own SLO (seconds; ``None``: the class's)."""

    index: int
    cls: int
    arrival_s: float
    slo_s: float | None = None


def class_names(classes: list[RequestClass]) -> list[str]:
    """Unique display names: the size, with ``@STEPS`` when two classes share a size."""
    sizes = [c.name for c in classes]
    return [f"{c.name}@{c.steps}" if sizes.count(c.name) > 1 else c.name for c in classes]


def _parse_size(text: str, what: str) -> tuple[int, int]:
    """``"1024"`` -> (1024, 1024); ``"2048x1024"`` -> (2048, 1024) as (width, height)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise UserError(f"{what}: size must be N or WIDTHxHEIGHT in pixels, got '{text}'") \
            from None
    if w <= 0 or h <= 0:
        raise UserError(f"{what}: size must be positive, got '{text}'")
    return w, h


def parse_mix(text: str | None, width: int, height: int, steps: int) -> list[RequestClass]:
    """Classes of ``--mix SIZE[@STEPS]:WEIGHT,...`` (e.g. ``1024:0.7,2048@30:0.3``); sizes
    are N or WIDTHxHEIGHT, steps default to ``steps``. Without a mix: one class of the given
    size. Weights must be positive and sum to 1."""
    if text is None:
        return [RequestClass(width, height, steps, 1.0)]
    classes: list[RequestClass] = []
    for item in text.split(","):
        shape, sep, weight_text = item.strip().rpartition(":")
        if not sep or not shape:
            raise UserError(f"--mix entries are SIZE[@STEPS]:WEIGHT, e.g. 1024:0.7,2048:0.3; "
                            f"got '{item}'")
        size, at, steps_text = shape.partition("@")
        w, h = _parse_size(size, "--mix")
        n_steps = steps
        if at:
            try:
                n_steps = int(steps_text)
            except ValueError:
                raise UserError(f"--mix: steps after @ must be a whole number, got "
                                f"'{steps_text}'") from None
            if n_steps < 1:
                raise UserError(f"--mix: steps must be at least 1, got {n_steps}")
        try:
            weight = float(weight_text)
        except ValueError:
            raise UserError(f"--mix: weight must be a number, got '{weight_text}'") from None
        if not (math.isfinite(weight) and weight > 0):
            raise UserError(f"--mix: weight of {shape} must be positive and finite, got "
                            f"{weight_text}")
        if any((c.width, c.height, c.steps) == (w, h, n_steps) for c in classes):
            raise UserError(f"--mix lists {shape} twice; give each class once")
        classes.append(RequestClass(w, h, n_steps, weight))
    total = sum(c.weight for c in classes)
    if abs(total - 1) > MIX_TOLERANCE:
        raise UserError(f"--mix weights sum to {total:g}, not 1; give each class its share of "
                        f"the arrivals (e.g. 1024:0.7,2048:0.3)")
    return classes


def unit_stream(classes: list[RequestClass], count: int, cv: float, seed: int) -> list[Request]:
    """``count`` requests arriving at rate 1 per second: inter-arrival times drawn from a
    Gamma distribution of mean 1 s and coefficient of variation ``cv`` (``cv = 1`` is a
    Poisson process), each request's class drawn by weight. Seeded; the first arrives at
    its first inter-arrival time."""
    if cv <= 0:
        raise UserError(f"--cv must be positive, got {cv:g}")
    rng = random.Random(seed)
    shape = 1 / (cv * cv)
    weights = [c.weight for c in classes]
    idx = list(range(len(classes)))
    t = 0.0
    out = []
    for i in range(count):
        t += rng.gammavariate(shape, 1 / shape)
        out.append(Request(i, rng.choices(idx, weights)[0], t))
    return out


def scaled(stream: list[Request], factor: float) -> list[Request]:
    """The same requests with every arrival time multiplied by ``factor`` (a unit-rate stream
    times ``1 / rate`` arrives at ``rate``)."""
    return [Request(r.index, r.cls, r.arrival_s * factor, r.slo_s) for r in stream]


def read_trace(path: str | Path, model: str) -> tuple[list[RequestClass], list[Request]]:
    """Requests of a CSV trace with rows ``arrival_s, model, width, height, steps[, slo_s]``
    (an optional header line whose first cell is ``arrival_s``). Every row's model must be
    the pool's ``model``. Classes are the distinct (width, height, steps) in order of first
    appearance, weighted by their share of the rows. Requests come back sorted by arrival."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--replay {path}: no such file")
    want = get_model(model).name
    rows: list[tuple[float, tuple[int, int, int], float | None]] = []
    with p.open(newline="") as f:
        for line_no, cells in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in cells]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if line_no == 1 and cells[0] == "arrival_s":
                continue
            where = f"--replay {path} line {line_no}"
            if len(cells) not in (5, 6):
                raise UserError(f"{where}: expected arrival_s,model,width,height,steps[,slo_s], "
                                f"got {len(cells)} fields")
            try:
                arrival = float(cells[0])
                w, h, steps = int(cells[2]), int(cells[3]), int(cells[4])
                slo = float(cells[5]) if len(cells) == 6 and cells[5] else None
            except ValueError:
                raise UserError(f"{where}: arrival_s and slo_s must be numbers, width, height "
                                f"and steps whole numbers") from None
            if not (math.isfinite(arrival) and arrival >= 0):
                raise UserError(f"{where}: arrival_s must be finite and >= 0, got {cells[0]}")
            if slo is not None and not (math.isfinite(slo) and slo > 0):
                raise UserError(f"{where}: slo_s must be positive and finite, got {cells[5]}")
            if w <= 0 or h <= 0 or steps < 1:
                raise UserError(f"{where}: width and height must be positive and steps at "
                                f"least 1")
            try:
                row_model = get_model(cells[1]).name
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            if row_model != want:
                raise UserError(f"{where}: model {row_model}, but the pool serves {want} "
                                f"(--model); one pool serves one model")
            rows.append((arrival, (w, h, steps), slo))
    if not rows:
        raise UserError(f"--replay {path}: no requests (an empty trace); give rows "
                        f"arrival_s,model,width,height,steps[,slo_s]")
    rows.sort(key=lambda r: r[0])  # stable: equal arrivals keep the file's order
    keys: list[tuple[int, int, int]] = []
    for _, key, _ in rows:
        if key not in keys:
            keys.append(key)
    classes = [RequestClass(w, h, s, sum(1 for r in rows if r[1] == (w, h, s)) / len(rows))
               for w, h, s in keys]
    stream = [Request(i, keys.index(key), arrival, slo)
              for i, (arrival, key, slo) in enumerate(rows)]
    return classes, stream


def write_trace(path: str | Path, model: str, classes: list[RequestClass],
                stream: list[Request], slo_s: list[float] | None = None) -> None:
    """Write ``stream`` as a replayable trace (the rows ``read_trace`` reads, with a header):
    ``arrival_s, model, width, height, steps[, slo_s]``, the SLO column (seconds) when
    ``slo_s`` gives one per class or the requests carry their own. Arrival times are written
    exactly (``repr``), so a replay has the same arrivals."""
    name = get_model(model).name
    own = slo_s is not None or any(r.slo_s is not None for r in stream)
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arrival_s", "model", "width", "height", "steps"] + (["slo_s"] if own else []))
        for r in stream:
            c = classes[r.cls]
            row = [repr(r.arrival_s), name, c.width, c.height, c.steps]
            if own:
                slo = r.slo_s if r.slo_s is not None else slo_s[r.cls]  # type: ignore[index]
                row.append(repr(slo))
            w.writerow(row)
