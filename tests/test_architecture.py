"""The house rules, checked: imports run one way, up the layers (LAYERS), and never in a
circle; modules stay small; errors need no Hydra; a toy of each extension (backbone, strategy,
source, score, report section) is one file that the real CLI runs with no other file touched;
only tlbench/compat.py uses private APIs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.tracking import MlflowClient

PACKAGE = Path(__file__).resolve().parent.parent / "tlbench"
MAX_LINES = 400


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """tlbench/data/folder.py -> tlbench.data.folder; packages by their __init__."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_sites(path: Path) -> list[tuple[str, int]]:
    """(tlbench module, line) of each import in this file that runs: at the top or inside a
    function alike. TYPE_CHECKING blocks name types for annotations only, never run, and are
    left out. `from tlbench.x import y` imports tlbench.x, and tlbench.x.y where that is one."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlbench"):
            found += [(node.module, node.lineno)] + [
                (f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("tlbench")]
    return found


def imports_by_module(package: Path = PACKAGE) -> dict[str, list[tuple[str, str]]]:
    """Module -> (tlbench module it imports, "file:line") for every import site (names that are
    not modules, such as a class, dropped)."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: [(target, f"{path.relative_to(package.parent)}:{line}")
                   for target, line in import_sites(path) if target in files and target != name]
            for name, path in files.items()}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the tlbench modules it imports."""
    return {name: {target for target, _ in sites}
            for name, sites in imports_by_module(package).items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child] if child in path else [node, child]
            if child not in state and (cycle := visit(child, [*path, child])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_imports_have_no_circle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# The layers, bottom first, as the code has them: a module imports its own package and the
# packages of lower layers only, never a higher layer's nor a sibling's in its own layer. The
# flat modules are grouped: the core every stage uses, the prepare stage, and the commands.
# Lazy imports (inside functions: `__main__`, `rank`, `sweep`, `report/__main__` and
# `tracking/next_steps` defer theirs to start in a second; `pretrain` reaches the strategies' heads,
# `frozen/base_facts` the trainer's model summary, `prepare` and `strategy/heads` the trainer) are
# held to the same order: there is no exception.
LAYERS = (
    ("core",),
    ("backbone", "data", "scores"),
    ("training",),
    ("frozen",),
    ("strategy",),
    ("prepare",),
    ("tracking",),
    ("report",),
    ("commands",),
)
FLAT = {"core": {"errors", "compat", "registry", "config", "paths", "runtime", "quiet",
                 "progress", "rowcache", "rowsync"},
        "prepare": {"prepare", "pretrain"},
        "commands": {"__main__", "rank", "sweep", "docs", "cli"}}
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit(module: str) -> str:
    """The package or group a module belongs to: tlbench.tracking.runs -> tracking,
    tlbench.pretrain -> prepare, tlbench itself -> core."""
    if module == "tlbench":
        return "core"
    head = module.split(".")[1]
    return next((group for group, members in FLAT.items() if head in members), head)


def layer_violations(imports: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Each import that goes to a higher layer or a sibling, and each module in no layer."""
    found = []
    for module, sites in sorted(imports.items()):
        if unit(module) not in RANK:
            found.append(f"{module}: in no layer of LAYERS ({unit(module)})")
            continue
        for target, where in sites:
            low, high = unit(module), unit(target)
            if low != high and RANK.get(high, len(LAYERS)) >= RANK[low]:
                found.append(f"{where}: {module} imports {target}: {low} (layer {RANK[low]}) -> "
                             f"{high} (layer {RANK.get(high, '?')})")
    return found


def unit_graph(imports: dict[str, list[tuple[str, str]]]) -> dict[str, set[str]]:
    """Package (or group) -> the packages it imports."""
    graph: dict[str, set[str]] = {}
    for module, sites in imports.items():
        graph.setdefault(unit(module), set()).update(
            unit(target) for target, _ in sites if unit(target) != unit(module))
    return graph


def test_imports_run_up_the_layers():
    assert layer_violations(imports_by_module()) == []


def test_packages_have_no_circle():
    assert find_cycle(unit_graph(imports_by_module())) is None


