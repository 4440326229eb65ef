"""TimeTic: rank a zoo of time-series forecasters for a target series by estimated transferability.

Layout: `params.py` (options and registration, pydantic only), the method's modules, `experiment.py` (the
registered runner)."""
