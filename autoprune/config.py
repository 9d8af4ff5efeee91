"""The typed config tree: every key of conf/config.yaml, its default, type, range and choices.

The defaults live here, once: conf/config.yaml repeats them with comments for `--cfg job` and
`<mode> --help`, and tests/test_config.py fails when the two drift. `cli.run` turns the config Hydra
composed into an `AppConfig` (`AppConfig.of(cfg)`) before anything runs; a bad value fails there with
one line naming the key and the fix. Lower layers read attributes (`cfg.search.n_trials`), never a
DictConfig. `task` stays an open mapping (its `_target_`s are for Hydra's instantiate); its common
keys are typed (`TaskConfig`).

Choices that are registries elsewhere (samplers, importance criteria, schedules ...) are looked up
lazily: importing the schema imports no torch, Optuna or NNI.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from autoprune.errors import ConfigError, first_line
from autoprune.recover.config import RecoverSection
from autoprune.recover.finetune import TrainConfig
from autoprune.resources import resolve_yaml
from autoprune.schema import CFG_HINT, build, check, convert, setting, to_plain, unknown_keys

MODES = ("search", "report", "pick", "reproduce", "calibrate", "sensitivity")
RESUME = ("auto", "force")
PREFLIGHT_KEYS = ("preflight", "preflight_timeout_s", "preflight_memory_mb")  # how a model is checked, not searched


def _samplers() -> list[str]:
    from autoprune.search.searchers import OPTUNA_SAMPLERS
    return [*OPTUNA_SAMPLERS, "uniform", "allocate"]


def _tuners() -> tuple[str, ...]:
    from autoprune.search.searchers import NNI_TUNERS
    return NNI_TUNERS


def _metrics() -> list[str]:
    from autoprune.search.objectives import DIRECTIONS
    return list(DIRECTIONS)


def _importances() -> list[str]:
    from autoprune.prune.importance import IMPORTANCES
    return sorted(IMPORTANCES)


def _patterns() -> tuple[str, ...]:
    from autoprune.plan import PATTERNS
    return PATTERNS


def _schedules() -> tuple[str, ...]:
    from autoprune.prune.schedule import SCHEDULES
    return SCHEDULES


def _scopes() -> tuple[str, ...]:
    from autoprune.prune.engine import SCOPES
    return SCOPES


class Section:
    """Checked on construction, so a section built in Python meets the same rules as the config."""

    where = ""

    def __post_init__(self) -> None:
        check(self, self.where)


# ------------------------------------------------------------------------------------------ search
@dataclass(frozen=True)
class NniConfig(Section):
    where = "search.nni"
    tuner: str = setting("tpe", choices=_tuners)
    speedup_weight: float = setting(0.02, ge=0)


@dataclass(frozen=True)
class EarlyStopConfig(Section):
    where = "search.early_stop"
    enabled: bool = False
    margin: float = 0.02      # any number: a negative margin stops every trailing candidate (tests)
    min_epoch: int = setting(0, ge=0)


FRACTION = "validation accuracy is a fraction, e.g. {key}=0.95"


@dataclass(frozen=True)
class ConstraintsConfig(Section):
    """Bounds of a feasible model (null: no bound); see autoprune.search.objectives."""

    where = "search.constraints"
    max_latency_ms: Optional[float] = setting(None, gt=0, fix="or null for no bound")
    min_accuracy: Optional[float] = setting(None, ge=0, le=1, fix=FRACTION)
    max_accuracy_drop: Optional[float] = setting(None, ge=0, le=1,
                                                 fix="it is a fraction of accuracy, e.g. {key}=0.01 for 1 point")
    max_params: Optional[float] = setting(None, gt=0, fix="or null for no bound")
    max_macs: Optional[float] = setting(None, gt=0, fix="or null for no bound")
    max_onnx_bytes: Optional[float] = setting(None, gt=0, fix="or null for no bound")

    def bounds(self) -> dict[str, float]:
        """The constraints that are set, by name."""
        return {k: v for k, v in to_plain(self).items() if v is not None}


@dataclass(frozen=True)
class AllocateConfig(Section):
    """HALP-style warm start (autoprune.search.allocate)."""
    where = "search.allocate"
    budgets: list[float] = setting(default_factory=list, gt=0, le=1, item="budget",
                                   want="a fraction of the baseline's latency in (0, 1]",
                                   fix="give e.g. {key}=[0.5,0.3] (or [] for none)")
    table: Optional[str] = None


RUNGS = ("rung0", "full")
PROMOTE = ("front", "all")


@dataclass(frozen=True)
class FidelityConfig(Section):
    """Multi-fidelity candidates (autoprune.search.fidelity): rungs each candidate climbs, and who is promoted."""
    where = "search.fidelity"
    rungs: list[str] = setting(default_factory=lambda: ["full"], choices=RUNGS, nonempty=True, unique=True,
                               fix="use [full] (every candidate fully recovered) or [rung0,full]")
    promote: str = setting("front", choices=PROMOTE)
    margin: float = setting(0.01, ge=0, le=1, fix="a val-accuracy fraction, e.g. {key}=0.01 for 1 point")
    warmup: int = setting(4, ge=0)
    bn_batches: int = setting(8, ge=1)
    steps: Optional[int] = setting(None, ge=1, fix="or null for 10 % of the recovery's steps")
    table: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rungs[-1] != "full":
            raise ConfigError(f"search.fidelity.rungs={'[' + ','.join(self.rungs) + ']'} must end with full (the "
                              "front holds fully recovered models only): use [rung0,full]")

    @property
    def multi(self) -> bool:
        """Candidates are scored at rung 0 first and only the promoted ones are fully recovered."""
        return "rung0" in self.rungs


SCREEN_MODES = ("auto", "always", "never")   # not on/off: YAML reads those as booleans


@dataclass(frozen=True)
class ScreenConfig(Section):
    """Predictor screening (autoprune.search.screen): measure only the candidates whose predicted latency
    could put them on the measured front."""
    where = "search.screen"
    mode: str = setting("auto", choices=SCREEN_MODES,
                        fix="choose one of [auto, always, never] (not on/off: YAML reads those as booleans)")
    margin: float = setting(0.1, ge=0, lt=1, fix="a fraction of the predicted latency, e.g. {key}=0.1")
    table: Optional[str] = None

    def active(self, profile: Any) -> bool:
        """Whether a search on `profile` (a HardwareProfile) screens."""
        return self.mode == "always" or (self.mode == "auto" and profile.expensive_to_measure)


@dataclass(frozen=True)
class RetimeConfig(Section):
    """The end of the search re-times the models near the front side by side (autoprune.search.retime)."""
    where = "search.retime"
    rounds: int = setting(3, ge=0, fix="e.g. 3 (0: no re-timing)")
    margin: float = setting(0.5, ge=0, fix="a fraction of the latency, e.g. {key}=0.5")


@dataclass(frozen=True)
class SearchConfig(Section):
    where = "search"
    n_trials: int = setting(24, ge=0)
    storage: str = "sqlite:///autoprune.db"
    study_name: Optional[str] = None
    resume: str = setting("auto", choices=RESUME, fix="use auto (resume a study only with the same settings) "
                                                      "or force (resume it whatever changed)")
    backend: str = setting("optuna", choices=("optuna", "nni"))
    sampler: str = setting("tpe", choices=_samplers)
    population_size: int = setting(8, ge=2)
    nni: NniConfig = field(default_factory=NniConfig)
    also_measure: list[str] = field(default_factory=list)   # extra hw profiles each candidate is timed on
    objectives: list[str] = setting(default_factory=lambda: ["val_accuracy", "latency_ms"], choices=_metrics,
                                    nonempty=True, unique=True)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    warm_start: list[float] = setting(default_factory=lambda: [0.25, 0.5, 0.75, 0.85], ge=0, lt=1, item="ratio",
                                      fix="give pruning ratios such as {key}=[0.25,0.5] (or [] for none)")
    allocate: AllocateConfig = field(default_factory=AllocateConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    hv_max_drop: float = setting(0.1, gt=0, le=1)
    run_name: Optional[str] = None
    heartbeat_s: Optional[float] = setting(30, ge=0, fix="e.g. 30 (0 or null: no heartbeat)")
    max_retry: int = setting(1, ge=0)
    trial_timeout_s: Optional[float] = setting(None, gt=0, fix="or null for no limit")
    timeout_s: Optional[float] = setting(None, gt=0, fix="or null for no limit")
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    retime: RetimeConfig = field(default_factory=RetimeConfig)


# ------------------------------------------------------------------------------------------ prune
@dataclass(frozen=True)
class IterativeConfig(Section):
    where = "prune.iterative"
    steps: int = setting(3, ge=1)


@dataclass(frozen=True)
class AgpConfig(Section):
    where = "prune.agp"
    steps: int = setting(4, ge=1)
    start: float = setting(0.0, ge=0, le=1)
    end: float = setting(0.5, ge=0, le=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start > self.end:
            raise ConfigError(f"prune.agp start={self.start}, end={self.end}: need 0 <= start <= end <= 1 "
                              "(fractions of the fine-tuning steps)")


@dataclass(frozen=True)
class LthConfig(Section):
    where = "prune.lth"
    rounds: int = setting(1, ge=1)
    rewind_epoch: int = setting(0, ge=0)
    train_epochs: Optional[int] = setting(None, ge=0)


@dataclass(frozen=True)
class PruneConfig(Section):
    where = "prune"
    importance: Union[str, list[str]] = setting("l2", choices=_importances, nonempty=True)
    ignore: list[str] = field(default_factory=list)
    preflight: bool = True
    preflight_timeout_s: float = setting(300, gt=0)
    preflight_memory_mb: int = setting(4096, ge=1)
    pattern: Union[str, list[str]] = setting("channel", choices=_patterns, nonempty=True)
    nm: list[int] = setting(default_factory=lambda: [2, 4], ge=1)
    block: list[int] = setting(default_factory=lambda: [1, 4], ge=1)
    unstructured_scope: str = setting("layer", choices=_scopes)
    calibration_batches: int = setting(4, ge=1)
    schedule: str = setting("oneshot", choices=_schedules)
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    agp: AgpConfig = field(default_factory=AgpConfig)
    lth: LthConfig = field(default_factory=LthConfig)

    def searched(self) -> dict:
        """The section without the pre-flight's keys: what makes trials comparable (study names, the
        search space's pattern defaults); the pre-flight changes how a model is checked, not what is searched."""
        return {k: v for k, v in to_plain(self).items() if k not in PREFLIGHT_KEYS}


