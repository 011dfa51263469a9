"""LP-FT (Kumar et al. 2022): a linear probe on the frozen base, then the whole network fine-tuned
at a low learning rate starting from the probe's head."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import registry
from tlbench.config import RunConfig, StrategyConfig
from tlbench.errors import check
from tlbench.strategy.base import Phase, Plan, Strategy, freeze, unfreeze_all, with_head
from tlbench.strategy.partial_finetune import check_phase_settings


@dataclass(kw_only=True)
class LpFtConfig(StrategyConfig):
    """A linear probe until convergence, then everything at trainer.lr x lr_scale."""

    probe_epochs: int
    lr_scale: float
    finetune_epochs: int | None

    def __post_init__(self) -> None:
        check(self.probe_epochs >= 1, "strategy.probe_epochs", self.probe_epochs, "at least 1")
        check_phase_settings(self, ("finetune_epochs",))


@registry.STRATEGIES.entry("lp_ft")
class LpFt(Strategy):
    """Phase `probe` trains a linear softmax head on the frozen base for up to probe_epochs
    (early stopping on val_loss, trainer.patience, marks convergence); phase `finetune` makes the
    whole base trainable and recompiles at trainer.lr x lr_scale, keeping the probe's head.

    BatchNorm: inference mode in both phases (the base is called with training=False, as in the
    Keras guide's fine-tuning): in `finetune` BatchNorm scale and offset train, the moving
    statistics stay those of the pretrained base. Both phases run on images.
    """

    name = "lp_ft"
    Config = LpFtConfig

    @classmethod
    def validate(cls, run: RunConfig) -> None:
        """The probe is linear: no hidden head layer."""
        super().validate(run)
        units = run.strategy.head.units
        check(units == 0, "strategy.head.units", units, "0 for lp_ft (its probe is linear)")

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """The base inside the model, called in inference mode; probe, then everything."""
        model = with_head(base, n_classes, self.config.head, base_training=False,
                          augment=trainer.augment)
        return Plan(model, [
            Phase("probe", self.config.probe_epochs, trainer.lr, freeze(base)),
            Phase("finetune", self.config.finetune_epochs or trainer.epochs,
                  trainer.lr * self.config.lr_scale, unfreeze_all(base))])
