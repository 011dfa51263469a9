"""What a run reports about its frozen base (the digest of its weights, which keys its cached
outputs, its parameters, multiply-adds and Keras summary), recorded once per base next to the
feature cache, so that a cached run reads them instead of building the base.

A record is keyed by what decides the base's weights and shape: the backbone and the code that
builds it, the input size, the weights' origin (their file's digest, or the seed of a random
initialisation: Keras' initialisers are deterministic given the seed and the Keras and backend
versions), the precision, and the Keras and backend versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tlbench.backbone import BackboneSpec

log = logging.getLogger("tlbench")

FORMAT = 1  # bump when what a record holds, or how a base is built, changes


@dataclass(frozen=True)
class BaseFacts:
    """The base's weights digest and dtype policy (the feature cache's key), its parameter
    count, multiply-adds per image and Keras summary."""

    weights_sha256: str
    precision: str
    params: int
    flops: int
    summary: str


def record_key(spec: BackboneSpec, input_size: int, origin: str, precision: str) -> dict:
    """Everything that decides a base's facts."""
    import keras

    from tlbench import runtime
    from tlbench.backbone import loading

    code = hashlib.sha256()
    for path in sorted({sys.modules[spec.build.__module__].__file__, loading.__file__}):
        code.update(Path(path).read_bytes())
    name = runtime.backend()
    return {"format": FORMAT, "backbone": spec.name, "code": code.hexdigest(),
            "input_size": input_size, "origin": origin, "precision": precision,
            "keras": keras.__version__, "backend": name,
            "backend_version": runtime.backend_version(name)}


def measured(base, input_size: int, digest: bool = True) -> BaseFacts:
    """The facts of a built base (the weights digest left empty unless `digest`)."""
    from tlbench.backbone.cost import multiply_adds
    from tlbench.frozen.cache import weights_digest
    from tlbench.training.train import model_summary

    return BaseFacts(weights_digest(base) if digest else "", base.dtype_policy.name,
                     base.count_params(), multiply_adds(base, input_size), model_summary(base))


def base_facts(build: Callable[[], Any], spec: BackboneSpec, input_size: int, origin: str,
               precision: str, root: Path | None) -> BaseFacts:
    """The base's facts from its record under `root`, else measured on the base `build()`
    returns and recorded there (root None: the cache is off, nothing is recorded and no
    digest computed)."""
    if root is None:
        return measured(build(), input_size, digest=False)
    key = record_key(spec, input_size, origin, precision)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = root / "bases" / f"{spec.name}-{input_size}px-{digest}.json"
    try:
        record = json.loads(path.read_text())
        if record["key"] == key:
            return BaseFacts(**record["facts"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    facts = measured(build(), input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps({"key": key, "facts": asdict(facts)}, indent=1))
        os.replace(temporary, path)  # readers see no record or a whole one
    except OSError as exc:
        log.warning("base facts not recorded in %s: %s", path, exc)
    finally:
        temporary.unlink(missing_ok=True)
    return facts