# ------------------------------------------------------------------------------------------ modes
@dataclass(frozen=True)
class SensitivityConfig(Section):
    where = "sensitivity"
    ratios: list[float] = setting(default_factory=lambda: [0.25, 0.5, 0.75], nonempty=True, gt=0, lt=1,
                                  item="ratio", fix="e.g. {key}=[0.25,0.5,0.75]")
    pattern: str = setting("channel", choices=_patterns)
    finetune_epochs: int = setting(0, ge=0)
    max_drop: float = setting(0.02, ge=0, lt=1, fix="e.g. {key}=0.02 (two points)")
    measure: bool = True
    max_groups: Optional[int] = setting(None, ge=1)


@dataclass(frozen=True)
class PickConfig(Section):
    where = "pick"
    max_latency_ms: Optional[float] = setting(None, gt=0)
    min_accuracy: Optional[float] = setting(None, ge=0, le=1, fix=FRACTION)
    max_params: Optional[int] = setting(None, gt=0)
    model_name: Optional[str] = None
    alias: str = "deploy"
    export: str = "deploy/model.onnx"
    engine: bool = True    # TensorRT profiles: also build, save and log the engine (false: the ONNX model only)


@dataclass(frozen=True)
class ReportConfig(Section):
    """mode=report: the front on another measured target, or several studies' fronts overlaid."""
    where = "report"
    target: Optional[str] = None     # a profile of the search's search.also_measure (null: the search's hw)
    studies: list[str] = field(default_factory=list)   # [study-a, study-b, study-a@cpu-ort-b32]
    recheck_rounds: int = setting(0, ge=0, fix="e.g. 3 (0: no re-timing)")   # re-time the front side by side


