"""ScaLearn: transfer to a target task by learning scalings of frozen source-task adapters.

Layout: `params.py` (options and registration, pydantic only), the method's modules, `experiment.py` (the
registered runner)."""
