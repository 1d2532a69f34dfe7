"""DiT model registry: architecture numbers, token counts, FLOPs and bytes per block.

Every number carries its source. FLOPs count 2 per multiply-add, for batch 1; callers multiply
by the effective batch. Token counts are image tokens after the patch embedding.

Block families:

- ``cross``: self-attention over image tokens, cross-attention to text, MLP (PixArt, HunyuanDiT).
- ``dit``: self-attention and MLP only, conditioned by a class label (DiT-XL/2).
- ``joint``: MM-DiT joint attention over image and text tokens with separate weights per stream
  (SD3 blocks, Flux double-stream blocks).
- ``single``: Flux single-stream blocks (one set of weights over the concatenated sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.errors import UserError

_DESIGN = "docs/design.md#model-architecture-table"


@dataclass(frozen=True)
class DiTModel:
    """Architecture numbers of one DiT, enough to cost and partition it."""

    name: str
    diffusers_class: str
    family: str  # "cross", "dit", "joint" or "flux" (double then single blocks)
    num_blocks: int  # all transformer blocks (Flux: double + single)
    hidden: int
    heads: int
    head_dim: int
    text_tokens: int
    latent_channels: int
    params: float  # transformer parameters, whole model
    default_steps: int
    cfg: bool  # classifier-free guidance runs a batch of two
    text_encoder_params: float
    vae_params: float
    guidance_scale: float  # the pipeline's default classifier-free guidance scale (_GUIDANCE)
    patch_size: int = 2
    vae_factor: int = 8
    mlp_ratio: float = 4.0
    text_dim: int = 0  # width of the text embeddings entering cross-attention K,V (0: = hidden)
    double_blocks: int = 0  # Flux: how many of num_blocks are double-stream
    long_skips: bool = False  # HunyuanDiT: second-half blocks take a skip from their mirror
    kernels_per_block: int = 30  # kernel launches per block in eager PyTorch (see _KERNELS)
    # ATen operators one block dispatches in eager diffusers (_HOST_OPS): regular blocks, and
    # Flux's single-stream blocks (the blocks after ``double_blocks``).
    host_ops: tuple[int, int] = (0, 0)
    caption_channels: int = 0  # width of the text encoder's output (before caption projection)
    pooled_dim: int = 0  # MM-DiT: width of the pooled text embedding (SD3 2048, Flux 768)
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    # ---- tokens ---------------------------------------------------------------------------
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of image tokens for an image of ``height`` x ``width`` pixels."""
        g = self.vae_factor * self.patch_size
        return height // g, width // g

    def image_tokens(self, height: int, width: int | None = None) -> int:
        """Image tokens ``(H/8/patch)·(W/8/patch)`` for an image in pixels."""
        rows, cols = self.token_grid(height, height if width is None else width)
        return rows * cols

    @property
    def batch(self) -> int:
        """Effective batch of one image: 2 with classifier-free guidance, else 1."""
        return 2 if self.cfg else 1

    # ---- per-block cost -------------------------------------------------------------------
    def block_kind(self, index: int) -> str:
        """Family of block ``index`` (Flux mixes double- and single-stream blocks)."""
        if self.family == "flux":
            return "joint" if index < self.double_blocks else "single"
        return self.family

    def block_flops(self, index: int, q: int, kv: int) -> float:
        """FLOPs of block ``index`` for ``q`` query image tokens attending over ``kv`` image
        tokens, batch 1. Under PipeFusion ``q`` is a patch and ``kv`` the full sequence."""
        h = self.hidden
        t = self.text_tokens
        kind = self.block_kind(index)
        if kind == "cross":
            td = self.text_dim or h
            # self-attn QKV+out 8h², cross-attn Q+out 4h², MLP 2·2·r·h² per token; K,V of text.
            per_token = (12.0 + 4.0 * self.mlp_ratio) * h * h
            flops = per_token * q + 4.0 * q * kv * h + 4.0 * q * t * h + 4.0 * t * td * h
            if self.long_skips and index >= self.num_blocks // 2 + 1:
                flops += 4.0 * q * h * h  # skip_linear (2h -> h) on the concatenation
            return flops
        if kind == "dit":
            return (8.0 + 4.0 * self.mlp_ratio) * h * h * q + 4.0 * q * kv * h
        # Joint attention: text tokens ride along with every call and see the whole sequence.
        nq = q + t
        nkv = kv + t
        return 24.0 * nq * h * h + 4.0 * nq * nkv * h

    def block_attention_flops(self, index: int, q: int, kv: int) -> float:
        """The attention-core part of ``block_flops`` (scores and weighted sum, self and
        cross), the part that sequence parallelism distributes across heads or K,V blocks."""
        h = self.hidden
        kind = self.block_kind(index)
        if kind == "cross":
            return 4.0 * q * kv * h + 4.0 * q * self.text_tokens * h
        if kind == "dit":
            return 4.0 * q * kv * h
        t = self.text_tokens
        return 4.0 * (q + t) * (kv + t) * h

    def block_params(self, index: int) -> float:
        """Weights of block ``index`` in parameters."""
        h = self.hidden
        kind = self.block_kind(index)
        mlp = 2.0 * self.mlp_ratio * h * h
        if kind == "cross":
            td = self.text_dim or h
            p = 4 * h * h + 2 * h * h + 2 * td * h + mlp + 6 * h  # self, cross, MLP, modulation
            if self.long_skips and index >= self.num_blocks // 2 + 1:
                p += 2 * h * h
            return p
        if kind == "dit":
            return 4 * h * h + mlp + 6 * h * h  # attention, MLP, adaLN-zero (h -> 6h)
        if kind == "joint":
            return 2 * (4 * h * h + mlp + 6 * h * h)  # two streams, each with its own adaLN
        # Flux single block: QKV (3h²) and MLP-in (4h²) fused, out (5h -> h), modulation (h -> 3h)
        return 3 * h * h + 4 * h * h + 5 * h * h + 3 * h * h

    def block_activation_elems(self, q: int, kv: int) -> float:
        """Elements of activations read or written by one block on ``q`` tokens, batch 1
        (for the memory-bandwidth term of the roofline): each projection reads and writes a
        row of ``hidden``, the MLP a row of ``r·hidden``, attention reads K,V of ``kv`` rows."""
        h = self.hidden
        t = self.text_tokens
        if self.family in ("joint", "flux"):
            q, kv = q + t, kv + t
        return 16.0 * q * h + 2.0 * self.mlp_ratio * q * h + 2.0 * kv * h

    # ---- whole-model numbers --------------------------------------------------------------
    def blocks_params(self, first: int, last: int) -> float:
        """Parameters of blocks ``first..last`` inclusive."""
        return sum(self.block_params(i) for i in range(first, last + 1))

    @property
    def outside_params(self) -> float:
        """Parameters outside the blocks (embeddings, final layer): what the registry total
        leaves after the per-block formulas, never negative."""
        return max(0.0, self.params - self.blocks_params(0, self.num_blocks - 1))

    def embed_flops(self, q: int) -> float:
        """Patch embedding (a linear of ``patch²·C -> hidden``) plus time/text embeddings."""
        cin = self.patch_size**2 * self.latent_channels
        text = self.text_tokens * (self.caption_channels or self.text_dim or self.hidden)
        return 2.0 * cin * self.hidden * q + 2.0 * text * self.hidden

    def condition_flops(self) -> float:
        """One step's timestep conditioning, batch 1: the sinusoidal embedding's MLP
        (256 -> h -> h) and the adaLN projection (h -> 6h)."""
        h = self.hidden
        return 2.0 * (256 * h + h * h + 6 * h * h)

    def final_flops(self, q: int) -> float:
        """Final norm and linear back to ``patch²·C_out`` channels."""
        cout = self.patch_size**2 * self.latent_channels * 2
        return 2.0 * self.hidden * cout * q

    def block_host_ops(self, index: int) -> int:
        """ATen operators block ``index`` dispatches in one eager forward (host time)."""
        single = self.family == "flux" and index >= self.double_blocks
        return self.host_ops[1] if single else self.host_ops[0]

    def stale_kv_elems(self, kv: int) -> float:
        """Elements of one attention layer's full-sequence K and V buffer, batch 1."""
        return 2.0 * kv * self.hidden


