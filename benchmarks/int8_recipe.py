"""Which operators an int8 model should quantize: accuracy (train / val / test, run by ONNX Runtime)
and latency of a task's baseline under several static-QDQ recipes.

    python benchmarks/int8_recipe.py task=minilm recover.lr=0.01 recover.batch_size=16
    python benchmarks/int8_recipe.py                 # the default digits ResNet

Arguments are Hydra overrides of the task (the baseline is trained or read from `cache_dir`). Every
recipe is `autoprune.hw.quantize.quantize_int8` of the same fp32 export with the same calibration
batches (the train split, as autoprune does) and differs only in the operator types quantized;
"autoprune" is the default, the choice `ops_to_quantize` makes for this graph.
Latency: `cpu-ort-int8-1t`'s rules, every model once per round, median of 3 rounds.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from hydra import compose, initialize_config_dir
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from autoprune.cli import _quiet_libraries
from autoprune.context import build_context
from autoprune.hw import ExportedModel, export_onnx, get_backend, load_profile
from autoprune.hw.artifact import artifact_accuracy
from autoprune.hw.quantize import MATRIX_OPS, calibration_arrays, quantize_int8
from autoprune.resources import resource_dir

EVERY_OP = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def without(*ops: str) -> list[str]:
    return [o for o in EVERY_OP if o not in ops]


RECIPES = {
    "every operator": EVERY_OP,
    "matrix products only": list(MATRIX_OPS),
    "all but LayerNormalization": without("LayerNormalization"),
    "all but Softmax": without("Softmax"),
    "all but Gather": without("Gather"),
    "all but Add": without("Add"),
    "all but Mul, Div": without("Mul", "Div"),
}


def main() -> None:
    _quiet_libraries()
    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=sys.argv[1:])
    ctx = build_context(cfg)
    data = ctx.task.data
    calibration = calibration_arrays(data.train)
    fp32_profile, int8_profile = load_profile("cpu-ort-1t"), load_profile("cpu-ort-int8-1t")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(export_onnx(ctx.baseline, data.example_batch(1), Path(tmp) / "fp32.onnx"))
        print("operators:", dict(Counter(n.op_type for n in onnx.load(str(fp32)).graph.node)))
        models = [("fp32", fp32, fp32_profile),
                  ("autoprune", quantize_int8(fp32, Path(tmp) / "autoprune.onnx", calibration), int8_profile)]
        models += [(label, quantize_int8(fp32, Path(tmp) / f"r{i}.onnx", calibration, op_types=ops), int8_profile)
                   for i, (label, ops) in enumerate(RECIPES.items())]
        times: dict[str, list[float]] = {label: [] for label, _, _ in models}
        backends = {p.name: get_backend(p) for p in (fp32_profile, int8_profile)}
        for _ in range(3):
            for label, path, profile in models:
                times[label].append(backends[profile.name].measure(ExportedModel(path), profile).median_ms)
        splits = (data.train, data.val, data.test)
        print(f"\n{'recipe':28} {'train %':>8} {'val %':>8} {'test %':>8} {'ms':>8}   "
              f"(n = {len(data.train)} / {len(data.val)} / {len(data.test)})")
        for label, path, profile in models:
            acc = [100 * artifact_accuracy(ExportedModel(path), profile, split) for split in splits]
            print(f"{label:28} " + " ".join(f"{a:8.2f}" for a in acc) + f" {np.median(times[label]):8.3f}")


if __name__ == "__main__":
    main()
