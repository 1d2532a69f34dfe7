"""Inputs of an executor run: which model (registry or local checkpoint), its prompt
embeddings (from a file or drawn from a seed), and the parts of the transformer one stage keeps.

Everything here that can fail on user input raises ``UserError`` with a one-line message.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from executor.interpreter import PromptInputs
from executor.mmdit import (
    FLUX,
    JOINT_PROMPT_KEYS,
    MMDIT_CLASSES,
    JointPromptInputs,
    keep_mmdit_stage,
)
from sim.errors import UserError
from sim.models import DiTModel, get_model

PROMPT_KEYS = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
               "negative_prompt_attention_mask")
SUPPORTED_CLASS = "PixArtTransformer2DModel"
# The diffusers classes the executor runs: PixArt and the MM-DiT models (executor.mmdit).
SUPPORTED_CLASSES = (SUPPORTED_CLASS, *MMDIT_CLASSES)
# PixArt-alpha's T5 prompt length; used for local checkpoints when no embeddings are given.
DEFAULT_TEXT_TOKENS = 120


def registry_model(name: str) -> DiTModel:
    """The registry model ``name``, if the executor can run it (PixArt family)."""
    model = get_model(name)
    if model.diffusers_class not in SUPPORTED_CLASSES:
        raise UserError(f"the executor runs {', '.join(SUPPORTED_CLASSES)} models (pixart-*, "
                        f"sd3-*, sd35-large, flux-*); {model.name} is a "
                        f"{model.diffusers_class}")
    return model


def _transformer_dir(path: Path) -> Path:
    return path / "transformer" if (path / "transformer").is_dir() else path


def local_model(path: str | Path) -> DiTModel:
    """A registry-style description of a local diffusers checkpoint (a folder written by
    ``PixArtTransformer2DModel.save_pretrained`` or a pipeline folder), read from its
    ``config.json`` without loading weights. ``params`` is filled in after loading."""
    path = Path(path)
    cfg_file = _transformer_dir(path) / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"--model-dir {path}: no config.json (expected a folder written by "
                        f"save_pretrained, or a pipeline folder with transformer/)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--model-dir {path}: cannot read {cfg_file.name}: {e}") from None
    cls = cfg.get("_class_name", "")
    if cls not in SUPPORTED_CLASSES:
        raise UserError(f"--model-dir {path}: the executor runs {', '.join(SUPPORTED_CLASSES)} "
                        f"checkpoints, this one is '{cls}'")
    if cls in MMDIT_CLASSES:
        return _local_mmdit(cfg, cls, path, cfg_file)
    heads = int(cfg.get("num_attention_heads", 16))
    head_dim = int(cfg.get("attention_head_dim", 72))
    hidden = heads * head_dim
    return DiTModel(
        name=f"local:{path.name}", diffusers_class=cls, family="cross",
        num_blocks=int(cfg.get("num_layers", 28)), hidden=hidden, heads=heads,
        head_dim=head_dim, text_tokens=DEFAULT_TEXT_TOKENS,
        latent_channels=int(cfg.get("in_channels", 4)), params=0.0, default_steps=20,
        cfg=True, text_encoder_params=0.0, vae_params=0.0,
        # The PixArt pipelines share one default; a checkpoint's config does not record it.
        guidance_scale=get_model("pixart-alpha").guidance_scale,
        patch_size=int(cfg.get("patch_size", 2)), text_dim=hidden,
        caption_channels=int(cfg.get("caption_channels") or hidden),
        sources={"all": f"read from {cfg_file}"},
    )


def _local_mmdit(cfg: dict, cls: str, path: Path, cfg_file: Path) -> DiTModel:
    """The registry-style description of a local SD3 or Flux checkpoint; the registry model of
    the same family gives what a config does not record (text tokens, steps, guidance)."""
    flux = cls == FLUX
    base = get_model("flux-dev" if flux else "sd3-medium")
    heads = int(cfg.get("num_attention_heads", base.heads))
    head_dim = int(cfg.get("attention_head_dim", base.head_dim))
    double = int(cfg.get("num_layers", base.double_blocks if flux else base.num_blocks))
    single = int(cfg.get("num_single_layers", 0)) if flux else 0
    channels = int(cfg.get("in_channels", 64 if flux else 16)) // (4 if flux else 1)
    return replace(base, name=f"local:{path.name}", num_blocks=double + single,
                   double_blocks=double if flux else 0, hidden=heads * head_dim, heads=heads,
                   head_dim=head_dim, latent_channels=channels, params=0.0,
                   text_encoder_params=0.0, vae_params=0.0,
                   caption_channels=int(cfg.get("joint_attention_dim", base.caption_channels)),
                   pooled_dim=int(cfg.get("pooled_projection_dim", base.pooled_dim)),
                   sources={"all": f"read from {cfg_file}; text tokens, steps and guidance "
                            f"from {base.name}"})


def with_counted_params(model: DiTModel, net: torch.nn.Module) -> DiTModel:
    """``model`` with ``params`` set to the loaded transformer's parameter count."""
    return replace(model, params=float(sum(p.numel() for p in net.parameters())))


