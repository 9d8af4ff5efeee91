"""Any model a user brings (issue #16): every architecture pattern of tests/arch_models.py is pruned at
0.25 / 0.5 / 0.75, exported, and its ONNX outputs checked against PyTorch (real ONNX Runtime); each goes
through a 2-trial search (one combined model and each pattern, under -m slow)."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
import torch.nn as nn

import arch_models as A
from autoprune.cli import run
from autoprune.errors import ExportError
from autoprune.hw.export import export_onnx
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune import PruningEngine, make_pruner, output_layers
from autoprune.search.space import build_space

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return A.PATTERNS[name]().eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(set(A.PATTERNS) - {"everything"}))   # everything: searched below
def test_pattern_prunes_exports_and_matches_at_three_ratios(name, tmp_path):
    model = _model(name)
    heads = output_layers(model, X)
    pruner = make_pruner(model, X, heads, round_to=1)
    groups = pruner.groups(model)
    assert groups, pruner.excluded
    widths = {g.name: g.channels for g in groups}
    for ratio in (0.25, 0.5, 0.75):
        pruned = copy.deepcopy(model)
        result = PruningEngine(pruner).apply(pruned, PrunePlan({g.name: GroupPlan(ratio) for g in groups}, "l2"))
        assert result.removed and _params(pruned) < _params(model)
        after = {g.name: g.channels for g in pruner.groups(pruned)}
        assert all(after[n] <= widths[n] for n in after) and after != widths
        # export_onnx runs the ONNX file in ONNX Runtime and compares it with the module
        export_onnx(pruned, X, tmp_path / f"{name}-{ratio}.onnx")
        with torch.no_grad():
            assert pruned(X).shape == (4, 3)


@pytest.mark.parametrize("name, head", [("squeezenet", "classifier.1"), ("timm_vit", "head"), ("mha_net", "fc"),
                                        ("everything", "classifier.0")])
def test_output_layer_comes_from_the_graph_output_whatever_its_type(name, head):
    factory = {"squeezenet": "conv_classifier", "timm_vit": "timm_vit", "mha_net": "mha", "everything": "everything"}
    model = _model(factory[name])
    assert output_layers(model, X) == [head]
    groups = make_pruner(model, X, [head]).groups(model)
    assert all(head not in g.layers for g in groups)


class AttentionPooled(nn.Module):
    """The output is a fused-qkv attention's projection (attention pooling), read at the class token."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(1, 12, 2, stride=2)
        self.pool = A.TimmAttention(12, 3)
        self.out = nn.Linear(12, 3)  # not the output: the model returns the attention's projection sliced

    def forward(self, x):
        return self.pool(self.embed(x).flatten(2).transpose(1, 2))[:, 0, :3]


def test_attention_pooling_output_is_protected():
    model = AttentionPooled().eval()
    assert output_layers(model, X) == ["pool"]
    groups = make_pruner(model, X, ["pool"]).groups(model)
    assert "pool" not in {g.name for g in groups}   # its heads still feed the output: left alone


