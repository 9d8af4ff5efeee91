"""Recovery after pruning: fine-tuning, knowledge distillation, sparsity-inducing regularisers."""

from autoprune.recover.config import KDConfig, RecoverConfig, RecoverSection, RegulariserConfig
from autoprune.recover.finetune import TrainConfig, distillation_loss, evaluate, finetune, train
from autoprune.recover.regularise import bn_l1, group_lasso, make_penalty

__all__ = ["KDConfig", "RecoverConfig", "RecoverSection", "RegulariserConfig", "TrainConfig", "bn_l1", "distillation_loss", "evaluate",
           "finetune", "group_lasso", "make_penalty", "train"]
