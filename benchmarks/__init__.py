"""The suite's benchmarks: scripts that measure something and print a table and a final ``RESULT ...`` line.

Each runs from the repository root of an installed checkout (``python benchmarks/<name>.py [--quick]``);
`benchmarks.gridbench` holds what the grid benchmarks share. Not tests, and not imported by the suite:
``benchmarks/results/`` holds the runs they measured (data, not a package).
"""
