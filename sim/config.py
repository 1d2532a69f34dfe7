"""What the user asks for: the workload and the parallel configuration, and the rules they
must obey. Every broken rule raises ``UserError`` with the rule in one line."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

from sim.errors import UserError
from sim.models import DiTModel
from sim.partition import split_even

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _whole(obj: object, name: str, flag: str) -> None:
    """Make field ``name`` of the frozen dataclass ``obj`` a plain ``int``, or raise
    ``UserError`` naming ``flag``. Integers of other kinds (numpy) are accepted; booleans,
    floats (NaN, inf, 2.5) and strings are not: a NaN compares false with every bound, so
    ``validate`` would let it through, and an infinite step count never ends."""
    value = getattr(obj, name)
    try:
        if isinstance(value, bool):
            raise TypeError
        whole = operator.index(value)
    except TypeError:
        raise UserError(f"{flag} must be a whole number, got {value!r}") from None
    object.__setattr__(obj, name, whole)


@dataclass(frozen=True)
class Workload:
    """One image request: model, size in pixels, diffusion steps, dtype, and which of the
    non-parallel parts (text encoder, VAE decode) the latency should include. ``images``
    requests of this same shape may run together as one batch (a serving replica batching
    them, ``sim.serve --max-batch``): every op then carries ``images`` times the batch of one
    image, and the latency is the batch's."""

    model: DiTModel
    height: int
    width: int
    steps: int
    dtype: str = "bf16"
    text_encoder: bool = True
    vae: bool = True
    images: int = 1

    def __post_init__(self) -> None:
        # Built directly (the Python API, scripts), a workload gets the checks the command
        # line gives: the same messages as ``validate`` and the flags' parsers.
        if not isinstance(self.model, DiTModel):
            raise UserError(f"model must be a registry model (sim.models.get_model), got "
                            f"{self.model!r}")
        _whole(self, "height", "resolution (height)")
        _whole(self, "width", "resolution (width)")
        _whole(self, "steps", "--steps")
        _whole(self, "images", "images (batch)")
        if self.images < 1:
            raise UserError(f"images (batch) must be at least 1, got {self.images}")
        if self.height <= 0 or self.width <= 0:
            raise UserError(f"resolution must be positive, got {self.width}x{self.height}")
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")
        if self.dtype not in DTYPE_BYTES:
            raise UserError(f"--dtype must be one of {', '.join(sorted(DTYPE_BYTES))}, got "
                            f"{self.dtype!r}")
        for name in ("text_encoder", "vae"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def dtype_bytes(self) -> int:
        """Bytes per element of ``dtype``."""
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        """Image tokens of the latent (after the VAE and the patch embedding)."""
        return self.model.image_tokens(self.height, self.width)


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of each parallel strategy; their product is the GPU count. ``stage_blocks``
    optionally lists the number of blocks of each PipeFusion stage. DistriFusion combines only
    with CFG parallelism; the others combine freely (xDiT-style hybrids)."""

    gpus: int
    pipefusion: int = 1
    patches: int = 1
    warmup: int = 0
    stage_blocks: tuple[int, ...] | None = None
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1
    tensor: int = 1
    distrifusion: int = 1

    def __post_init__(self) -> None:
        # Whole numbers and the ranges that need no workload, with ``validate``'s messages;
        # the rest (patches and warmup against the image and the steps) stays in ``validate``.
        for name in _INT_FIELDS:
            _whole(self, name, f"--{name}")
        if self.stage_blocks is not None:
            blocks = tuple(self.stage_blocks)
            if any(isinstance(b, (bool, float, str)) for b in blocks):
                raise UserError(f"--stage-blocks must be whole numbers, got {list(blocks)!r}")
            object.__setattr__(self, "stage_blocks", tuple(operator.index(b) for b in blocks))
        if self.gpus < 1:
            raise UserError(f"--gpus must be at least 1, got {self.gpus}")
        for name in ("pipefusion", "ulysses", "ring", "tensor", "distrifusion"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.cfg not in (1, 2):
            raise UserError(f"--cfg must be 1 or 2 (the guidance batch has two halves), "
                            f"got {self.cfg}")

    @property
    def sp(self) -> int:
        """Ranks sharing one pipeline stage's work: Ulysses x ring x tensor."""
        return self.ulysses * self.ring * self.tensor

    @property
    def product(self) -> int:
        """Product of the parallel degrees: the GPUs the configuration occupies."""
        return (self.cfg * self.pipefusion * self.ulysses * self.ring * self.tensor
                * self.distrifusion)

    @property
    def strategy(self) -> str:
        """``serial``, the one strategy in use, or ``hybrid`` when several combine."""
        used = [name for name in ("pipefusion", "ulysses", "ring", "tensor", "distrifusion",
                                  "cfg") if getattr(self, name) > 1]
        if not used:
            return "serial"
        return used[0] if len(used) == 1 else "hybrid"

    @property
    def stale(self) -> bool:
        """Whether some step attends to K,V from the previous step (warmup matters)."""
        return self.distrifusion > 1 or (self.pipefusion > 1 and self.patches > 1)

    @property
    def cold_start(self) -> bool:
        """Stale context from the first step (W=0): the first steps attend to empty K,V
        buffers, which can hurt image quality; the planner prefers warmed-up runs."""
        return self.stale and self.warmup == 0

    def label(self) -> str:
        """Short description, e.g. ``cfg2 x pipefusion2(M=4,W=1) x ulysses2``."""
        parts = []
        for name in ("cfg", "pipefusion", "ulysses", "ring", "tensor", "distrifusion"):
            d = getattr(self, name)
            if d > 1:
                extra = ""
                if name == "pipefusion":
                    extra = f"(M={self.patches},W={self.warmup})"
                elif name == "distrifusion":
                    extra = f"(W={self.warmup})"
                parts.append(f"{name}{d}{extra}")
        return " x ".join(parts) or "serial"

    def as_dict(self) -> dict:
        """The degrees and the strategy name, for JSON output."""
        d = asdict(self)
        d["strategy"] = self.strategy
        if d["stage_blocks"] is not None:
            d["stage_blocks"] = list(d["stage_blocks"])
        return d


_INT_FIELDS = ("gpus", "pipefusion", "patches", "warmup", "cfg", "ulysses", "ring", "tensor",
               "distrifusion")


def check_warmup(warmup: int, steps: int) -> None:
    """Raise ``UserError`` unless ``0 <= warmup <= steps`` (warmup steps are diffusion steps
    run on the whole image, so there cannot be more of them than steps). The one rule every
    command applies to ``--warmup``: ``validate`` for one configuration, ``sim.plan`` and
    ``sim.compare`` and the planner's search for each count they are given."""
    if warmup < 0 or warmup > steps:
        raise UserError(f"--warmup must be between 0 and the step count {steps}, "
                        f"got {warmup}")


def check_patches_need_pipefusion(patches: int | None, units: int, what: str) -> None:
    """Refuse patches asked for on a launch of one GPU or process (``units``, named ``what``),
    where no PipeFusion runs. ``validate`` lets a one-GPU schedule with patches through:
    profilers build such schedules on purpose to time patch-shaped ops."""
    if patches is not None and patches > 1 and units == 1:
        raise UserError(f"--patches applies to PipeFusion, which needs 2 or more {what}; on "
                        f"one use --patches 1")


def validate(wl: Workload, cfg: ParallelConfig) -> None:
    """Raise ``UserError`` for the first rule ``wl`` and ``cfg`` break."""
    m = wl.model
    grid = m.vae_factor * m.patch_size
    if wl.height <= 0 or wl.width <= 0:
        # WIDTHxHEIGHT, the order --resolution takes (the workload stores height first).
        raise UserError(f"resolution must be positive, got {wl.width}x{wl.height}")
    if wl.height % grid or wl.width % grid:
        raise UserError(f"resolution {wl.width}x{wl.height} is not a multiple of {grid} px "
                        f"(VAE factor {m.vae_factor} x patch {m.patch_size}) for {m.name}; "
                        f"use e.g. {wl.width // grid * grid or grid}x"
                        f"{wl.height // grid * grid or grid}")
    if wl.steps < 1:
        raise UserError(f"--steps must be at least 1, got {wl.steps}")
    # The counts and degrees themselves were checked when ``cfg`` was built
    # (``ParallelConfig.__post_init__``).
    if cfg.cfg == 2 and not m.cfg:
        raise UserError(f"{m.name} has no classifier-free guidance batch to split "
                        f"(guidance is embedded); use --cfg 1")
    if cfg.product != cfg.gpus:
        raise UserError(f"parallel degrees multiply to {cfg.product} but --gpus is "
                        f"{cfg.gpus}; the product of the degrees must equal the GPU count")
    if cfg.distrifusion > 1 and cfg.pipefusion * cfg.sp > 1:
        raise UserError("--distrifusion combines only with --cfg; set --pipefusion, "
                        "--ulysses, --ring and --tensor to 1")
    if cfg.pipefusion > m.num_blocks:
        raise UserError(f"{cfg.pipefusion} pipeline stages exceed the {m.num_blocks} blocks of "
                        f"{m.name}; use at most {m.num_blocks}")
    if m.heads % (cfg.ulysses * cfg.tensor):
        what = "Ulysses degree" if cfg.tensor == 1 else "Ulysses x tensor degree"
        raise UserError(f"the {what} {cfg.ulysses * cfg.tensor} does not divide the "
                        f"{m.heads} attention heads of {m.name}")
    check_warmup(cfg.warmup, wl.steps)
    rows, cols = m.token_grid(wl.height, wl.width)
    if cfg.patches < 1 or cfg.patches > rows:
        raise UserError(f"--patches must be between 1 and {rows} (the latent has {rows} rows "
                        f"of {m.patch_size}-row patches at {wl.height} px), got {cfg.patches}")
    if cfg.patches > 1 and cfg.pipefusion == 1 and cfg.gpus > 1:
        raise UserError("--patches applies to PipeFusion; with --pipefusion 1 use --patches 1")
    if cfg.distrifusion > rows:
        raise UserError(f"--distrifusion {cfg.distrifusion} exceeds the {rows} latent rows "
                        f"at {wl.height} px")
    seq = cfg.ulysses * cfg.ring
    if seq > 1:
        if any((r * cols) % seq for r in split_even(rows, cfg.patches)):
            raise UserError(f"each patch's tokens must split evenly over Ulysses x ring = {seq} "
                            f"ranks; at {wl.width}x{wl.height} with {cfg.patches} patches they "
                            f"do not (the patch grid is {rows}x{cols} tokens)")
    if cfg.stage_blocks is not None:
        sb = cfg.stage_blocks
        if len(sb) != cfg.pipefusion:
            raise UserError(f"--stage-blocks lists {len(sb)} stages but --pipefusion is "
                            f"{cfg.pipefusion}; give one count per stage")
        if any(c < 1 for c in sb) or sum(sb) != m.num_blocks:
            raise UserError(f"--stage-blocks must be positive counts summing to "
                            f"{m.num_blocks} (the blocks of {m.name}), got {list(sb)}")