# Kernel launches per block in eager diffusers (norms, modulation, each projection, attention,
# residual adds, activation), counted from the diffusers block forward methods (0.42):
# BasicTransformerBlock as used by PixArt ~34, DiT ~26, JointTransformerBlock ~48 (two streams),
# FluxTransformerBlock ~52, FluxSingleTransformerBlock ~22, HunyuanDiTBlock ~38.
_KERNELS = {"pixart": 34, "dit": 26, "sd3": 48, "flux": 37, "hunyuan": 38}

# Default guidance scale of each model's diffusers pipeline (``guidance_scale`` of
# ``__call__``, diffusers 0.42.1): PixArtAlphaPipeline and PixArtSigmaPipeline 4.5,
# DiTPipeline 4.0, StableDiffusion3Pipeline 7.0, FluxPipeline 3.5 (Flux-dev embeds it as an
# input, no guidance batch), HunyuanDiTPipeline 5.0.
_GUIDANCE = {"pixart": 4.5, "dit": 4.0, "sd3": 7.0, "flux": 3.5, "hunyuan": 5.0}

_T5_XXL = 4.7e9  # T5-XXL encoder, about 4.7 B parameters (_T5_SRC)
_T5_SRC = "T5-XXL, docs/design.md#text-encoders-and-vae"
_SD_VAE = 83.7e6  # diffusers AutoencoderKL (SD 1.x/PixArt VAE): 83.65 M parameters
# ATen operators one block dispatches in one eager forward, counted by
# ``python -m profiles.host_ops`` (diffusers 0.42.1, torch 2.13): PixArt 78, DiT 81,
# JointTransformerBlock 119, FluxTransformerBlock 158, FluxSingleTransformerBlock 83,
# HunyuanDiTBlock 116. Views and reshapes count: they cost dispatch time if no kernel.
_HOST_OPS = {"pixart": (78, 0), "dit": (81, 0), "sd3": (119, 0), "flux": (158, 83),
             "hunyuan": (116, 0)}
