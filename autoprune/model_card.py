"""What a registered model version carries for whoever deploys it (`pick` writes it).

The card is data gathered from the study, MLflow and the task's data splits: accuracy on val and test
with 95% Wilson intervals, median and p90 latency on the hardware profile (name, digest and the machine's
fingerprint), the pick rule, the study and trial, the baseline's numbers, the model's input (name,
shape, dtype) and the task's preprocessing (`autoprune.tasks.data.Preprocessing`: what a raw input is
and how it becomes the model's input). It becomes the version's tags (`autoprune.*`, strings), its
Markdown description, and the `metadata` block of the logged model's MLmodel file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from autoprune.tasks.data import Preprocessing

if TYPE_CHECKING:  # autoprune.report imports autoprune.pick, which imports this module
    from autoprune.report.collect import Candidate
    from autoprune.report.recommend import SplitSizes

STUDY_TAG = "autoprune.study"
TRIAL_TAG = "autoprune.trial_number"
RUN_TAG = "autoprune.run_id"


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: list            # dimension sizes; -1 for the dynamic batch
    dtype: str


@dataclass(frozen=True)
class ModelCard:
    study: str
    model: Candidate
    baseline: Candidate
    rule: str                          # the pick rule, as `pick` describes it
    sizes: Optional[SplitSizes]        # examples behind the accuracies (None: no intervals)
    hw_profile: str
    hw_digest: str
    hw_fingerprint: dict
    model_input: ModelInput
    preprocessing: Optional[Preprocessing]

    def _ci(self, accuracy: Optional[float], n: Optional[int]) -> Optional[list[float]]:
        from autoprune.report.recommend import interval

        if accuracy is None or not n:
            return None
        return [round(v, 4) for v in interval(accuracy, n)]

    def metrics(self) -> dict[str, float]:
        m, b = self.model, self.baseline
        out = {"val_accuracy": m.val_accuracy, "test_accuracy": m.test_accuracy, "latency_ms": m.latency_ms,
               "latency_p90_ms": m.latency_p90_ms, "speedup": b.latency_ms / m.latency_ms, "params": m.params,
               "macs": m.macs, "onnx_bytes": m.onnx_bytes, "baseline.val_accuracy": b.val_accuracy,
               "baseline.test_accuracy": b.test_accuracy, "baseline.latency_ms": b.latency_ms,
               "baseline.latency_p90_ms": b.latency_p90_ms, "baseline.params": b.params, "baseline.macs": b.macs}
        return {k: v for k, v in out.items() if v is not None}

    def tags(self) -> dict[str, str]:
        """The registered version's tags: every metric, the intervals, where it was measured, how it was picked."""
        val_ci = self._ci(self.model.val_accuracy, self.sizes.val if self.sizes else None)
        test_ci = self._ci(self.model.test_accuracy, self.sizes.test if self.sizes else None)
        tags = {f"autoprune.{k}": f"{v:.6g}" for k, v in self.metrics().items()}
        tags |= {STUDY_TAG: self.study, TRIAL_TAG: str(self.model.trial), RUN_TAG: self.model.run_id or "",
                 "autoprune.pick_rule": self.rule, "autoprune.hw_profile": self.hw_profile,
                 "autoprune.hw_digest": self.hw_digest,
                 "autoprune.hw_fingerprint": json.dumps(self.hw_fingerprint, sort_keys=True),
                 "autoprune.input": json.dumps(vars(self.model_input)),
                 "autoprune.preprocessing": json.dumps(self.preprocessing.to_dict() if self.preprocessing else None)}
        if val_ci:
            tags["autoprune.val_accuracy_ci95"] = json.dumps(val_ci)
        if test_ci:
            tags["autoprune.test_accuracy_ci95"] = json.dumps(test_ci)
        return tags

    def metadata(self) -> dict:
        """The MLmodel file's `metadata` block (travels with the model files wherever they are copied)."""
        return {"autoprune": {"study": self.study, "trial": self.model.trial, "pick_rule": self.rule,
                              "hw_profile": self.hw_profile, "hw_digest": self.hw_digest,
                              "input": vars(self.model_input),
                              "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
                              "metrics": self.metrics()}}

    def description(self) -> str:
        """Markdown for the registry page."""
        m, b = self.model, self.baseline

        def pct(accuracy: Optional[float], n: Optional[int]) -> str:
            if accuracy is None:
                return "not scored"
            ci = self._ci(accuracy, n)
            return f"{100 * accuracy:.2f}%" + (f" (95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%, n={n})" if ci else "")

        n_val, n_test = (self.sizes.val, self.sizes.test) if self.sizes else (None, None)
        lines = [
            f"Trial #{m.trial} of study `{self.study}`, picked by autoprune: {self.rule}.",
            "",
            "| | this model | baseline |",
            "|---|---|---|",
            f"| val accuracy | {pct(m.val_accuracy, n_val)} | {pct(b.val_accuracy, n_val)} |",
            f"| test accuracy | {pct(m.test_accuracy, n_test)} | "
            f"{pct(b.test_accuracy, n_test)} |",
            f"| latency median / p90 | {m.latency_ms:.4f} / {m.latency_p90_ms:.4f} ms | "
            f"{b.latency_ms:.4f} / {b.latency_p90_ms:.4f} ms |",
            f"| speedup | {b.latency_ms / m.latency_ms:.2f}x | 1.00x |",
            f"| params / MACs | {m.params:,} / {m.macs:,} | {b.params:,} / {b.macs:,} |",
            "",
            f"Latency measured on hardware profile `{self.hw_profile}` (digest `{self.hw_digest}`), batch 1.",
            "",
            f"**Input** `{self.model_input.name}`: {self.model_input.dtype} {self.model_input.shape} (-1: any batch).",
        ]
        if self.preprocessing is not None:
            lines += [f"Raw input: {self.preprocessing.raw}; {self.preprocessing.formula()} "
                      "(`autoprune.Preprocessing(**json.loads(tags['autoprune.preprocessing'])).apply(raw)`)."]
        else:
            lines += ["The task's data factory declares no preprocessing: send inputs as its data splits hold them."]
        return "\n".join(lines)
