"""Catalogue of bad input, as users meet it: the real CLI in a process of its own (forked from an
interpreter that has the imports loaded, see forked_cli.py), one case per mistake.

Every case must end the same way: exit status 2, exactly one `autoprune: error: ...` line on stderr
that says what is wrong and names the fix, no traceback, and nothing half-written (no Optuna study,
no MLflow run, no baseline in the cache, no temporary file, no `outputs/<date>/<time>/` folder).
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import optuna
import pytest
import torch

from autoprune.cli import MODES
from autoprune.tasks.models import resnet_small
from conftest import FAST
from forked_cli import ForkedCli, Result

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TOKEN_VAR = "AUTOPRUNE_BAD_INPUT_TOKEN"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]                 # CLI arguments; "{tmp}" is the case's tmp_path
    expect: tuple[str, ...]               # substrings of the one error line: the problem and the fix
    files: dict[str, Union[str, bytes]] = field(default_factory=dict)   # written under tmp_path first
    setup: Optional[Callable[[Path], tuple[str, ...]]] = None           # returns the studies it created
    env: dict[str, str] = field(default_factory=dict)
    digits: bool = True                   # add FAST's digits-task shrinkers (another task has other keys)


def case(*args: str, expect: Union[str, tuple[str, ...]], id: str, slow: bool = False, skip: str = "",
         **kwargs):
    """One catalogue entry. `slow` ones (the CLI gets as far as the model or the databases) are left out
    by `-m "not slow"` to keep the quick run short; `skip` says why a case cannot happen on this machine."""
    marks = [pytest.mark.slow] if slow else []
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    expect = (expect,) if isinstance(expect, str) else expect
    return pytest.param(Case(tuple(args), expect, **kwargs), id=id, marks=marks)


# -- setups: real files and studies the failing invocation meets -----------------------------------
def checkpoint_of_other_widths(tmp: Path) -> tuple[str, ...]:
    torch.save(resnet_small(widths=(4, 8, 8)).state_dict(), tmp / "other.pt")
    return ()


def checkpoint_without_state_dict(tmp: Path) -> tuple[str, ...]:
    torch.save([1, 2, 3], tmp / "list.pt")
    return ()


def nni_absent(tmp: Path) -> tuple[str, ...]:
    """A shadowing `nni` package that fails to import, as on a machine without NNI."""
    (tmp / "no_nni" / "nni").mkdir(parents=True)
    (tmp / "no_nni" / "nni" / "__init__.py").write_text(
        'raise ImportError("No module named \'nni\' (simulated)", name="nni")\n')
    return ()


def study_with_one_trial(tmp: Path) -> tuple[str, ...]:
    """A real study in the case's storage with trial 0 complete (what a finished search leaves)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp / 'optuna.db'}", study_name="done",
                                directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0]))
    return ("done",)


def study_of_other_settings(tmp: Path) -> tuple[str, ...]:
    """A study named 'done' whose stored fingerprint says it was run with other settings."""
    from autoprune.search.fingerprint import ATTR, PARTS

    study_with_one_trial(tmp)
    study = optuna.load_study(study_name="done", storage=f"sqlite:///{tmp / 'optuna.db'}")
    study.set_user_attr(ATTR, {part: "other" for part in PARTS})
    return ("done",)


def alias_bomb(key: str, levels: int = 9) -> str:
    """A "billion laughs" YAML: 9 ** levels values behind `key`, from a file of a few hundred bytes."""
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join([*lines, f"{key}: [{', '.join([f'*l{levels - 1}'] * 9)}]", "runtime: onnxruntime", ""])


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


AGENT = "runtime: onnxruntime\nagent_url: http://127.0.0.1:1\nagent_token: env:" + TOKEN_VAR + "\n"