def test_grouped_convs_keep_their_group_count_and_groupnorm_its_groups(tmp_path):
    model = _model("everything")
    pruner = make_pruner(model, X, output_layers(model, X), round_to=1)
    groups = pruner.groups(model)
    grouped = next(g for g in groups if g.kind == "grouped")
    assert grouped.step == 4   # 16 channels in 4 conv groups of width 4
    before = {n: (m.groups, m.in_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    for ratio in (0.3, 0.6):   # neither is a multiple of 1/4: kept counts are rounded to whole steps
        pruned = copy.deepcopy(model)
        pruner.apply(pruned, PrunePlan({g.name: GroupPlan(ratio) for g in groups}, "l2"))
        for name, m in pruned.named_modules():
            if isinstance(m, nn.Conv2d) and name in before and before[name][0] != before[name][1]:
                assert m.groups == before[name][0] and m.in_channels % m.groups == 0 and m.in_channels < before[name][1]
            if isinstance(m, nn.GroupNorm):
                assert m.num_channels % m.num_groups == 0 and m.weight.numel() == m.num_channels
        export_onnx(pruned, X, tmp_path / f"{ratio}.onnx")


def test_timm_vit_heads_and_residual_stream_with_class_token_and_position_embedding(tmp_path):
    model = _model("timm_vit")
    pruner = make_pruner(model, X, ["head"], round_to=1)
    groups = {g.name: g for g in pruner.groups(model)}
    assert groups["blocks.0.attn"].kind == "heads" and groups["blocks.0.attn"].channels == 4
    assert groups["blocks.0.attn"].max_ratio == 0.75   # one head always stays
    pruned = copy.deepcopy(model)
    pruner.apply(pruned, PrunePlan({"blocks.0.attn": GroupPlan(0.5), "patch_embed.proj": GroupPlan(0.25)}, "l2"))
    attn = pruned.blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim == 4 and attn.qkv.out_features == 3 * 2 * 4
    assert attn.proj.in_features == 8 and pruned.blocks[1].attn.num_heads == 4
    assert pruned.cls_token.shape[-1] == pruned.pos_embed.shape[-1] == 12 == pruned.head.in_features
    export_onnx(pruned, X, tmp_path / "vit.onnx")


def test_torchvision_vit_width_attribute_follows_the_pruned_patch_projection(tmp_path):
    model = _model("tv_vit")
    pruner = make_pruner(model, X, output_layers(model, X), round_to=1)
    groups = {g.name: g for g in pruner.groups(model)}
    assert groups["conv_proj"].step == 4   # nn.MultiheadAttention: embed_dim stays a multiple of num_heads
    pruned = copy.deepcopy(model)
    pruner.apply(pruned, PrunePlan({"conv_proj": GroupPlan(0.5)}, "l2"))
    assert pruned.hidden_dim == pruned.conv_proj.out_channels == 8 == pruned.class_token.shape[-1]
    assert pruned.pos_embedding.shape[-1] == 8 and pruned.layers[0].self_attention.embed_dim == 8
    export_onnx(pruned, X, tmp_path / "vit.onnx")


def test_swin_residual_stream_prunes_in_whole_head_steps_and_its_heads_stay(tmp_path):
    model = _model("swin")
    pruner = make_pruner(model, X, ["head"], round_to=1)
    groups = {g.name: g for g in pruner.groups(model)}
    # PatchMerging's slices x[:, 1::2] are on the height (channels last), not on the channels
    assert set(groups) == {"blocks.0.mlp.0", "blocks.1.mlp.0", "patch_embed", "merge.reduction", "stage2.mlp.0"}
    # the window attention derives its head size from its input width (C // num_heads): its heads
    # stay (the report says why), the residual stream goes in multiples of num_heads
    assert {"blocks.0.attn", "blocks.1.attn"} <= set(pruner.excluded)
    assert "head size" in pruner.excluded["blocks.0.attn"]
    assert groups["patch_embed"].step == 2
    pruned = copy.deepcopy(model)
    pruner.apply(pruned, PrunePlan({"patch_embed": GroupPlan(0.3), "merge.reduction": GroupPlan(0.5)}, "l2"))
    attn = pruned.blocks[0].attn   # 16 * 0.3 -> 4 channels go (a whole step of 2 heads)
    assert pruned.patch_embed.out_channels == 12 == attn.qkv.in_features == attn.proj.in_features
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 12
    assert pruned.merge.norm.normalized_shape == (48,) and pruned.merge.reduction.out_features == 16
    assert pruned.stage2.attn.num_heads == 4 and pruned.head.in_features == 16
    export_onnx(pruned, X, tmp_path / "swin.onnx")


def test_maxvit_attention_is_found_by_its_layout_and_probed_tied_so_its_head_dims_follow_the_width(tmp_path):
    """MaxViT names its parts to_qkv / merge / n_heads and has an int head_dim, but reshapes the heads'
    output back to its input width: the probe finds that removing a head breaks it, so its heads stay and
    the residual stream goes in multiples of n_heads, each head losing dims (head_dim follows)."""
    model = _model("maxvit")
    pruner = make_pruner(model, X, ["head"], round_to=1)
    groups = {g.name: g for g in pruner.groups(model)}
    assert "head size" in pruner.excluded["attn"] and "attn" not in groups
    assert groups["stem.0"].step == 4   # 16 channels, 4 heads of 4
    pruned = copy.deepcopy(model)
    pruner.apply(pruned, PrunePlan({"stem.0": GroupPlan(0.25)}, "l2"))
    attn = pruned.attn
    assert pruned.stem[0].out_channels == 12 == attn.to_qkv.in_features == attn.merge.out_features
    assert attn.n_heads == 4 and attn.head_dim == 3 and attn.to_qkv.out_features == 3 * 12
    export_onnx(pruned, X, tmp_path / "maxvit.onnx")


def test_a_fused_attention_that_can_lose_heads_is_not_probed_tied():
    """timm's attention reshapes to (b, n, -1): a copy without a head still runs, so its heads are a group."""
    from autoprune.prune.attention import fused_attentions, is_tied

    model = _model("timm_vit")
    att = fused_attentions(model)[0]
    x = torch.randn(2, 5, 16)
    assert not is_tied(att, (x, (), {}))
    maxvit = fused_attentions(_model("maxvit"))[0]
    assert maxvit.layout.qkv == "to_qkv" and is_tied(maxvit, (torch.randn(2, 16, 4, 16), (), {}))


def test_multihead_attention_loses_whole_heads_as_its_fused_twin(tmp_path):
    """nn.MultiheadAttention in self-attention has a heads group; removing heads replaces it by a
    FusedMultiheadAttention (head_dim stays), also after its embedding width shrank (head_dim shrinks)."""
    from autoprune.prune.mha import FusedMultiheadAttention

    model = _model("tv_vit")
    pruner = make_pruner(model, X, output_layers(model, X), round_to=1)
    groups = {g.name: g for g in pruner.groups(model)}
    heads = groups["layers.0.self_attention"]
    assert heads.kind == "heads" and heads.channels == 4 and heads.max_ratio == 0.75
    plan = PrunePlan({"layers.0.self_attention": GroupPlan(0.5), "conv_proj": GroupPlan(0.5)}, "l2")
    pruned = copy.deepcopy(model)
    pruner.apply(pruned, plan)
    twin = copy.deepcopy(model)   # a logged candidate is rebuilt so: the plan on the architecture, then its weights
    pruner.apply(twin, plan)
    twin.load_state_dict(pruned.state_dict())
    attn = pruned.layers[0].self_attention
    assert isinstance(attn, FusedMultiheadAttention) and attn.num_heads == 2 and attn.head_dim == 2
    assert attn.qkv.out_features == 3 * 2 * 2 and attn.proj.in_features == 4 and attn.proj.out_features == 8
    assert isinstance(pruned.layers[1].self_attention, nn.MultiheadAttention)   # not in the plan: as it was
    export_onnx(pruned, X, tmp_path / "vit.onnx")
    # the fused module is a fused attention for later traces: its heads can go again, one at a time
    again = {g.name: g for g in make_pruner(pruned, X, output_layers(pruned, X), round_to=1).groups(pruned)}
    assert again["layers.0.self_attention"].channels == 2 and again["layers.0.self_attention"].kind == "heads"


def test_only_self_attention_multihead_attention_has_a_heads_group():
    model = _model("mha")   # an nn.TransformerEncoderLayer, then a pooling attention: a learned query over tokens
    groups = {g.name: g for g in make_pruner(model, X, ["fc"], round_to=1).groups(model)}
    assert groups["encoder.self_attn"].kind == "heads" and "pool" not in groups


@pytest.mark.parametrize("batch_first", [True, False])
def test_the_fused_twin_of_multihead_attention_computes_the_same(batch_first):
    from autoprune.prune.mha import FusedMultiheadAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    fused = FusedMultiheadAttention.from_mha(mha).eval()
    x = torch.randn(3, 5, 8)   # 3 sequences of 5 tokens
    x = x if batch_first else x.transpose(0, 1)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    calls = [dict(), dict(need_weights=False), dict(key_padding_mask=pad), dict(attn_mask=causal),
             dict(attn_mask=torch.randn(3 * 2, 5, 5)), dict(average_attn_weights=False)]
    with torch.no_grad():
        for kwargs in calls:
            want, got = mha(x, x, x, **kwargs), fused(x, x, x, **kwargs)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
            assert (got[1] is None) == (want[1] is None)
            if want[1] is not None:
                torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        unbatched = x[0] if batch_first else x[:, 0]
        torch.testing.assert_close(fused(unbatched, unbatched, unbatched)[0], mha(unbatched, unbatched, unbatched)[0],
                                   atol=1e-5, rtol=1e-5)


def test_attention_internals_are_one_node_for_the_trace():
    """The trace does not walk into a fused attention's reshapes and window shuffles: torch-pruning's
    graph holds the attention as one node, and none of its inner ops."""
    model = _model("swin")
    pruner = make_pruner(model, X, ["head"])
    graph, _, _ = pruner._graph(model)
    attn = graph.module2node[model.blocks[0].attn]
    assert len(attn.inputs) == 1 and "Reshape" in type(attn.inputs[0].module).__name__   # the window partition
    ops = {type(n.grad_fn).__name__ for n in graph.module2node.values()}
    assert "NativeLayerNormBackward0" in ops and not any("Softmax" in op or "Bmm" in op for op in ops)


def test_channel_shuffle_group_is_excluded_and_the_branches_prune():
    model = _model("shuffle")
    pruner = make_pruner(model, X, ["fc"])
    assert {g.name for g in pruner.groups(model)} == {"blocks.0.branch.0.0", "blocks.1.branch.0.0"}
    assert any("reshape" in reason for reason in pruner.excluded.values())


def test_mha_export_switches_the_fast_path_off_and_restores_it(tmp_path):
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 1,
                                  enable_nested_tensor=False).eval()
    tokens = torch.randn(2, 5, 8)
    assert torch.backends.mha.get_fastpath_enabled()
    export_onnx(model, tokens, tmp_path / "encoder.onnx")
    assert torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        export_onnx(model, tokens, tmp_path / "encoder2.onnx")
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


class Drifting(nn.Module):
    """Adds how often it has been called: the exported graph has the count of the export's own call baked
    in, so it does not compute what the module computes next."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) + self.calls


def test_an_op_the_torchscript_exporter_cannot_write_goes_through_the_dynamo_exporter(tmp_path):
    """AlexNet's adaptive pooling at 64 px: its output size (6) does not divide its input size, which the
    TorchScript exporter refuses; torch's dynamo exporter writes it (dynamic batch, weights inline)."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(),
                          nn.Linear(36, 3)).eval()
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(model, (X,), str(tmp_path / "ts.onnx"), dynamo=False)
    path = export_onnx(model, X, tmp_path / "pool.onnx")   # checked against PyTorch inside
    assert not list(tmp_path.glob("*.data")) and not onnx.load(str(path)).graph.initializer[0].external_data
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": torch.randn(5, 1, 8, 8).numpy()})[0].shape == (5, 3)


