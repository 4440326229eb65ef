"""MobileTL: memory-lean transfer learning for MobileNets (top blocks train, BN folded, 1-bit activation masks).

Layout: `params.py` (options and registration, pydantic only), the method's modules, `experiment.py` (the
registered runner)."""
