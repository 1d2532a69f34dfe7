"""Build registry models as real diffusers transformers from their configs, with seeded random
weights (no download), or load real weights from a local folder.

Shared by the executor and the profilers. Flux-size models do not fit on a laptop: pass
``device="meta"`` to inspect them without allocating.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sim.models import DiTModel


def diffusers_config(model: DiTModel, height: int = 1024) -> dict:
    """Config dict of ``model``'s diffusers class; ``height`` (px) sets ``sample_size``."""
    sample = height // model.vae_factor
    if model.diffusers_class == "PixArtTransformer2DModel":
        return dict(
            num_attention_heads=model.heads, attention_head_dim=model.head_dim,
            in_channels=model.latent_channels, out_channels=2 * model.latent_channels,
            num_layers=model.num_blocks, cross_attention_dim=model.hidden,
            sample_size=sample, patch_size=model.patch_size,
            caption_channels=model.caption_channels or model.hidden,
            # PixArt-alpha's resolution/aspect conditioning is off in the tiny configs; the
            # 1024 px checkpoints use it (diffusers sets it when sample_size == 128).
            use_additional_conditions=sample == 128 and model.name == "pixart-alpha",
        )
    if model.diffusers_class == "DiTTransformer2DModel":
        return dict(num_attention_heads=model.heads, attention_head_dim=model.head_dim,
                    in_channels=model.latent_channels, out_channels=2 * model.latent_channels,
                    num_layers=model.num_blocks, sample_size=sample,
                    patch_size=model.patch_size)
    if model.diffusers_class == "SD3Transformer2DModel":
        # sd3-medium's checkpoint: sample_size 128, pos_embed_max_size 192 (a 192x192 table
        # cropped to the image); larger images need a larger table.
        return dict(sample_size=sample, patch_size=model.patch_size,
                    in_channels=model.latent_channels, num_layers=model.num_blocks,
                    attention_head_dim=model.head_dim, num_attention_heads=model.heads,
                    joint_attention_dim=model.caption_channels or 4096,
                    caption_projection_dim=model.hidden,
                    pooled_projection_dim=model.pooled_dim or 2048,
                    out_channels=model.latent_channels,
                    pos_embed_max_size=max(192, sample // model.patch_size))
    if model.diffusers_class == "FluxTransformer2DModel":
        # Flux packs 2x2 latent pixels into one token of 4x the channels (patch_size 1).
        return dict(patch_size=1, in_channels=model.latent_channels * 4,
                    num_layers=model.double_blocks,
                    num_single_layers=model.num_blocks - model.double_blocks,
                    attention_head_dim=model.head_dim, num_attention_heads=model.heads,
                    joint_attention_dim=model.caption_channels or 4096,
                    pooled_projection_dim=model.pooled_dim or 768, guidance_embeds=True,
                    axes_dims_rope=rope_axes(model.head_dim))
    if model.diffusers_class == "HunyuanDiT2DModel":
        return dict(num_attention_heads=model.heads, attention_head_dim=model.head_dim,
                    in_channels=model.latent_channels, patch_size=model.patch_size,
                    sample_size=sample, num_layers=model.num_blocks,
                    mlp_ratio=model.mlp_ratio, cross_attention_dim=1024)
    raise ValueError(f"no diffusers builder for {model.diffusers_class}")


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Flux's rotary dimensions per position axis (text/index, row, column): FLUX.1-dev's
    (16, 56, 56) for its head size 128; smaller heads keep that proportion (each even)."""
    if head_dim == 128:
        return (16, 56, 56)
    first = max(2, head_dim // 8 // 2 * 2)
    rest = (head_dim - first) // 2 // 2 * 2
    return (head_dim - 2 * rest, rest, rest)


def build_transformer(model: DiTModel, height: int = 1024, seed: int = 0,
                      dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.nn.Module:
    """The diffusers transformer of ``model`` with weights drawn from ``seed``, in eval mode."""
    import diffusers

    cls = getattr(diffusers, model.diffusers_class)
    cfg = diffusers_config(model, height)
    torch.manual_seed(seed)
    if device == "meta":
        with torch.device("meta"):
            return cls(**cfg).eval()
    net = cls(**cfg)
    return net.to(device=device, dtype=dtype).eval()


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32,
                     device: str = "cpu") -> torch.nn.Module:
    """Real weights from a local folder: a transformer saved with ``save_pretrained`` or a
    pipeline folder holding ``transformer/``."""
    import diffusers

    path = Path(path)
    if (path / "transformer").is_dir():
        path = path / "transformer"
    # ConfigMixin.load_config cannot be called on the mixin itself (it has no config_name);
    # the class name is all that is needed before the class's own from_pretrained.
    cfg = json.loads((path / "config.json").read_text())
    cls = getattr(diffusers, cfg["_class_name"])
    return cls.from_pretrained(str(path), torch_dtype=dtype).to(device).eval()
