"""Track stage: runs in MLflow, and what keeps them whole.

`store` checks the tracking store and creates the experiment, `identity` is a run's params and
`config_hash` (resume and the report key on them), `runs` opens a run and logs its params,
metrics, tags and artifacts (`confusion`: its heatmap), `termination` ends a stopped run KILLED,
`server` is `python -m tlbench server` and `next_steps` the closing lines that point at the runs.
"""
