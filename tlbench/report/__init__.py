"""Report stage: rank a sweep's configurations from MLflow into a markdown report with plots.

fetch (MLflow queries) -> stats (pure aggregation on DataFrames) -> plots + render -> files.
Run it as `python -m tlbench.report --help`.
"""