CASES = [
    # -- the command line itself (checked before Hydra runs: fast) --------------------------------
    case("search.n_trails=3", expect=("unknown config key 'search.n_trails'", "did you mean search.n_trials?"),
         id="unknown-key"),
    case("n_trials=3", expect=("unknown config key 'n_trials'", "did you mean search.n_trials?"),
         id="key-without-its-section"),
    case("search.constraints.max_latency=3",
         expect="did you mean search.constraints.max_latency_ms?", id="unknown-constraint-key"),
    case("task=digts", expect=("unknown task 'digts'", "did you mean task=digits?", "mnist1d"),
         id="group-option-typo"),
    case("search.n_trials=abc", expect=("search.n_trials=abc is not an integer", "e.g. search.n_trials=24"),
         id="wrong-type-integer"),
    case("recover.lr=fast", expect=("recover.lr=fast is not a number", "e.g. recover.lr=0.02"),
         id="wrong-type-number", slow=True),
    case("prune.ignore=fc", expect=("prune.ignore=fc is not a list", "prune.ignore=[fc]"), id="wrong-type-list"),
    case("search.early_stop.enabled=maybe", expect=("is not true or false", "search.early_stop.enabled=false"),
         id="wrong-type-bool"),
    case("search.n_trials=1", "pick", expect=("'pick' is a mode", "put it first", "mode=pick"),
         id="mode-word-not-first"),
    case("search.n_trials", expect=("cannot parse override 'search.n_trials'", "write key=value"),
         id="override-without-value"),
    case("+search.n_trials=3", expect=("already at 'search.n_trials'", "--cfg job"), id="adding-an-existing-key",
         slow=True),
    # -- search settings (checked before anything is built) ---------------------------------------
    case("mode=train", expect=("unknown mode 'train'", "choose one of"), id="unknown-mode"),
    case("search.n_trials=-1", expect=("search.n_trials=-1 must be an integer >= 0", "e.g. 24"), id="negative-n-trials"),
    case("search.sampler=magic", expect=("unknown search.sampler 'magic'", "choose one of"), id="unknown-sampler"),
    case("search.screen.mode=on", expect=("unknown search.screen.mode 'on'", "choose one of [auto, always, never]"),
         id="screen-mode-on"),
    case("search.backend=ray", expect=("unknown search.backend 'ray'", "choose one of [optuna, nni]"),
         id="unknown-backend"),
    case("search.backend=nni", "search.nni.tuner=magic", expect=("unknown search.nni.tuner 'magic'", "choose one of"),
         id="unknown-nni-tuner", slow=True),
    case("search.backend=nni", expect=("needs NNI", "pip install 'autoprune[nni]'"), setup=nni_absent,
         env={"PYTHONPATH": "{tmp}/no_nni"}, id="nni-not-installed"),
    case("search.objectives=[val_accuracy,speed]", expect=("unknown search.objectives ['speed']", "choose from"),
         id="unknown-objective"),
    case("search.constraints.min_accuracy=1.5", expect=("min_accuracy=1.5 is outside [0, 1]", "=0.015"),
         id="constraint-out-of-range"),
    case("search.constraints.min_accuracy=97", expect=("min_accuracy=97 is outside [0, 1]",
                                                       "for 97% write search.constraints.min_accuracy=0.97"),
         id="constraint-accuracy-as-percent"),
    case("search.constraints.max_accuracy_drop=5", expect=("max_accuracy_drop=5 is outside [0, 1]",
                                                           "write search.constraints.max_accuracy_drop=0.05"),
         id="accuracy-drop-out-of-range"),
    case("search.constraints.max_accuracy_drop=-0.1", expect=("max_accuracy_drop=-0.1 is outside [0, 1]", "=0.01 for 1 point"),
         id="accuracy-drop-negative"),
    case("pick", "pick.min_accuracy=97", expect=("pick.min_accuracy=97 is outside [0, 1]",
                                                 "write pick.min_accuracy=0.97"), id="pick-accuracy-as-percent"),
    case("search.warm_start=[1.5]", expect=("search.warm_start ratio 1.5 is outside [0, 1)", "[0.25,0.5]"),
         id="warm-start-ratio-out-of-range"),
    case("search.resume=maybe", expect=("unknown search.resume 'maybe'", "use auto", "or force"), id="unknown-resume-mode"),
    case("search.study_name=done", setup=study_of_other_settings,
         expect=("study 'done' was run with a different task.model", "search.resume=force"),
         id="resume-with-other-settings"),
    # -- recovery and baseline training ---------------------------------------------------------------
    case("recover.batch_size=0", expect="recover.batch_size=0 must be an integer >= 1", id="recover-batch-size-0"),
    case("recover.batch_size=-5", expect="recover.batch_size=-5 must be an integer >= 1", id="recover-batch-size-negative",
         slow=True),
    case("recover.lr=-1", expect=("recover.lr=-1 must be a learning rate > 0", "e.g. 0.02"), id="recover-lr-negative"),
    case("recover.epochs=-1", expect="recover.epochs=-1 must be an integer >= 0", id="recover-epochs-negative"),
    case("task.train.lr=0", expect="task.train.lr=0 must be a learning rate > 0", id="baseline-lr-zero", slow=True),
    # -- hardware profile ----------------------------------------------------------------------------
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "runtime: onnxruntime\ninput_shape: [3, 224, 224]\n"},
         expect=("input_shape [3, 224, 224] but the task's samples are [1, 16, 16]", "set it to [1, 16, 16]"),
         id="hw-input-shape-disagrees-with-data"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": alias_bomb("input_shape")},
         expect=("is not a flat mapping", "more than 1,000 values"), id="hw-profile-alias-bomb-in-input-shape"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": alias_bomb("description")},
         expect=("is not a flat mapping", "more than 1,000 values"), id="hw-profile-alias-bomb-in-description",
         slow=True),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "runtime: onnxruntime\ndescription: [1, 2]\n"},
         expect="field 'description' must be a string", id="hw-profile-description-not-a-string", slow=True),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "runtime: onnxruntime\nthreads: 10000\n"},
         expect=("field 'threads' is 10000 but this machine has", "use at most"), id="hw-profile-more-threads-than-cores"),
    case("hw=raspberry-pi-9", expect=("unknown hw_profiles 'raspberry-pi-9'", "cpu-ort-1t", "or give a path"), id="unknown-hw-profile"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "name: x\nruntime: [onnxruntime\n"},
         expect=("is not valid YAML (line 3", "fix its syntax"), id="hw-profile-invalid-yaml"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "runtime: onnxruntime\nthreads: two\n"},
         expect="field 'threads' must be a positive integer or \"all\", got 'two'", id="hw-profile-wrong-type"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "runtime: onnxruntime\nthread: 2\n"},
         expect=("unknown field(s) ['thread']", "known fields", "'threads'"), id="hw-profile-unknown-field"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "- onnxruntime\n"},
         expect="must be a YAML mapping of field: value", id="hw-profile-not-a-mapping", slow=True),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": "runtime: openvino\n"},
         expect=("field 'runtime' is 'openvino'", "choose one of ['onnxruntime', 'tensorrt', 'torch']"),
         id="unknown-runtime"),
    case("hw=trt-fp16", expect=("TensorRT is not installed", "pip install tensorrt"), id="tensorrt-not-installed",
         skip="TensorRT is installed here" if HAS_TENSORRT else ""),
    case("hw=cuda-ort", expect=("'CUDAExecutionProvider' is not available here", "pick a profile for this machine"),
         id="gpu-provider-missing", slow=True, skip="ONNX Runtime has CUDA here" if _has_cuda_provider() else ""),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": AGENT}, env={TOKEN_VAR: "secret"},
         expect=("cannot reach the agent at http://127.0.0.1:1", "start `python -m autoprune agent`"),
         id="measurement-agent-unreachable"),
    case("hw={tmp}/hw.yaml", files={"hw.yaml": AGENT}, env={TOKEN_VAR: ""},
         expect=("the agent token is not set", f"export {TOKEN_VAR}="), id="measurement-agent-token-unset", slow=True),
    # -- search space ----------------------------------------------------------------------------------
    case("search_space=missing.yaml", expect=("search_spaces file not found: missing.yaml", "fix the path"),
         id="search-space-missing", slow=True),
    case("search_space={tmp}/space.yaml", files={"space.yaml": "groups: [\n"},
         expect=("is not valid YAML (line", "fix its syntax"), id="search-space-invalid-yaml", slow=True),
    case("search_space={tmp}/space.yaml", files={"space.yaml": "groups: all\nexclude: ['*']\n"},
         expect=("the search space is empty", "check groups/exclude"), id="search-space-empty"),
    case("search_space={tmp}/space.yaml", files={"space.yaml": "ratio: {low: 0.0, high: 1.0}\n"},
         expect="ratio range [0.0, 1.0] must satisfy 0 <= low <= high < 1", id="ratio-high-1"),
    case("search_space={tmp}/space.yaml", files={"space.yaml": "ratio: {low: -0.1, high: 0.5}\n"},
         expect="ratio range [-0.1, 0.5] must satisfy 0 <= low <= high < 1", id="ratio-low-negative", slow=True),
    case("search_space={tmp}/space.yaml", files={"space.yaml": "paterns: [channel]\n"},
         expect=("unknown key(s) ['paterns']", "'patterns'"), id="search-space-unknown-key", slow=True),
    case("search_space={tmp}/space.yaml", files={"space.yaml": "groups: [classifier.0]\n"},
         expect=("'classifier.0' matches no prunable group", "the model's groups"), id="search-space-unknown-group",
         slow=True),
    # -- pruning settings (checked on the untrained model, before the baseline trains) ------------------
    case("prune.importance=magic", expect=("unknown prune.importance 'magic'", "choose one of"),
         id="unknown-importance"),
    case("prune.pattern=diagonal", expect=("unknown prune.pattern 'diagonal'", "choose one of"), id="unknown-pattern",
         slow=True),
    case("prune.schedule=weekly", expect=("unknown prune.schedule 'weekly'", "choose one of"), id="unknown-schedule",
         slow=True),
    # -- model, checkpoint, data -----------------------------------------------------------------------
    case("task.checkpoint={tmp}/none.pt", expect=("checkpoint not found", "fix task.checkpoint"),
         id="checkpoint-missing", slow=True),
    case("task.checkpoint={tmp}/corrupt.pt", files={"corrupt.pt": bytes(range(256)) * 8},
         expect=("cannot be read", "torch.save(model.state_dict(), path)"), id="checkpoint-corrupt", slow=True),
    case("task.checkpoint={tmp}/list.pt", setup=checkpoint_without_state_dict,
         expect=("holds no state_dict", "torch.save(model.state_dict(), path)"), id="checkpoint-not-a-state-dict",
         slow=True),
    case("task.checkpoint={tmp}/other.pt", setup=checkpoint_of_other_widths,
         expect=("does not fit task.model (size mismatch for stem.0.weight", "use a checkpoint of this architecture"),
         id="checkpoint-of-another-architecture"),
    case("task.model.in_channels=3", expect=("the model rejects inputs of shape (1, 1, 16, 16)",
                                             "make task.data and task.model agree"), id="wrong-input-shape"),
    case("task.model._target_=bad_models.MedianNet",
         expect=("does not export to ONNX", "aten::kthvalue", "replace that layer"), id="unsupported-layer"),
    case("task.model._target_=autoprune.tasks.zoo.resnet18",
         expect=("task.model._target_=autoprune.tasks.zoo.resnet18 raised TypeError: resnet18() got an unexpected "
                 "keyword argument 'widths'", "remove the key with ~task.model.widths"),
         id="model-factory-rejects-a-key"),
    case("task.model._target_=torch.nn.Conv2d", "~task.model.num_classes", "~task.model.in_channels",
         "~task.model.widths", "~task.model.blocks",
         expect=("raised TypeError: Conv2d.__init__() missing 3 required positional arguments",
                 "add +task.model.in_channels=<value> +task.model.out_channels=<value> +task.model.kernel_size=<value>"),
         id="model-factory-misses-arguments"),
    case("task.model._target_=preflight_models.stuck_net", "~task.model.widths", "~task.model.blocks",
         "prune.preflight=true",
         "prune.preflight_timeout_s=3",
         expect=("pre-flight of task.model (_Net) ran past its 3 s limit while finding the output layers in "
                 "module 'inner'", "add that module to prune.ignore"), id="model-trace-never-ends"),
    case("task.model._target_=preflight_models.OnlyFixedReshape", "~task.model.widths", "~task.model.blocks",
         "prune.preflight=true",
         "+task.model.width=32",
         expect=("no group of task.model (OnlyFixedReshape) can be pruned, exported and run (group 'conv'",
                 "add its layers to prune.ignore"), id="model-with-nothing-prunable"),
    case("task.model._target_=bad_models.NoSuchNet",
         expect=("Error locating target 'bad_models.NoSuchNet'", "importable class or function"),
         id="model-class-does-not-exist", slow=True),
    case("task=cifar10-resnet18", "task.data.root={tmp}/no-cifar", digits=False,
         expect=("CIFAR-10 python batches not found", "task.data.root="), id="dataset-files-missing"),
    # -- storage and tracking ----------------------------------------------------------------------------
    case("search.storage=postgresql://postgres@127.0.0.1:1/x",
         expect=("cannot open search.storage 'postgresql://postgres@127.0.0.1:1/x'", "fix search.storage"),
         id="storage-unreachable"),
    case("search.storage=notaurl", expect=("is not a SQLAlchemy URL", "sqlite:///autoprune.db"),
         id="storage-not-a-url", slow=True),
    case("search.storage=nosuchdb://x", expect=("cannot open search.storage", "fix search.storage"),
         id="storage-unknown-dialect", slow=True),
    case("tracking.uri=nosuch://x", expect=("cannot use MLflow tracking.uri 'nosuch://x'", "sqlite:///mlflow.db"),
         id="mlflow-uri-bad-scheme", slow=True),
    case("tracking.uri=http://127.0.0.1:1", expect=("MLflow tracking server http://127.0.0.1:1 does not answer",
                                                    "fix tracking.uri"), id="mlflow-server-unreachable"),
    # -- modes that read an earlier search ---------------------------------------------------------------
    case("pick", expect=("no study in", "run a search first"), id="pick-without-a-study", slow=True),
    case("report", expect=("no study in", "run a search first"), id="report-without-a-study", slow=True),
    case("reproduce", "reproduce.trial=3", expect=("no study in", "run a search first"),
         id="reproduce-without-a-study", slow=True),
    case("reproduce", expect=("reproduce needs a trial number", "reproduce.trial=<N>"),
         id="reproduce-without-a-trial-number"),
    case("reproduce", "reproduce.trial=7", setup=study_with_one_trial,
         expect=("study 'done' has no trial 7; completed trials: [0]", "set reproduce.trial to one of them"),
         id="reproduce-trial-that-does-not-exist", slow=True),
    case("pick", "search.study_name=nope", setup=study_with_one_trial,
         expect=("no study 'nope'", "set search.study_name to one of ['done']"), id="pick-unknown-study-name",
         slow=True),
]