def test_export_refuses_an_onnx_graph_that_computes_something_else(tmp_path):
    with pytest.raises(ExportError, match="differs from PyTorch's"):
        export_onnx(Drifting(), torch.randn(3, 4), tmp_path / "d.onnx")


class Sliced(nn.Module):
    """Conv b reads the first 4 of conv a's 16 channels through a fixed slice (GhostNet's `[:, :out]`)."""

    def __init__(self, start: int = 0):
        super().__init__()
        self.start = start
        self.a = nn.Conv2d(1, 16, 3, padding=1)
        self.b = nn.Conv2d(4, 16, 1)
        self.fc = nn.Linear(32, 3)
        with torch.no_grad():   # the least important channels are the ones b needs
            self.a.weight[:4] *= 1e-3

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.fc(torch.cat([y, self.b(y[:, self.start:self.start + 4])], 1).mean((2, 3)))


def test_plan_that_cannot_be_built_is_repaired_and_recorded(tmp_path):
    model = Sliced().eval()
    pruner = make_pruner(model, X, ["fc"])
    group = next(g for g in pruner.groups(model) if g.name == "a")
    assert group.max_ratio == 0.75   # the 4 channels the slice reads stay
    pruned = copy.deepcopy(model)
    result = PruningEngine(pruner).apply(pruned, PrunePlan({"a": GroupPlan(0.9)}, "l2"))
    assert "asks for 14 of 16 channels; 12 can go" in result.repaired["a"]
    assert result.removed["a"] == list(range(4, 16)) and pruned.a.out_channels == 4 == pruned.b.in_channels
    export_onnx(pruned, X, tmp_path / "sliced.onnx")


