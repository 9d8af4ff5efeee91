"""Schedules (one-shot, iterative, AGP, lottery-ticket rewinding) and recovery (fine-tune, distillation,
regularisers), on the real trial pipeline with the tiny digits setup."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune.schedule import ScheduleConfig, agp_fraction
from autoprune.recover import RecoverConfig, bn_l1, distillation_loss, finetune, group_lasso


def _context(make_cfg, *overrides):
    from autoprune.context import build_context

    return build_context(make_cfg(*overrides))


def _widths(model):
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def test_schedule_points_follow_the_definitions():
    assert ScheduleConfig("iterative", steps=3).points(30) == [(0, 1 / 3), (10, 2 / 3), (20, 1.0)]
    agp = ScheduleConfig("agp", agp_steps=4, agp_start=0.0, agp_end=0.5).points(80)
    assert [s for s, _ in agp] == [10, 20, 30, 40]
    assert [f for _, f in agp] == pytest.approx([1 - 0.75 ** 3, 1 - 0.5 ** 3, 1 - 0.25 ** 3, 1.0])
    assert agp_fraction(2, 4) == pytest.approx(0.875)
    cfg = ScheduleConfig.from_prune({"schedule": "agp", "agp": {"steps": 2, "end": 0.8}, "lth": {"train_epochs": None}})
    assert (cfg.kind, cfg.agp_steps, cfg.agp_end, cfg.train_epochs) == ("agp", 2, 0.8, None)
    with pytest.raises(ConfigError, match="choose one of"):
        ScheduleConfig.from_prune({"schedule": "sometimes"})
    with pytest.raises(ConfigError, match="unknown key"):
        ScheduleConfig.from_prune({"agp": {"stop": 1.0}})
    with pytest.raises(ConfigError, match="start <= end"):
        ScheduleConfig.from_prune({"agp": {"start": 0.9, "end": 0.5}})


@pytest.mark.slow   # several fine-tunes
@pytest.mark.parametrize("schedule", ["iterative", "agp", "lth"])
def test_gradual_schedules_end_exactly_where_one_shot_does(schedule, make_cfg, tmp_path):
    oneshot = _context(make_cfg, "recover.epochs=2")
    names = [g.name for g in oneshot.groups]
    plan = PrunePlan({n: GroupPlan(0.5) if i % 2 else GroupPlan(0.5, "unstructured") for i, n in enumerate(names)})
    reference = oneshot.evaluator.evaluate(plan, tmp_path / "oneshot")
    ctx = _context(make_cfg, "recover.epochs=2", f"prune.schedule={schedule}", "prune.iterative.steps=2",
                   "prune.agp.steps=3", "prune.lth.train_epochs=1")
    result = ctx.evaluator.evaluate(plan, tmp_path / schedule)
    want = oneshot.evaluator.rebuild(reference.plan, reference.model_path)
    got = ctx.evaluator.rebuild(result.plan, result.model_path)
    assert _widths(got) == _widths(want) and result.params == reference.params
    modules = dict(got.named_modules())
    for i, group in enumerate(ctx.groups):
        if i % 2 == 0:  # unstructured groups: exactly their ratio of zeros, kept through fine-tuning
            for layer in group.layers:
                w = modules[layer].weight
                assert int((w == 0).sum()) >= round(0.5 * w.numel()), layer
    assert result.latency.median_ms > 0 and set(result.seconds) == {"prune", "measure", "finetune", "score", "export", "artifact"}


def test_iterative_channel_schedule_prunes_in_steps_during_finetuning(make_cfg, tmp_path):
    ctx = _context(make_cfg, "recover.epochs=3", "prune.schedule=iterative", "prune.iterative.steps=3")
    names = [g.name for g in ctx.groups]
    widths, seen = [], []
    plan = PrunePlan.uniform(names, 0.75)
    original = ctx.evaluator.engine.apply

    def spy(model, plan_, **kwargs):
        out = original(model, plan_, **kwargs)
        widths.append(model.stem[0].out_channels)
        return out

    ctx.evaluator.engine.apply = spy
    ctx.evaluator.evaluate(plan, tmp_path / "it", monitor=lambda e, acc, lat: seen.append((e, lat)))
    # first the one-shot twin that is measured, then three steps towards 8 -> 2 channels (round_to 4: 8, 4, 4)
    assert widths[0] == 4 and len(widths) == 4 and widths[1:] == sorted(widths[1:], reverse=True)
    assert [e for e, _ in seen] == [0, 1, 2] and len({lat for _, lat in seen}) == 1   # latency known from epoch 0


@pytest.mark.slow   # several fine-tunes
def test_lottery_ticket_rewinds_survivors_to_the_baseline(make_cfg, tmp_path):
    ctx = _context(make_cfg, "recover.epochs=0", "prune.schedule=lth", "prune.lth.train_epochs=1",
                   "prune.lth.rewind_epoch=0")
    names = [g.name for g in ctx.groups]
    result = ctx.evaluator.evaluate(PrunePlan.uniform(names, 0.5, pattern="unstructured"), tmp_path / "lth")
    model = ctx.evaluator.rebuild(result.plan, result.model_path)
    baseline = dict(ctx.baseline.named_modules())
    for group in ctx.groups:
        for layer in group.layers:
            w, w0 = dict(model.named_modules())[layer].weight, baseline[layer].weight
            kept = w != 0
            assert int((~kept).sum()) == round(0.5 * w.numel())
            assert torch.equal(w[kept], w0[kept])          # rewound: the baseline's values, not the trained ones
    # the mask came from the *trained* weights: it is not the baseline's own magnitude mask
    from autoprune.prune.sparsity import unstructured_mask
    layer = ctx.groups[0].layers[0]
    own = unstructured_mask(baseline[layer].weight, 0.5)
    assert not torch.equal(own, dict(model.named_modules())[layer].weight != 0)


def test_lottery_ticket_rewinds_channels_in_lockstep(make_cfg, tmp_path):
    ctx = _context(make_cfg, "recover.epochs=0", "prune.schedule=lth", "prune.lth.train_epochs=1")
    names = [g.name for g in ctx.groups]
    result = ctx.evaluator.evaluate(PrunePlan.uniform(names, 0.5), tmp_path / "lth")
    model = ctx.evaluator.rebuild(result.plan, result.model_path)
    w, w0 = model.stem[0].weight, ctx.baseline.stem[0].weight
    assert w.shape[0] == w0.shape[0] // 2
    for row in w:  # every surviving filter is one of the baseline's, untouched
        assert any(torch.equal(row, r0) for r0 in w0)


def test_distillation_loss_and_recover_config():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    assert distillation_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(s, torch.tensor([[0.0, 2.0, 0.0]]), 4.0).item() > 0
    small = distillation_loss(s, torch.tensor([[0.0, 2.0, 0.0]]), 1.0).item()
    assert small != distillation_loss(s, torch.tensor([[0.0, 2.0, 0.0]]), 4.0).item()
    cfg = RecoverConfig.coerce({"epochs": 2, "lr": 0.1, "kd": {"enabled": True, "alpha": 0.7},
                                "regulariser": {"kind": "bn_l1", "epochs": 1}})
    assert cfg.train.epochs == 2 and cfg.kd.alpha == 0.7 and cfg.regulariser.active
    with pytest.raises(ConfigError, match=r"recover.kd: unknown key\(s\) \['beta'\]"):
        RecoverConfig.coerce({"kd": {"beta": 1}})
    with pytest.raises(ConfigError, match="recover: unknown key"):
        RecoverConfig.coerce({"epoch": 1})
    with pytest.raises(ConfigError, match="bn_l1 \\| group_lasso|choose one of"):
        RecoverConfig.coerce({"regulariser": {"kind": "l0"}})


def test_distillation_pulls_the_student_towards_the_teacher(make_cfg):
    ctx = _context(make_cfg)
    data = ctx.task.data
    teacher = ctx.baseline
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    from autoprune.recover.finetune import TrainConfig, logits_of

    def gap(model):
        return (logits_of(model, data.val).softmax(1) - logits_of(teacher, data.val).softmax(1)).abs().mean().item()

    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=32, weight_decay=0.0)
    plain, kd = copy.deepcopy(student), copy.deepcopy(student)
    finetune(plain, data.train, cfg)
    finetune(kd, data.train, cfg, teacher=teacher, kd_alpha=1.0, kd_temperature=2.0)
    assert gap(kd) < gap(plain)


@pytest.mark.slow   # several fine-tunes
@pytest.mark.parametrize("kind", ["bn_l1", "group_lasso"])
def test_regulariser_phase_shrinks_what_it_targets(kind, make_cfg):
    plain = _context(make_cfg)
    reg = _context(make_cfg, f"recover.regulariser.kind={kind}", "recover.regulariser.weight=0.1",
                   "recover.regulariser.epochs=2")
    layers = [layer for g in reg.groups for layer in g.layers]
    start = reg.evaluator.start_model()
    assert start is reg.evaluator.start_model() and start is not reg.baseline   # computed once, reused
    same = copy.deepcopy(plain.baseline)   # the same training without the penalty
    torch.manual_seed(plain.evaluator.recover.seed)
    finetune(same, plain.task.data.train, plain.evaluator.recover.train, epochs=2)
    measure = bn_l1 if kind == "bn_l1" else (lambda m: group_lasso(m, layers))
    assert measure(start).item() < 0.9 * measure(same).item()


@pytest.mark.slow   # several fine-tunes
def test_kd_and_schedule_run_end_to_end_in_a_search(make_cfg, tmp_path):
    from autoprune.cli import run

    outcome = run(make_cfg("search.n_trials=2", "recover.kd.enabled=true", "prune.schedule=agp",
                           "prune.pattern=nm"), tmp_path / "out")
    assert len(outcome.report.trials) == 2
