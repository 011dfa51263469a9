"""Commands that look things up for a user and run no stage: `python -m tlbench weights` (the
weight files Keras expects, and which are cached) and `python -m tlbench backbones` (the backbone
table). The stage commands live with their stage: `rank`, `report`, `server`."""
