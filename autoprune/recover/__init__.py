"""Recovery after pruning: fine-tuning (and, later, distillation and regularisers)."""

from autoprune.recover.finetune import TrainConfig, evaluate, train

__all__ = ["TrainConfig", "evaluate", "train"]
