"""What the user asks for: the workload and the parallel configuration, and the rules they
must obey. Every broken rule raises ``UserError`` with the rule in one line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sim.errors import UserError
from sim.models import DiTModel

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Workload:
    """One image request: model, size in pixels, diffusion steps, dtype, and which of the
    non-parallel parts (text encoder, VAE decode) the latency should include."""

    model: DiTModel
    height: int
    width: int
    steps: int
    dtype: str = "bf16"
    text_encoder: bool = True
    vae: bool = True

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        return self.model.image_tokens(self.height, self.width)


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of each parallel strategy; their product is the GPU count. ``stage_blocks``
    optionally lists the number of blocks of each PipeFusion stage."""

    gpus: int
    pipefusion: int = 1
    patches: int = 1
    warmup: int = 0
    stage_blocks: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def strategy(self) -> str:
        return "serial" if self.gpus == 1 and self.pipefusion == 1 else "pipefusion"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["strategy"] = self.strategy
        if d["stage_blocks"] is not None:
            d["stage_blocks"] = list(d["stage_blocks"])
        return d


def validate(wl: Workload, cfg: ParallelConfig) -> None:
    """Raise ``UserError`` for the first rule ``wl`` and ``cfg`` break."""
    m = wl.model
    grid = m.vae_factor * m.patch_size
    if wl.height <= 0 or wl.width <= 0:
        raise UserError(f"resolution must be positive, got {wl.height}x{wl.width}")
    if wl.height % grid or wl.width % grid:
        raise UserError(f"resolution {wl.height}x{wl.width} is not a multiple of {grid} px "
                        f"(VAE factor {m.vae_factor} x patch {m.patch_size}) for {m.name}; "
                        f"use e.g. {wl.height // grid * grid or grid}")
    if wl.steps < 1:
        raise UserError(f"--steps must be at least 1, got {wl.steps}")
    if cfg.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {cfg.gpus}")
    if cfg.pipefusion < 1:
        raise UserError(f"--pipefusion must be at least 1, got {cfg.pipefusion}")
    if cfg.pipefusion != cfg.gpus:
        raise UserError(f"parallel degrees multiply to {cfg.pipefusion} but --gpus is "
                        f"{cfg.gpus}; the product of the degrees must equal the GPU count")
    if cfg.pipefusion > m.num_blocks:
        raise UserError(f"{cfg.pipefusion} pipeline stages exceed the {m.num_blocks} blocks of "
                        f"{m.name}; use at most {m.num_blocks}")
    if cfg.warmup < 0 or cfg.warmup > wl.steps:
        raise UserError(f"--warmup must be between 0 and the step count {wl.steps}, "
                        f"got {cfg.warmup}")
    rows, _ = m.token_grid(wl.height, wl.width)
    if cfg.patches < 1 or cfg.patches > rows:
        raise UserError(f"--patches must be between 1 and {rows} (the latent has {rows} rows "
                        f"of {m.patch_size}-row patches at {wl.height} px), got {cfg.patches}")
    if cfg.stage_blocks is not None:
        sb = cfg.stage_blocks
        if len(sb) != cfg.pipefusion:
            raise UserError(f"--stage-blocks lists {len(sb)} stages but --pipefusion is "
                            f"{cfg.pipefusion}; give one count per stage")
        if any(c < 1 for c in sb) or sum(sb) != m.num_blocks:
            raise UserError(f"--stage-blocks must be positive counts summing to "
                            f"{m.num_blocks} (the blocks of {m.name}), got {list(sb)}")
