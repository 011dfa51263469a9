"""Train stage: a strategy's plan fitted phase by phase, then evaluated.

`plan` is what a strategy hands the trainer (a model and its phases), `batches` a split's rows
as Keras inputs, `train` the fit with its timing and early stopping and the evaluation, and
`metrics` the scores it counts. Nothing here knows a strategy, a cache or MLflow.
"""
