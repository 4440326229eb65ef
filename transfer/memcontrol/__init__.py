"""MemControl: search which blocks of a diffusion model to fine-tune, trading memorisation against quality.

Layout: `params.py` (options and registration, pydantic only), the method's modules, `experiment.py` (the
registered runner)."""