def test_the_layer_check_names_a_lazy_import_going_down(tmp_path):
    """A package written here, parsed as the real one is: an import inside a function of a
    lower layer, one between siblings and a new flat module are named; TYPE_CHECKING is not."""
    package = tmp_path / "tlbench"
    for name in ("backbone", "data", "strategy"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("def late():\n    from tlbench.strategy import base\n")
    (package / "strategy" / "base.py").write_text(
        "from typing import TYPE_CHECKING\n\nfrom tlbench import errors\n"
        "if TYPE_CHECKING:\n    from tlbench import newcomer\n")
    (package / "data" / "folder.py").write_text("import tlbench.backbone\n")
    (package / "newcomer.py").write_text("")
    assert layer_violations(imports_by_module(package)) == [
        "tlbench/data/folder.py:1: tlbench.data.folder imports tlbench.backbone: data (layer 1) "
        "-> backbone (layer 1)",
        "tlbench/errors.py:2: tlbench.errors imports tlbench.strategy: core (layer 0) -> "
        "strategy (layer 4)",
        "tlbench/errors.py:2: tlbench.errors imports tlbench.strategy.base: core (layer 0) -> "
        "strategy (layer 4)",
        "tlbench.newcomer: in no layer of LAYERS (newcomer)",
    ]
    assert find_cycle(unit_graph(imports_by_module(package))) == ["core", "strategy", "core"]


def test_errors_and_registry_do_not_import_hydra():
    for name in ("errors.py", "registry.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        modules = {getattr(n, "module", None) or n.names[0].name for n in ast.walk(tree)
                   if isinstance(n, ast.Import | ast.ImportFrom)}
        assert not any(str(m).startswith(("hydra", "omegaconf")) for m in modules), name


def test_no_module_is_over_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


PRIVATE_MODULES = ("hydra._internal", "keras.src", "tensorflow.python")
PRIVATE_NAMES = {"_run_through_graph", "_functional", "_flatten_layers", "_context_handle",
                 "_gradient_registry", "_apply_overrides_to_config"}
COMPAT = PACKAGE / "compat.py"


def private_uses(path: Path) -> list[str]:
    """The private modules and names a file reaches: imports, attribute access, and strings
    (getattr(x, "_functional"), a dotted class path)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names]
            found += [n for n in names if n.startswith(PRIVATE_MODULES)]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.append(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value in PRIVATE_NAMES or node.value.startswith(PRIVATE_MODULES)):
            found.append(node.value)
    return found


def test_only_the_compat_module_uses_private_apis():
    roots = [PACKAGE.parent / name for name in ("tlbench", "hydra_plugins", "conf", "benchmarks")]
    uses = {str(p.relative_to(PACKAGE.parent)): private_uses(p)
            for root in roots for p in root.rglob("*.py") if p != COMPAT}
    assert {name: found for name, found in uses.items() if found} == {}
    assert private_uses(COMPAT)  # the check sees what compat.py does


TOYS = """
    import sys
    from dataclasses import dataclass

    import numpy as np

    from tlbench import registry
    from tlbench.backbone.spec import BackboneSpec, unchanged
    from tlbench.config import DataConfig, StrategyConfig
    from tlbench.data.source import ArrayImages, LabelledImages, register
    from tlbench.training.plan import keep
    from tlbench.report.sections import section
    from tlbench.scores import Score
    from tlbench.strategy.base import Phase, Plan, Strategy, freeze, with_head


    def build_toy_cnn(input_shape, weights=None):
        '''Two strided convolution blocks: stages at strides 2 and 4.'''
        import keras

        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Rescaling(1 / 255, name="toy_rescale")(inputs)
        x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="block1_conv")(x)
        x = keras.layers.BatchNormalization(name="block1_bn")(x)
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="block2_conv")(x)
        return keras.Model(inputs, x, name="toy_cnn")


    registry.BACKBONES.register("toy_cnn", BackboneSpec(
        name="toy_cnn", build=build_toy_cnn, preprocess=unchanged,
        preprocessed_range=(0.0, 255.0), default_input_size=32, min_input_size=16, family="toy",
        preprocessing="none: rescaled inside", stages=(2, 4)))


    @dataclass(kw_only=True)
    class TwoHeadPhasesConfig(StrategyConfig):
        second_lr_scale: float


    @registry.STRATEGIES.entry("two_head_phases")
    class TwoHeadPhases(Strategy):
        '''A frozen base (BatchNorm in inference mode) and a head trained in two phases, the
        second at lr x second_lr_scale.'''

        name = "two_head_phases"
        Config = TwoHeadPhasesConfig
        trains_base = False

        def plan(self, base, entry, n_classes, trainer):
            model = with_head(base, n_classes, self.config.head, base_training=False)
            return Plan(model, [
                Phase("head", trainer.epochs, trainer.lr, freeze(base)),
                Phase("head_again", trainer.epochs, trainer.lr * self.config.second_lr_scale,
                      keep)])


    @dataclass(kw_only=True)
    class StripesConfig(DataConfig):
        images_per_class: int


    def load_stripes(cfg):
        '''Noisy horizontal and vertical stripes, one class each.'''
        rng = np.random.default_rng(0)
        stripes = np.broadcast_to((np.arange(32) % 8 < 4)[:, None] * 255.0, (32, 32))
        n = cfg.images_per_class
        clean = np.concatenate([np.repeat(stripes[None], n, 0), np.repeat(stripes.T[None], n, 0)])
        pixels = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.float32)
        return LabelledImages(ArrayImages(pixels), np.repeat([0, 1], n), ("across", "down"))


    register("toy_stripes", StripesConfig, load_stripes)

    registry.SCORES.register("toy_norm", Score(
        lambda features, labels: float(np.linalg.norm(features, axis=1).mean()), "features"))


    @section("toy_section", 85)
    def toy_section(analysis, source, plots):
        return f"## Toy section\\n\\n{len(analysis.runs)} run(s) seen."


    from tlbench.__main__ import main

    sys.argv = ["tlbench", *sys.argv[1:]]
    main()