def random_prompts(model: DiTModel, seed: int, text_tokens: int | None = None
                   ) -> PromptInputs | JointPromptInputs:
    """Seeded random prompt embeddings (standard normal, ``(1, tokens, caption_channels)``)
    with all-ones masks (PixArt) or pooled embeddings ``(1, pooled_dim)`` (SD3, Flux), for
    runs without a text encoder. The generator is seeded with ``seed + 1`` so the embeddings
    do not repeat the initial noise drawn from ``seed``."""
    tokens = text_tokens or model.text_tokens or DEFAULT_TEXT_TOKENS
    width = model.caption_channels or model.hidden
    gen = torch.Generator().manual_seed(seed + 1)
    if model.diffusers_class in MMDIT_CLASSES:
        pe = torch.randn(1, tokens, width, generator=gen)
        pp = torch.randn(1, model.pooled_dim, generator=gen)
        ne = torch.randn(1, tokens, width, generator=gen)
        npp = torch.randn(1, model.pooled_dim, generator=gen)
        return JointPromptInputs(pe, pp, ne, npp)
    pe = torch.randn(1, tokens, width, generator=gen)
    ne = torch.randn(1, tokens, width, generator=gen)
    mask = torch.ones(1, tokens, dtype=torch.long)
    return PromptInputs(pe, mask, ne, mask.clone())


def load_prompts(path: str | Path, model: DiTModel) -> PromptInputs:
    """Prompt embeddings from a ``torch.save``d dict with the keys of ``PROMPT_KEYS``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--prompt-embeds {path} is a folder; give the torch.save'd file")
    if not path.is_file():
        raise UserError(f"--prompt-embeds {path}: no such file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"--prompt-embeds {path}: cannot load ({type(e).__name__})") from None
    mmdit = model.diffusers_class in MMDIT_CLASSES
    keys = JOINT_PROMPT_KEYS if mmdit else PROMPT_KEYS
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise UserError(f"--prompt-embeds {path}: expected a dict with keys "
                        f"{', '.join(keys)}")
    width = model.caption_channels or model.hidden
    for k in ("prompt_embeds", "negative_prompt_embeds"):
        t = d[k]
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 1 \
                or t.shape[-1] != width:
            raise UserError(f"--prompt-embeds {path}: {k} must have shape (1, tokens, {width}) "
                            f"for {model.name}, got {tuple(getattr(t, 'shape', ()))}")
        if t.shape[1] == 0:
            raise UserError(f"--prompt-embeds {path}: {k} has no tokens; give at least one")
        if not t.is_floating_point():
            raise UserError(f"--prompt-embeds {path}: {k} must hold floating-point values, "
                            f"got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"--prompt-embeds {path}: {k} holds NaN or infinite values; "
                            f"every latent would come out NaN")
    if d["prompt_embeds"].shape[1] != d["negative_prompt_embeds"].shape[1]:
        raise UserError(f"--prompt-embeds {path}: prompt_embeds has "
                        f"{d['prompt_embeds'].shape[1]} tokens, negative_prompt_embeds "
                        f"{d['negative_prompt_embeds'].shape[1]}; the guidance batch needs the "
                        f"same count (pad the shorter one and mask the padding)")
    if mmdit:
        for k in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
            t = d[k]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (1, model.pooled_dim) \
                    or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise UserError(f"--prompt-embeds {path}: {k} must be a finite floating-point "
                                f"tensor of shape (1, {model.pooled_dim}) for {model.name}, got "
                                f"{tuple(getattr(t, 'shape', ()))}")
        return JointPromptInputs(*(d[k] for k in JOINT_PROMPT_KEYS))
    for k, e in (("prompt_attention_mask", "prompt_embeds"),
                 ("negative_prompt_attention_mask", "negative_prompt_embeds")):
        t = d[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(d[e].shape[:2]):
            raise UserError(f"--prompt-embeds {path}: {k} must have shape "
                            f"{tuple(d[e].shape[:2])}, got {tuple(getattr(t, 'shape', ()))}")
    return PromptInputs(*(d[k] for k in PROMPT_KEYS))


def keep_stage(net: torch.nn.Module, first: int, last: int, is_first: bool,
               is_last: bool) -> None:
    """Drop the parts of ``net`` a stage holding blocks ``first..last`` never uses, so its
    memory holds only its share of the weights (the conditioning embedders stay everywhere).
    Block indices are kept: dropped blocks become ``Identity``."""
    if type(net).__name__ in MMDIT_CLASSES:
        keep_mmdit_stage(net, first, last, is_first, is_last)
        return
    blocks = net.transformer_blocks
    for i in range(len(blocks)):
        if not first <= i <= last:
            blocks[i] = torch.nn.Identity()
    if not is_first:
        net.pos_embed = None  # its positional table is tokens x hidden: large at high res
    if not is_last:
        net.proj_out = None
        net.norm_out = None
