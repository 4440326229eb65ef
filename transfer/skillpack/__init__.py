"""GraftLLM SkillPacks: a fine-tuned skill as a compressed, quantised delta on a base LM, fused or routed.

Layout: `params.py` (options and registration, pydantic only), the method's modules, `experiment.py` (the
registered runner)."""