@dataclass(frozen=True)
class ReproduceConfig(Section):
    where = "reproduce"
    trial: Optional[int] = setting(None, ge=0)


@dataclass(frozen=True)
class CalibrateConfig(Section):
    where = "calibrate"
    n_validate: int = setting(8, ge=0)
    table: Optional[str] = None


@dataclass(frozen=True)
class TrackingConfig(Section):
    where = "tracking"
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "autoprune"


# ------------------------------------------------------------------------------------------ task
@dataclass(frozen=True)
class TaskConfig:
    """`task:` — an open mapping: `model` and `data` are `_target_` factory calls with their arguments,
    any extra key is kept. Typed here: the name, the checkpoint and the baseline's training settings."""

    name: str
    model: dict
    data: dict
    train: TrainConfig
    checkpoint: Optional[str] = None
    mapping: dict = field(default_factory=dict, compare=False, repr=False)   # as given: hashed, stored

    @classmethod
    def from_mapping(cls, data: Any, where: str = "task", lenient: bool = False) -> "TaskConfig":
        data = convert(dict, data, where)
        for key in ("name", "model", "data"):
            if key not in data:
                raise ConfigError(f"{where}.{key} is missing: every task names its {key} (see conf/task/)")
        name = convert(str, data["name"], f"{where}.name")
        model, data_ = (convert(dict, data[k], f"{where}.{k}") for k in ("model", "data"))
        checkpoint = convert(Optional[str], data.get("checkpoint"), f"{where}.checkpoint")
        train = build(TrainConfig, data.get("train"), f"{where}.train", lenient)
        return cls(name, model, data_, train, checkpoint, copy.deepcopy(dict(data)))

    def as_mapping(self) -> dict:
        return copy.deepcopy(self.mapping)