"""


def test_a_toy_of_each_extension_is_one_file_through_the_real_cli(tmp_path):
    """A backbone, strategy, data source, score and report section, all defined in one file
    written here (the strategy's and source's YAML in a temporary config folder): the real CLI
    trains, ranks and reports with them, no other file changed."""
    conf = tmp_path / "conf"
    (conf / "strategy").mkdir(parents=True)
    (conf / "data").mkdir()
    (conf / "strategy" / "two_head_phases.yaml").write_text(
        "name: two_head_phases\nsecond_lr_scale: 0.5\n")
    (conf / "data" / "toy_stripes.yaml").write_text(
        "name: toy_stripes\ntask: null\ngroup: null\nprotocol: tune\nimages_per_class: 20\n"
        "train_size: all\nval_fraction: 0.2\n"
        "test_fraction: 0.2\nsplit_seed: 0\ninput_size: 32\n")
    script = tmp_path / "toys.py"
    script.write_text(textwrap.dedent(TOYS))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    common = ["backbone=toy_cnn", "backbone.weights=null", "data=toy_stripes",
              "data.train_size=5", f"hydra.searchpath=[file://{conf}]"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    trained = cli("strategy=two_head_phases", "trainer.epochs=1", "trainer.patience=null",
                  *common)
    cli("rank", *common)
    cli("report", "--tracking-uri", uri, "--out", str(tmp_path / "reports"))

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("tlbench.kind") != "score"]
    (score,) = [r for r in runs if r.data.tags.get("tlbench.kind") == "score"]
    assert run.info.status == score.info.status == "FINISHED"
    assert run.info.run_name == "toy_cnn-two_head_phases-n5-s0"
    assert run.data.params["strategy.second_lr_scale"] == "0.5"
    assert run.data.params["data.images_per_class"] == "20"
    assert run.data.tags["inputs"] == "images"
    assert run.data.metrics["params_trainable"] == 8 * 2 + 2  # 8 pooled features, 2 classes
    assert run.data.metrics["epochs_run"] == 2
    assert "phases head(1 ep, lr=0.001, on images), head_again(1 ep, lr=0.0005" in (
        trained.stdout + trained.stderr)
    assert score.data.metrics["toy_norm"] > 0 and "logme" in score.data.metrics
    (report,) = (tmp_path / "reports").glob("*.md")
    text = report.read_text()
    assert "## Toy section\n\n1 run(s) seen." in text
    assert text.index("## Reproduce") < text.index("## Toy section") < text.index(
        "## Runs that did not finish")
    assert "toy\\_norm" in text
