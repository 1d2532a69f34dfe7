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