# ------------------------------------------------------------------------------------------ root
@dataclass(frozen=True)
class AppConfig:
    """The whole config. Build it with `AppConfig.of(cfg)` from a composed DictConfig or plain mapping."""

    task: TaskConfig
    mode: str = setting("search", choices=MODES, fix="choose one of [" + ", ".join(MODES) + "] (or run "
                        "`python -m autoprune agent`)")
    hw: str = "cpu-ort-1t"              # a name in hw_profiles/ or a path to a YAML file
    search_space: str = "default"       # a name in search_spaces/ or a path to a YAML file
    seed: int = 0
    cache_dir: str = ".autoprune"
    search: SearchConfig = field(default_factory=SearchConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    recover: RecoverSection = field(default_factory=RecoverSection)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    pick: PickConfig = field(default_factory=PickConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check(self)

    @classmethod
    def of(cls, cfg: Union["AppConfig", DictConfig, Mapping], lenient: bool = False) -> "AppConfig":
        """The typed config of a composed Hydra config (resolved) or a plain mapping; an AppConfig as is.
        `lenient`: keys this version does not know are dropped (a config stored by another version)."""
        if isinstance(cfg, AppConfig):
            return cfg
        if isinstance(cfg, DictConfig):
            try:
                cfg = cast(dict, OmegaConf.to_container(cfg, resolve=True))  # a DictConfig: a dict
            except OmegaConfBaseException as exc:
                raise ConfigError(f"the config does not resolve: {first_line(exc)} (check the ${{...}} "
                                  f"interpolations against {CFG_HINT})") from None
        cfg = dict(cfg)
        cfg.pop("hydra", None)
        return build(cls, cfg, "", lenient=lenient)

    def check_files(self) -> None:
        """The hardware profile and search space resolve to a shipped name or an existing YAML file."""
        resolve_yaml("hw_profiles", self.hw)
        resolve_yaml("search_spaces", self.search_space)

    def to_dict(self) -> dict:
        """The config as plain data, in the order and with the values Hydra composed (the study stores it)."""
        return to_plain(self)


__all__ = ["AppConfig", "MODES", "PREFLIGHT_KEYS", "PruneConfig", "SearchConfig", "TaskConfig", "unknown_keys"]
