"""Continual-learning strategies: one module per algorithm, each registered by name.

Importing this package is cheap; algorithm modules import Avalanche when they are used.
The registry itself lives in `cl.registry.STRATEGIES`; built-ins are listed in
`strategies.catalog`.
"""