_HOST_SRC = "counted by python -m profiles.host_ops (diffusers 0.42.1, torch 2.13)"

# Text widths of the MM-DiT checkpoints' transformer configs: joint_attention_dim 4096 (T5-XXL
# output) for SD3, SD3.5 and FLUX.1-dev; pooled_projection_dim 2048 (CLIP-L + bigG pooled) for
# SD3/SD3.5 and 768 (CLIP-L pooled) for Flux.
_MMDIT_DIMS = "transformer/config.json of the SD3, SD3.5 and FLUX.1-dev checkpoints"
_SD3_VAE = 83.8e6  # SD3/Flux 16-channel AutoencoderKL, same layout as SD-VAE, 83.8 M parameters


# Parameter counts of the MM-DiT test configurations, counted from the diffusers models built
# from their configs (executor.diffusers_models.diffusers_config).
SD3_TINY_PARAMS = 589_248
FLUX_TINY_PARAMS = 489_664
SD3_SMALL_PARAMS = 41_575_744
FLUX_SMALL_PARAMS = 31_329_088


def _src(**extra: str) -> dict[str, str]:
    base = {
        "blocks/hidden/heads/text_tokens/latent_channels/params/steps/cfg": _DESIGN,
        "vae_params": "diffusers AutoencoderKL config (block_out_channels 128,256,512,512)",
        "kernels_per_block": "counted from diffusers 0.42 block forward methods",
        "host_ops": _HOST_SRC,
        "guidance_scale": "diffusers 0.42.1 pipeline __call__ default (see _GUIDANCE)",
    }
    base.update(extra)
    return base