def base_args(tmp: Path, digits: bool) -> list[str]:
    """Fast settings with every piece of state inside the case's tmp_path."""
    return [*(FAST if digits else [a for a in FAST if a.startswith("hw=")]), "task.train.epochs=0", "search.n_trials=0",
            f"search.storage=sqlite:///{tmp / 'optuna.db'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"cache_dir={tmp / 'cache'}"]


def run_cli(cli: ForkedCli, c: Case, tmp: Path) -> Result:
    """`python -m autoprune <mode> <base args> <case args>` as a fresh process in tmp (forked_cli.py)."""
    args = [a.replace("{tmp}", str(tmp)) for a in c.args]
    head = args[:1] if args and args[0] in MODES else []   # a mode word must come first
    extra = {k: v.replace("{tmp}", str(tmp)) for k, v in c.env.items()}
    env = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(filter(None, [extra.get("PYTHONPATH"), str(TESTS)]))}
    return cli.run([*head, *base_args(tmp, c.digits), *args[len(head):]], cwd=tmp, env=env)


def assert_one_clear_line(result: Result, expect: tuple[str, ...]) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("autoprune: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for part in expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def assert_nothing_half_written(tmp: Path, studies: tuple[str, ...] = ()) -> None:
    """No study but the ones the case made, no MLflow run, no cached baseline, no temporary file."""
    optuna_db = tmp / "optuna.db"
    if optuna_db.exists():
        assert optuna.get_all_study_names(f"sqlite:///{optuna_db}") == list(studies)
    mlflow_db = tmp / "mlflow.db"
    if mlflow_db.exists():
        with sqlite3.connect(mlflow_db) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert "runs" not in tables or db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    cache = tmp / "cache"
    assert not (tmp / "outputs").exists(), sorted((tmp / "outputs").rglob("*"))
    assert not list(cache.rglob("*.tmp")), sorted(cache.rglob("*"))
    assert not list((cache / "baselines").glob("*")), "a baseline was trained before the mistake was found"


@pytest.mark.parametrize("c", CASES)
def test_bad_input_gives_one_clear_line_and_leaves_nothing_behind(forked_cli, tmp_path, c: Case):
    for name, content in c.files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    studies = c.setup(tmp_path) if c.setup else ()
    result = run_cli(forked_cli, c, tmp_path)
    assert_one_clear_line(result, c.expect)
    assert_nothing_half_written(tmp_path, studies)
