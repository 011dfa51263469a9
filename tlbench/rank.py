"""`python -m tlbench.rank`: which backbone to try first, scored on frozen features, no training.

overrides -> one config per candidate (backbone x weights x train_size x seed) -> tracking stores
checked -> per candidate: source checkpoint (if source:*) -> data -> base -> pooled features of
the train subset (the sweep's feature cache) -> scores -> one MLflow score run -> the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see tlbench/quiet.py

from tlbench.config import RunConfig, parse_config  # noqa: E402
from tlbench.errors import TlbenchError, last_line, one_line  # noqa: E402
from tlbench.scores import SCORES_VERSION, names_reading, score_names  # noqa: E402

log = logging.getLogger("tlbench")

SWEEPABLE = ("backbone", "backbone.weights", "data", "data.train_size", "seed")
KIND_TAG = "tlbench.kind"
KIND = "score"

DESCRIPTION = """\
Score backbones on a target task before training any of them: pooled features of the train
subset (from the sweep's feature cache) are scored with LogME and H-score, and, where the source
model's classifier exists (backbone.weights=source:<name>), LEEP and NCE. Higher is better for all
four. Prints the backbones ordered by each score and logs one MLflow run per candidate (tag
tlbench.kind=score), which `python -m tlbench report` sets beside the sweep's accuracies."""
EPILOG = """\
Overrides are the main run's (python -m tlbench --help, README's config reference). Comma lists
are accepted for backbone, backbone.weights, data (a suite's tasks, e.g.
data=offline/shapes4,offline/shapes10), data.train_size and seed; every combination is scored.
Examples:
  python -m tlbench.rank backbone=resnet50,mobilenetv2,efficientnetb0 data.train_size=20
  python -m tlbench.rank backbone=vgg16,mobilenetv2 backbone.weights=null data.train_size=5,all
A candidate that fails (e.g. a refused source checkpoint) is logged FAILED; the others are still
scored and the exit status is 1."""


@dataclass
class Candidate:
    """One configuration to score, the overrides that compose it, and its outcome."""

    overrides: list[str]
    config: RunConfig
    scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    computed: int = 0
    skipped: str = ""
    error: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: Hydra-style overrides, some with comma lists."""
    parser = argparse.ArgumentParser(
        prog="python -m tlbench.rank", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides; comma lists for " + ", ".join(SWEEPABLE))
    return parser.parse_args(argv)


def expand(overrides: list[str]) -> list[list[str]]:
    """Every combination of the comma lists, as override lists for Hydra's compose."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise TlbenchError(f"cannot parse overrides: {one_line(exc)}") from None
    axes = []
    for override in parsed:
        if not override.is_sweep_override():
            axes.append([override.input_line])
            continue
        key = override.get_key_element()
        if key not in SWEEPABLE or not override.is_discrete_sweep():
            raise TlbenchError(f"{override.input_line}: lists are accepted only for "
                               f"{', '.join(SWEEPABLE)} (as a,b,c)")
        axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [list(combination) for combination in itertools.product(*axes)]


def compose_candidates(overrides: list[str]) -> list[Candidate]:
    """Compose and validate the normal tlbench config of every combination, before any work."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tlbench.tracking import identity

    candidates: dict[str, Candidate] = {}
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        for combination in expand(overrides):
            try:
                config = parse_config(compose(config_name="config", overrides=combination))
            except (HydraException, OmegaConfBaseException) as exc:
                raise TlbenchError(one_line(exc)) from None
            # Equal identities (e.g. backbone=pixels under several weights) are scored once.
            candidates.setdefault(identity.config_hash(config, score_identity(config)),
                                  Candidate(combination, config))
    return list(candidates.values())


def score_identity(config: RunConfig) -> dict:
    """What determines a score run: the run identity without the strategy and the trainer.

    Its params share backbone.*, data.*, pretrain.* and seed with the trained runs (the report
    joins on them); its config_hash differs from every trained run's, so neither resumes the
    other."""
    from tlbench.tracking import identity

    values = identity.identity(config)
    values.pop("strategy")
    values.pop("trainer")
    return values


def run_name(config: RunConfig) -> str:
    """e.g. score-mobilenetv2-n20-s0."""
    return f"score-{config.backbone.name}-n{config.data.train_size}-s{config.seed}"


def score_candidate(candidate: Candidate, uri: str, tags: dict[str, str]) -> None:
    """Features from the cache, scores, one MLflow run; fills the candidate's results."""
    from mlflow.tracking import MlflowClient
    from threadpoolctl import threadpool_limits

    from tlbench import backbone, prepare, scores
    from tlbench.backbone.cost import multiply_adds
    from tlbench.frozen import cache
    from tlbench.tracking import identity, runs

    config = candidate.config
    kind = backbone.weights_kind(config.backbone.weights)
    tags = tags | {KIND_TAG: KIND, "weights.kind": kind, "scores.version": str(SCORES_VERSION),
                   "command": " ".join(["python -m tlbench.rank", *candidate.overrides])}
    values = score_identity(config)
    with runs.tracked_run(config, uri, tags, identity.config_hash(config, values), values,
                           run_name=run_name(config)) as run_id:
        prepared = prepare.prepare(config, config.backbone.weights, config.trainer.threads)
        runs.log_prepared(uri, run_id, prepared)
        frozen = cache.frozen_dataset(prepared.base, prepared.entry, prepared.source,
                                         prepared.splits, config.backbone.input_size,
                                         cache.POOLED, cache.cache_root(config.cache),
                                         config.trainer.batch_size, prepared.images)
        x, y = frozen.data.x_train.load(), frozen.data.y_train
        start = time.perf_counter()
        head, candidate.skipped = source_classifier(config, prepared.checkpoint, x.shape[1])
        probs = None if head is None else head.predict(x, batch_size=1024, verbose=0)
        with threadpool_limits(limits=1, user_api="blas"):  # small matrices: 1 thread is fastest
            candidate.scores = scores.transferability(y, features=x, source_probs=probs)
        score_seconds = time.perf_counter() - start
        candidate.computed = frozen.computed
        candidate.seconds = {"setup": prepared.setup_seconds, "features": frozen.seconds,
                             "score": score_seconds}
        runs.log_result(uri, run_id, candidate.scores | {
            "feature_seconds": frozen.seconds, "feature_wait_seconds": frozen.waited,
            "score_seconds": score_seconds, "setup_seconds": prepared.setup_seconds,
            "frozen_rows_computed": frozen.computed,
            "cache_hit": float(cache.cache_root(config.cache) is not None
                               and frozen.computed == 0),
            "n_train": len(y), "n_classes": len(prepared.source.class_names),
            "n_features": x.shape[1], "params_total": prepared.base.count_params(),
            "flops": multiply_adds(prepared.base, config.backbone.input_size),
        }, [], {"config.yaml": config_yaml(config)})
        if candidate.skipped:
            MlflowClient(uri).set_tag(run_id, "scores.skipped", candidate.skipped)


def source_classifier(config: RunConfig, checkpoint, n_features: int):
    """The source model's classifier on pooled features, or None and why LEEP/NCE are skipped."""
    from tlbench import pretrain

    weights = config.backbone.weights
    if checkpoint is not None:
        head = pretrain.source_head(checkpoint, n_features)
        if head is not None:
            return head, ""
        reason = f"checkpoint {checkpoint.weights_path.parent} has no {pretrain.HEAD_FILE}"
    elif weights == "imagenet":
        reason = ("backbone.weights=imagenet: tlbench loads headless ImageNet files; the "
                  "ImageNet classifier top is not available offline")
    elif weights is None:
        reason = "random weights (backbone.weights=null) have no source classifier"
    else:
        reason = f"backbone.weights={weights} is a headless weights file: no source classifier"
    skipped = ", ".join(names_reading("source_probs"))
    log.info("%s skipped for %s: %s", skipped, config.backbone.name, reason)
    return None, f"{skipped}: {reason}"


def config_yaml(config: RunConfig) -> str:
    """The score run's identity as YAML, for the config.yaml artifact."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(score_identity(config) | {
        "tracking": dataclasses.asdict(config.tracking)})


def check_stores(candidates: list[Candidate]) -> dict[str, str]:
    """Each distinct tracking URI checked once, before TensorFlow starts; URI per candidate."""
    from tlbench.tracking import store

    uris = {}
    for candidate in candidates:
        key = candidate.config.tracking.uri
        if key not in uris:
            uris[key] = store.resolve_tracking_uri(key)
            store.check_tracking_store(uris[key])
    return {id(c): uris[c.config.tracking.uri] for c in candidates}


def group_label(config: RunConfig) -> str:
    """The task a candidate is scored on: data, training-set size and seed."""
    extra = getattr(config.data, "classes", None)
    classes = f" (classes {','.join(map(str, extra))})" if extra else ""
    return (f"data {config.data.name}{classes}, {config.backbone.input_size}px, "
            f"train_size={config.data.train_size}, seed={config.seed}")


def candidate_label(config: RunConfig) -> str:
    """A candidate's name: backbone and weights."""
    return f"{config.backbone.name} ({config.backbone.weights or 'null'})"


def table(candidates: list[Candidate]) -> str:
    """Per task: each candidate's scores and seconds, then the candidates ordered by each score."""
    groups: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(group_label(candidate.config), []).append(candidate)
    lines = []
    for label, members in groups.items():
        done = [c for c in members if not c.error]
        lines += ["", f"Scores on {label} (higher is better):"]
        header = "backbone (weights)"
        width = max(len(header), *(len(candidate_label(c.config)) for c in members))
        lines.append(f"  {header:<{width}}" + "".join(
            f"{name:>9}" for name in score_names()) + "  features s  computed  score s")
        for c in members:
            name = f"  {candidate_label(c.config):<{width}}"
            if c.error:
                lines.append(f"{name}  FAILED: {c.error}")
                continue
            values = "".join(f"{c.scores[s]:>9.3f}" if s in c.scores else f"{'–':>9}"
                             for s in score_names())
            lines.append(f"{name}{values}  {c.seconds['features']:>10.2f}  {c.computed:>8d}"
                         f"  {c.seconds['score']:>7.2f}")
        if not done:
            continue
        lines.append("  best first:")
        for score in score_names():
            scored = sorted((c for c in done if score in c.scores),
                            key=lambda c, s=score: -c.scores[s])
            order = " > ".join(candidate_label(c.config) for c in scored) or "–"
            missing = [candidate_label(c.config) for c in done if score not in c.scores]
            note = f"  (not for: {', '.join(missing)}; no source classifier)" if missing else ""
            lines.append(f"    {score:<7}{order}{note}")
    return "\n".join(lines)


def rank(overrides: list[str]) -> list[Candidate]:
    """Compose, check, score every candidate (failures recorded, not raised), print the table."""
    candidates = compose_candidates(overrides)
    uris = check_stores(candidates)
    from tlbench import runtime
    from tlbench.quiet import import_keras

    runtime.cap_threads_before_start(candidates[0].config.trainer.threads)
    import_keras()
    from tlbench import prepare
    from tlbench.tracking import runs

    for candidate in candidates:
        prepare.check_cache_folders(candidate.config, candidate.config.backbone.weights,
                                    candidate.config.cache.enabled)

    precision = candidates[0].config.trainer.precision  # rank refuses lists of trainer.*
    tags = runs.environment_tags(precision) | {
        "rank_id": f"rank-{time.strftime('%Y%m%d-%H%M%S')}"}
    started = time.perf_counter()
    for i, candidate in enumerate(candidates, start=1):
        log.info("[%d/%d] %s on %s", i, len(candidates), candidate_label(candidate.config),
                 group_label(candidate.config))
        try:
            score_candidate(candidate, uris[id(candidate)], tags)
        except Exception as exc:  # logged FAILED by tracked_run; the other candidates go on
            candidate.error = last_line(exc)
            log.error("FAILED %s: %s", candidate_label(candidate.config), candidate.error)
    print(table(candidates))
    print(f"\n{len(candidates)} candidate(s) in {time.perf_counter() - started:.1f}s; score runs "
          f"logged to {', '.join(sorted(set(uris.values())))} (tag {KIND_TAG}={KIND})")
    return candidates


def main(argv: list[str] | None = None) -> int:
    """Console entry point; bad input is one line on stderr and status 1."""
    args = parse_args(argv)
    if not log.handlers:  # progress on stderr, as the Hydra app logs it; the table on stdout
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        candidates = rank(args.overrides)
    except TlbenchError as exc:
        print(f"tlbench.rank: error: {exc}", file=sys.stderr)
        return 1
    return 1 if any(c.error for c in candidates) else 0


if __name__ == "__main__":
    sys.exit(main())
