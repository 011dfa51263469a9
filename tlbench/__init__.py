"""tlbench: which pretrained backbone, adapted which way, is worth it for your data."""

__version__ = "0.2.0"