def _arch(key: str) -> dict:
    """The fields every model of one architecture shares (``key``: pixart, dit, sd3, flux,
    hunyuan): kernels and host ops per block and the pipeline's default guidance scale, each
    from its table above."""
    return {"kernels_per_block": _KERNELS[key], "host_ops": _HOST_OPS[key],
            "guidance_scale": _GUIDANCE[key]}


def _test_sources() -> dict[str, str]:
    """Sources of a test configuration (a fresh dict per model)."""
    return {"all": "test configuration; params counted from the diffusers model"}


MODELS: dict[str, DiTModel] = {
    m.name: m
    for m in [
        DiTModel(
            "pixart-alpha", "PixArtTransformer2DModel", "cross", 28, 1152, 16, 72, 120, 4,
            0.61e9, 20, True, _T5_XXL, _SD_VAE, text_dim=1152, caption_channels=4096,
            sources=_src(text_encoder=_T5_SRC), **_arch("pixart"),
        ),
        DiTModel(
            "pixart-sigma", "PixArtTransformer2DModel", "cross", 28, 1152, 16, 72, 300, 4,
            0.61e9, 20, True, _T5_XXL, _SD_VAE, text_dim=1152, caption_channels=4096,
            sources=_src(text_encoder=_T5_SRC), **_arch("pixart"),
        ),
        DiTModel(
            "dit-xl-2", "DiTTransformer2DModel", "dit", 28, 1152, 16, 72, 0, 4,
            0.75e9, 50, True, 0.0, _SD_VAE,
            sources=_src(text_encoder="none: class-label conditioning"), **_arch("dit"),
        ),
        DiTModel(
            "sd3-medium", "SD3Transformer2DModel", "joint", 24, 1536, 24, 64, 333, 16,
            2.03e9, 28, True, _T5_XXL + 0.8e9, _SD3_VAE, caption_channels=4096, pooled_dim=2048,
            sources=_src(text_encoder=_T5_SRC + " + CLIP-L/G (~0.8 B, SD3 paper)",
                         caption_channels=_MMDIT_DIMS),
            **_arch("sd3"),
        ),
        DiTModel(
            "sd35-large", "SD3Transformer2DModel", "joint", 38, 2432, 38, 64, 333, 16,
            8.06e9, 28, True, _T5_XXL + 0.8e9, _SD3_VAE, caption_channels=4096, pooled_dim=2048,
            sources=_src(text_encoder=_T5_SRC + " + CLIP-L/G (~0.8 B, SD3 paper)",
                         caption_channels=_MMDIT_DIMS),
            **_arch("sd3"),
        ),
        DiTModel(
            "flux-dev", "FluxTransformer2DModel", "flux", 57, 3072, 24, 128, 512, 16,
            11.9e9, 28, False, _T5_XXL + 0.12e9, _SD3_VAE, double_blocks=19,
            caption_channels=4096, pooled_dim=768,
            sources=_src(text_encoder=_T5_SRC + " + CLIP-L (0.12 B)", caption_channels=_MMDIT_DIMS,
                         double_blocks=_DESIGN + ": 19 double + 38 single"),
            **_arch("flux"),
        ),
        DiTModel(
            "hunyuan-dit", "HunyuanDiT2DModel", "cross", 40, 1408, 16, 88, 333, 4,
            1.50e9, 50, True, 1.6e9 + 0.35e9, _SD_VAE, mlp_ratio=4.3637, text_dim=1024,
            long_skips=True,
            sources=_src(text_encoder="mT5-XL (~1.6 B) + bilingual CLIP (~0.35 B), HunyuanDiT "
                         "paper", mlp_ratio="HunyuanDiT config: mlp_ratio 4.3637"),
            **_arch("hunyuan"),
        ),
        # Small PixArt configurations for tests and CPU validation runs of the executor. Their
        # parameter counts are those of the diffusers model built from the config (counted).
        DiTModel(
            "pixart-tiny", "PixArtTransformer2DModel", "cross", 4, 64, 2, 32, 8, 4,
            324_192, 8, True, 0.0, 0.0, text_dim=64, caption_channels=64,
            sources=_test_sources(),
            **_arch("pixart"),
        ),
        DiTModel(
            "pixart-small", "PixArtTransformer2DModel", "cross", 8, 384, 6, 64, 16, 4,
            20_332_448, 8, True, 0.0, 0.0, text_dim=384, caption_channels=256,
            sources=_test_sources(),
            **_arch("pixart"),
        ),
        # MM-DiT test configurations (SD3: joint blocks with CFG; Flux: double then single
        # blocks, guidance embedded), named like the PixArt ones. Parameters counted likewise.
        DiTModel(
            "sd3-tiny", "SD3Transformer2DModel", "joint", 4, 64, 2, 32, 8, 16,
            SD3_TINY_PARAMS, 8, True, 0.0, 0.0, caption_channels=32, pooled_dim=32,
            sources=_test_sources(),
            **_arch("sd3"),
        ),
        DiTModel(
            "flux-tiny", "FluxTransformer2DModel", "flux", 4, 64, 2, 32, 8, 16,
            FLUX_TINY_PARAMS, 8, False, 0.0, 0.0, double_blocks=2, caption_channels=32,
            pooled_dim=32, sources=_test_sources(),
            **_arch("flux"),
        ),
        DiTModel(
            "sd3-small", "SD3Transformer2DModel", "joint", 8, 384, 6, 64, 16, 16,
            SD3_SMALL_PARAMS, 8, True, 0.0, 0.0, caption_channels=256, pooled_dim=256,
            sources=_test_sources(),
            **_arch("sd3"),
        ),
        DiTModel(
            "flux-small", "FluxTransformer2DModel", "flux", 8, 384, 6, 64, 16, 16,
            FLUX_SMALL_PARAMS, 8, False, 0.0, 0.0, double_blocks=4, caption_channels=256,
            pooled_dim=256, sources=_test_sources(),
            **_arch("flux"),
        ),
    ]
}
ALIASES = {"pixart": "pixart-alpha", "sd3": "sd3-medium", "flux": "flux-dev",
           "hunyuan": "hunyuan-dit", "dit": "dit-xl-2", "sd35": "sd35-large"}


def get_model(name: str) -> DiTModel:
    """Look a model up by name or alias; raises ``UserError`` listing the known names."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        known = ", ".join(sorted(MODELS) + sorted(ALIASES))
        raise UserError(f"unknown model '{name}'; choose one of: {known}")
    return MODELS[key]


# VAE decoder FLOPs per output pixel, derived from the SD-VAE decoder layout (3x3 convs:
# 512 ch at 1/8 and 1/4 scale, 256 ch at 1/2, 128 ch at full scale, ~7 convs per level plus the
# mid block): about 1.8 TFLOP for a 512x512 image, i.e. ~6.9 MFLOP per pixel.
VAE_DECODE_FLOPS_PER_PIXEL = 6.9e6


def vae_decode_flops(height: int, width: int) -> float:
    """FLOPs of one VAE decode of a ``height`` x ``width`` image (batch 1)."""
    return VAE_DECODE_FLOPS_PER_PIXEL * height * width


def text_encode_flops(model: DiTModel, prompts: int) -> float:
    """FLOPs of encoding ``prompts`` prompts of ``model.text_tokens`` tokens (2 per param)."""
    return 2.0 * model.text_encoder_params * max(model.text_tokens, 77) * prompts
