"""Frozen-output cache: what a frozen base computes over an image, computed once.

`cache` keeps a frozen base's pooled features and its activations at a cut as row files
(`tlbench/rowcache.py`), keyed by what decides them; `base_facts` records what a run reports
about the base (its weights' digest, parameters, multiply-adds, summary) beside them, so that a
cached run needs neither the base nor its forward pass.
"""