def test_slice_with_an_offset_excludes_its_group_with_the_reason():
    model = Sliced(start=2).eval()
    pruner = make_pruner(model, X, ["fc"])
    assert "a" not in {g.name for g in pruner.groups(model)}
    assert "slice [2:6:1] with fixed bounds" in pruner.excluded["a"]


def test_search_space_offers_only_feasible_ratios():
    model = _model("timm_vit")
    groups = make_pruner(model, X, ["head"]).groups(model)
    space = build_space({"ratio": {"low": 0.0, "high": 0.85, "step": 0.05},
                         "tie": {"heads": ["blocks.*.attn"]}}, groups)
    dims = {d.name: d.range for d in space.dimensions}
    assert dims["heads"].high == 0.75 and dims["blocks.0.mlp.0"].high == 0.85
    two_heads = [g for g in groups if g.kind != "heads"] + [
        type(groups[0])("blocks.0.attn", 2, (), (), "heads", 1, 0.5)]
    assert {d.name: d.range.high for d in build_space({}, two_heads).dimensions}["blocks.0.attn"] == 0.5
    low = build_space({"ratio": {"low": 0.6, "high": 0.8}}, [type(groups[0])("g", 2, (), (), "heads", 1, 0.5)])
    assert (low.dimensions[0].range.low, low.dimensions[0].range.high) == (0.0, 0.0)


def _search(make_cfg, tmp_path, name: str):
    outcome = run(make_cfg("search.n_trials=2", "task.name=blobs", "~task.model", "~task.data",
                           f"+task.model._target_=arch_models.{name}", "+task.data._target_=factories.blobs"),
                  tmp_path / "out")
    study = optuna.load_study(study_name=outcome.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2, reasons
    assert len(outcome.report.trials) == 2
    assert all(c.params < outcome.report.baseline.params for c in outcome.report.trials)


@pytest.mark.slow
def test_search_on_a_model_with_every_pattern(make_cfg, tmp_path):
    _search(make_cfg, tmp_path, "everything")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet", "regnet", "squeezenet", "densenet_gn", "ghostnet", "mixnet", "mha_net",
                                  "tv_vit", "timm_vit", "swin", "maxvit"])
def test_search_per_pattern(make_cfg, tmp_path, name):
    _search(make_cfg, tmp_path, name)
