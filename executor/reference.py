"""The diffusers reference: ``PixArtAlphaPipeline`` run offline on prompt embeddings, which the
executor's final latents must equal (tests, benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from executor.interpreter import PromptInputs


def tiny_vae():
    """A randomly initialised ``AutoencoderKL`` with the SD layout's 8x down-sampling (four
    levels) but 8 channels per level: the pipeline needs a VAE object for its scale factor,
    and ``output_type="latent"`` never runs it."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
        layers_per_block=1)


def reference_pipeline(net: torch.nn.Module, scheduler=None):
    """``PixArtAlphaPipeline`` around ``net`` with no text encoder, a tiny VAE and
    ``DPMSolverMultistepScheduler()`` (or ``scheduler``)."""
    import diffusers

    pipe = diffusers.PixArtAlphaPipeline(
        transformer=net, scheduler=scheduler or diffusers.DPMSolverMultistepScheduler(),
        vae=tiny_vae(), text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_latents(pipe, prompts: PromptInputs, seed: int, steps: int, height: int,
                      width: int, guidance_scale: float | None = None) -> torch.Tensor:
    """Final latents of the pipeline (before the VAE), ``(1, C, height/8, width/8)``;
    ``guidance_scale`` None leaves the pipeline's own default (the registry's
    ``DiTModel.guidance_scale`` of the PixArt models)."""
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    with torch.no_grad():
        out = pipe(prompt=None, negative_prompt=None, **prompts.as_dict(),
                   generator=torch.Generator().manual_seed(seed), output_type="latent",
                   use_resolution_binning=False, num_inference_steps=steps, height=height,
                   width=width, **guidance)
    return out.images


def timed_pipeline_loop(pipe, prompts: PromptInputs, seed: int, steps: int, height: int,
                        width: int, guidance_scale: float | None = None,
                        sync: Callable[[], None] | None = None
                        ) -> tuple[torch.Tensor, float]:
    """Final latents and the seconds of the pipeline's denoising loop alone: from the first
    transformer call to the return of the last scheduler step (hooks, so the pipeline's own
    code runs unchanged). ``sync`` (``torch.cuda.synchronize`` on a GPU) is called before the
    first mark and after the last step only: the device's queue is empty when the clock
    starts and done when it stops, while the loop in between keeps queueing ahead as the
    pipeline does."""
    marks: list[float] = []

    def pre_hook(module, args, kwargs):
        if not marks:
            if sync is not None:
                sync()
            marks.append(time.perf_counter())

    handle = pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    sched = pipe.scheduler
    original_step = sched.step
    ends: list[float] = []

    def step(*args, **kwargs):
        out = original_step(*args, **kwargs)
        # The scheduler holds the loop's timesteps once the pipeline has set them.
        if sync is not None and len(ends) + 1 == len(sched.timesteps):
            sync()
        ends.append(time.perf_counter())
        return out

    sched.step = step
    try:
        latents = reference_latents(pipe, prompts, seed, steps, height, width, guidance_scale)
    finally:
        handle.remove()
        del sched.step  # back to the class method
    return latents, ends[-1] - marks[0]


# ---- MM-DiT: SD3 and Flux -----------------------------------------------------------------------
def flow_scheduler(model_class: str):
    """The ``FlowMatchEulerDiscreteScheduler`` of the public checkpoints'
    ``scheduler/scheduler_config.json``: stable-diffusion-3-medium-diffusers shifts by 3.0;
    FLUX.1-dev shifts dynamically with the image's token count (``mu`` from
    ``calculate_shift``: base 0.5 at 256 tokens, max 1.15 at 4096)."""
    import diffusers

    if model_class == "FluxTransformer2DModel":
        return diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096)
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)


def mmdit_pipeline(net: torch.nn.Module, scheduler=None):
    """``StableDiffusion3Pipeline`` or ``FluxPipeline`` around ``net``, built from components
    with no text encoders, tokenizers or VAE (``output_type="latent"`` never needs them; both
    pipelines fall back to their 8x VAE factor without one)."""
    import diffusers

    cls = type(net).__name__
    sched = scheduler or flow_scheduler(cls)
    if cls == "FluxTransformer2DModel":
        pipe = diffusers.FluxPipeline(scheduler=sched, vae=None, text_encoder=None,
                                      tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                      transformer=net)
    else:
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=net, scheduler=sched, vae=None, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mmdit_reference_latents(pipe, prompts, seed: int, steps: int, height: int, width: int,
                            guidance_scale: float | None = None) -> torch.Tensor:
    """Final latents of an MM-DiT pipeline on prompt and pooled embeddings
    (``executor.mmdit.JointPromptInputs``): SD3 ``(1, C, height/8, width/8)``, Flux packed
    ``(1, tokens, 4C)`` as ``FluxPipeline`` returns them. SD3 passes both guidance halves'
    embeddings; Flux takes the positive ones and embeds the guidance scale."""
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    kwargs = dict(prompt_embeds=prompts.prompt_embeds,
                  pooled_prompt_embeds=prompts.pooled_prompt_embeds)
    if type(pipe).__name__ != "FluxPipeline":
        kwargs.update(negative_prompt_embeds=prompts.negative_prompt_embeds,
                      negative_pooled_prompt_embeds=prompts.negative_pooled_prompt_embeds)
    with torch.no_grad():
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed),
                   output_type="latent", num_inference_steps=steps, height=height,
                   width=width, **guidance)
    return out.images
