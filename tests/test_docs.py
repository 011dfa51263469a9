"""The documentation agrees with the code: the generated reference pages are current, every
config key has a meaning, the README is one screen that starts with the two set-up commands
(the second the one .ci/run runs), and every link between the pages resolves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from tlbench import docs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SET_UP = [
    "python -m pip install -e . && python -m tlbench",
    "python -m pip install -e '.[test]' && python -m pytest -q",
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


@pytest.fixture(scope="module")
def keys():
    """Every key tlbench reads, as Hydra composes each option of each group (once a module)."""
    return docs.config_keys()


def test_every_config_key_has_a_meaning_and_every_meaning_a_key(keys):
    meanings = docs.load_meanings()
    assert docs.undocumented(keys, meanings) == []
    assert docs.unknown(keys, meanings) == []


def test_a_key_without_a_meaning_is_refused(keys):
    meanings = docs.load_meanings()
    added = keys | {"trainer.warmup": docs.Key("int", {"": 0})}
    assert docs.undocumented(added, meanings) == ["trainer.warmup"]
    with pytest.raises(SystemExit, match="document trainer.warmup; remove nothing"):
        docs.config_table(added, meanings)
    fewer = {key: facts for key, facts in keys.items() if key != "cache.dtype"}
    assert docs.unknown(fewer, meanings) == ["cache.dtype"]


def test_every_top_level_key_has_a_section():
    assert docs.uncovered(docs.default_config()) == []
    assert docs.uncovered({"seed": 0, "suite": {}, "hydra": {}}) == ["suite"]


def test_the_keys_are_those_the_typed_configs_declare(keys):
    """Spot checks against the dataclasses and the YAML: a strategy's own setting, a source's,
    a default conf/config.yaml overrides, and an option-dependent default."""
    assert keys["strategy.lr_decay"].defaults == {"gradual_unfreeze": 0.5}
    assert keys["data.noise"].type == "float"
    assert set(keys["backbone.weights"].defaults.values()) == {"source:digits04"}
    assert keys["backbone.input_size"].defaults["xception"] == 71
    assert keys["data"].defaults == {"": "digits59"}


@pytest.mark.parametrize("name", ["config", "backbones"])
def test_the_generated_pages_agree_with_the_code(name, keys):
    text = docs.PAGES[name].read_text(encoding="utf-8")
    assert docs.replaced(text, name, docs.generated(name)) == text, "run python -m tlbench.docs"


def test_the_backbone_table_lists_every_registered_backbone():
    table = docs.backbone_table()
    for name, spec in docs.registry.BACKBONES.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {spec.default_input_size} | {spec.min_input_size} |" in row
    assert "- `keras_file`:" in table and "- `kerashub`:" in table


def test_check_reports_a_stale_page_and_writing_fixes_it(tmp_path, monkeypatch, keys):
    for page in docs.PAGES.values():
        shutil.copy(page, tmp_path / page.name)
    pages = {name: tmp_path / page.name for name, page in docs.PAGES.items()}
    monkeypatch.setattr(docs, "PAGES", pages)
    stale = (
        pages["config"]
        .read_text()
        .replace("| `trainer.epochs` | int | `10` |", "| `trainer.epochs` | int | `12` |")
    )
    pages["config"].write_text(stale)
    assert docs.main(["--check"]) == 1
    assert pages["config"].read_text() == stale
    assert docs.main([]) == 0
    assert docs.main(["--check"]) == 0
    assert "| `trainer.epochs` | int | `10` |" in pages["config"].read_text()


def test_without_the_pages_it_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docs, "PAGES", {"config": tmp_path / "config.md"})
    assert docs.main(["--check"]) == 2
    assert (
        capsys.readouterr().err.strip().endswith("run it in a source checkout (pip install -e .)")
    )


def test_readme_is_one_screen_and_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert lines[:4] == ["```bash", *SET_UP, "```"]


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert [line for line in ci if "pytest" in line and not line.startswith("#")] == [SET_UP[1]]


def test_every_docs_page_is_in_the_site_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    listed = set(re.findall(r"[\w/-]+\.md", str(config["nav"])))
    assert {str(page.relative_to(ROOT / "docs")) for page in PAGES} == listed


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (its default slugify)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*_]", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def internal_links(page: Path) -> list[str]:
    """The page's links to files of this repository (not URLs), outside code."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize(
    "page", [README, ROOT / "CHANGELOG.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_internal_link_resolves(page):
    broken = []
    for target in internal_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []


def test_the_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A title\n\n[ok](#a-title) [gone](#nope) [file](missing.md) "
        "`[code](x.md)` [web](https://example.org)\n"
    )
    assert internal_links(page) == ["#a-title", "#nope", "missing.md"]
    assert anchors(page) == {"a-title"}


EXAMPLES = """
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import yaml

from tlbench import registry
from tlbench.config import DataConfig, DenseHeadConfig, TrainerConfig, group_config, typed

pages = Path(sys.argv[1])


def blocks(page, language):
    return re.findall(rf"```{language}\\n(.*?)```", (pages / page).read_text(), re.S)


exec(blocks("backbone.md", "python")[0], {})
entry = registry.BACKBONES["tinycnn"]
base = entry.build((64, 64, 3))
assert sorted(set(entry.stages_in(base).values())) == [1, 2, 3, 4, 5]
from tlbench.backbone import options

assert yaml.safe_load(blocks("backbone.md", "yaml")[0]) == options.option(entry)

exec(blocks("strategy.md", "python")[0], {})
strategy_class = registry.STRATEGIES["two_head_phases"]
settings = typed(strategy_class.Config, yaml.safe_load(blocks("strategy.md", "yaml")[0]), "s")
settings.head = group_config("head", "dense", DenseHeadConfig)
trainer = group_config("trainer", "default", TrainerConfig)
plan = strategy_class(settings).plan(base, entry, 3, trainer)
assert [(p.name, p.lr) for p in plan.phases] == [("head", 0.001), ("head_again", 0.0005)]

exec(blocks("data-source.md", "python")[0], {})
source = registry.SOURCES["stripes"]
cfg = typed(source.Config, yaml.safe_load(blocks("data-source.md", "yaml")[0]), "data")
assert isinstance(cfg, DataConfig)
images = source.load(cfg)
assert len(images.images) == 200 and images.class_names[0] == "stripes0"

import tlbench.scores

scores = vars(tlbench.scores).copy()
exec(chr(10).join(blocks("score.md", "python")), scores)
features = np.repeat(np.eye(4), 10, axis=0) + np.random.default_rng(0).normal(0, 0.1, (40, 4))
labels = np.repeat(np.arange(4), 10)
assert scores["ncm"](features, labels) == 1.0
assert scores["ncm"](features, np.random.default_rng(1).permutation(labels)) < 0.6
assert tlbench.scores.transferability(labels, features=features)["ncm"] == 1.0

import tlbench.report.render

render = vars(tlbench.report.render).copy()
exec(blocks("report-section.md", "python")[0], render)
runs = pd.DataFrame({"params.backbone.name": ["vgg16", "resnet50", "vgg16"]})
section = render["runs_per_backbone"](SimpleNamespace(runs=runs), None, {})
assert registry.REPORT_SECTIONS["runs_per_backbone"].order == 35
assert section.splitlines()[-2:] == ["| resnet50 | 1 |", "| vgg16 | 2 |"], section
print("examples ok")
"""


def test_the_extending_examples_run(tmp_path):
    """Each worked example's code, as the page shows it: the backbone's stages and option are
    derived, the strategy plans its two phases, the source loads, the score is computed with the
    registered ones and the section renders in its place."""
    script = tmp_path / "examples.py"
    script.write_text(EXAMPLES)
    result = subprocess.run(
        [sys.executable, str(script), str(ROOT / "docs" / "extending")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "examples ok" in result.stdout
