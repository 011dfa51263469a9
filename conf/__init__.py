"""tlbench's Hydra config. Importing it (as composing it does) registers the sweeper that
config.yaml selects, hydra/sweeper=tlbench, which Hydra's plugin scan misses in editable installs.
The scan comes first: it re-imports Hydra's core plugins, whose basic sweeper ours extends.
It also offers every registered backbone as a `backbone` option (tlbench/backbone/options.py)."""

from hydra.core.plugins import Plugins

plugins = Plugins.instance()

from hydra_plugins.tlbench_sweeper.compose_once import ComposeOnceSweeper  # noqa: E402

plugins.register(ComposeOnceSweeper)

from tlbench.backbone import options  # noqa: E402

options.register()  # backbone=<name> for every registered backbone, from its entry
