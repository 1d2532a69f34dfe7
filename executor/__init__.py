"""Reference executor: runs ``sim`` schedules for real with torch.distributed and diffusers."""
