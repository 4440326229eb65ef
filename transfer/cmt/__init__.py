"""CMT memory banks (Li et al., AAAI 2025): continual knowledge learning for a frozen LM, and its baselines: MAC, closed-book, RAG, online fine-tuning.

Layout: `params.py` (options and registration, pydantic only), the method's modules, `experiment.py` (the
registered runner)."""
