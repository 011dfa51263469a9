"""The critical-difference diagram: a PNG with every configuration's name beside its rank."""

from pathlib import Path

from PIL import Image

from tlbench.report.cd_diagram import draw_cd_diagram


def test_diagram_is_a_png_wide_enough_for_every_name(tmp_path: Path) -> None:
    ranks = {"C4.5": 3.143, "C4.5+m": 2.0, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}
    few, many = tmp_path / "four.png", tmp_path / "eight.png"
    draw_cd_diagram(ranks, 1.25, 0.05, few)
    longer = ranks | {f"a configuration with a long name {i}": 4.0 + i / 2 for i in range(4)}
    draw_cd_diagram(longer, 1.25, 0.05, many)
    with Image.open(few) as small, Image.open(many) as large:
        assert small.format == large.format == "PNG"
        assert large.width > small.width and large.height > small.height
