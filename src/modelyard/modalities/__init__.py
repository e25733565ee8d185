"""Modalities: everything that differs between kinds of input, one package each (`image`, `text`, `series`).

A modality supplies its split type and on-disk format, the statistics the prepare stage fits, its
augmentation policy, the fitted preprocessor saved with a model (and the graph it wraps around the model for
inference and ONNX), the batch adapter training uses, its Great Expectations tables and expectations, the
extras of its evaluation report, and the HTTP codec serving uses with its OpenAPI part. Shared code asks the
modality of a dataset (`get_modality(spec.modality)`) or of a saved model (`preprocessor.kind`); it never
branches on which one it is. Adding a modality is adding a package here that defines `MODALITY`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from modelyard.plugins import load_member, member_names

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

PACKAGE = __name__


class InvalidInputError(ValueError):
    """An input a model cannot take; `code` is a stable machine-readable reason (serving maps it to a status)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Split(Protocol):
    """Rows of one split: the inputs and their integer labels."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def take(self, rows: Any) -> Split: ...

    @property
    def inputs(self) -> Any:
        """What a Predictor takes: uint8 images, a list of texts, a list of (T, C) arrays."""


class Policy(Protocol):
    """A frozen dataclass of augmentation settings."""

    @property
    def is_identity(self) -> bool:
        """Nothing is augmented (a frozen backbone's features can then be computed once)."""


class BatchAdapter(Protocol):
    """Turns a batch of rows (the arrays of `Modality.training_arrays`, as tensors on the training device)
    into what the model takes, augmented for training."""

    def train_batch(self, rows: Mapping[str, torch.Tensor], gen: torch.Generator) -> tuple[Any, torch.Tensor]: ...

    def eval_batch(self, rows: Mapping[str, torch.Tensor]) -> tuple[Any, torch.Tensor]: ...


class Preprocessor(ABC):
    """The fitted preprocessing a model was trained with, saved in its model.json: the one definition of how a
    user's input becomes the model's, used by evaluation, the MLflow pyfunc, ONNX export and serving."""

    kind: ClassVar[str]  # the modality's name

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def model_input(self) -> dict[str, Any]:
        """What the model's builder needs to know of its input (channels, size, vocabulary, features)."""

    @abstractmethod
    def check_batch(self, inputs: Any) -> Any:
        """The inputs as the preprocessor takes them, or InvalidInputError naming what is wrong."""

    @abstractmethod
    def feeds(self, inputs: Any, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """(rows, graph inputs) for checked inputs, a batch at a time: what `graph` and its ONNX export take."""

    @abstractmethod
    def graph(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with this preprocessing in front: graph inputs (named as `feeds` names them) -> logits."""

    @property
    @abstractmethod
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The graph inputs' axes that vary (batch, length), for ONNX export."""

    def annotate(self, inputs: Any) -> list[dict[str, Any]]:
        """Per input, what a prediction reports beside the label (text: whether it was truncated)."""
        return [{} for _ in range(len(inputs))]

    def describe(self, inputs: Any) -> list[dict[str, float]]:
        """Per input, what the traffic log records of it for drift beside the model's outputs (text: its length
        in tokens and the share of them the vocabulary does not know; series: its length in frames)."""
        return [{} for _ in range(len(inputs))]


@dataclass
class EvaluationExtras:
    """What a modality adds to the evaluation: files (name -> JSON value) and a markdown section."""

    files: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""


@dataclass(frozen=True)
class Limits:
    """What one request may hold (serving's settings)."""

    max_body_bytes: int
    max_items: int = 64


class Codec(ABC):
    """How a modality's inputs travel over HTTP: pure functions of the request body, no web framework."""

    content_type: ClassVar[str]  # what a request must declare
    wrong_type: ClassVar[str]  # the error code of a request declaring another content type
    record_field: ClassVar[str]  # where one input sits in a batch file: a Parquet column, a JSON-lines key
    # error code -> HTTP status, for the codes this codec raises (InvalidInputError.code)
    statuses: ClassVar[dict[str, int]]

    def __init__(self, preprocessor: Preprocessor, limits: Limits) -> None:
        self.preprocessor, self.limits = preprocessor, limits

    @property
    def max_body_bytes(self) -> int:
        """The largest body worth reading (the limit plus any framing around the input)."""
        return self.limits.max_body_bytes

    def check_content_type(self, content_type: str) -> None:
        """Refuse a request of another content type before its body is read."""
        got = content_type.split(";")[0].strip().lower()
        if got != self.content_type:
            raise InvalidInputError(self.wrong_type, f"{self.summary()} (the request says {got or 'no content type'})")

    @abstractmethod
    def decode(self, body: bytes, content_type: str) -> tuple[list[Any], bool]:
        """(inputs of one request, whether the request asked for many), or InvalidInputError."""

    def decode_record(self, value: Any) -> Any:
        """One record of a batch file (modelyard.inference.batch) -> one checked input, or InvalidInputError; the
        same checks as a request's body."""
        return self.preprocessor.check_batch([value])[0]

    def decode_raw(self, body: bytes) -> tuple[list[Any], bool]:
        """A body that is the input itself, with no content type to go by (TorchServe's requests): what `decode`
        makes of it as this codec's own content type; a codec whose HTTP body wraps its input (a form) says
        otherwise."""
        return self.decode(body, self.content_type)

    @abstractmethod
    def collate(self, items: list[Any]) -> Any:
        """Inputs from concurrent requests as one batch for the Predictor."""

    @abstractmethod
    def request_body(self) -> dict[str, Any]:
        """The OpenAPI requestBody of POST predict."""

    @abstractmethod
    def summary(self) -> str:
        """One line for the OpenAPI description: what to send and its limits."""

    @abstractmethod
    def refusals(self) -> dict[str, str]:
        """Each error code a request can meet (a key of `statuses`) -> why it is refused, in one line with the
        limits: the list a model card gives. A request body over the limit is refused by the server before
        any codec reads it (`body_too_large`); it is in every codec's list."""


class Modality(ABC):
    """Everything about one kind of input that shared code needs."""

    name: ClassVar[str]
    noun: ClassVar[str]  # "images", "texts", "series": what reports call its rows
    file_suffix: ClassVar[str]  # of a split on disk: train<suffix>, test<suffix>
    # What a registered model of this modality imports to preprocess, beside torch and numpy (pip names).
    runtime_packages: ClassVar[tuple[str, ...]] = ()

    # ---- on disk ------------------------------------------------------------------------------------

    @abstractmethod
    def write_split(self, path: Path, split: Split) -> dict[str, Any]:
        """Write one split to `path`; returns what dataset.json records of it beside count and hash."""

    @abstractmethod
    def read_split(self, path: Path) -> Split:
        """Read a split as it is on disk (broken rows are kept for validation to report)."""

    @abstractmethod
    def split_sha256(self, split: Split) -> str:
        """A hash of the contents, independent of how the file was written."""

    @abstractmethod
    def make_split(self, inputs: list[Any], labels: Any) -> Split:
        """A split of these inputs (as `Split.inputs` holds them, one per row) and integer labels."""

    # ---- validation ---------------------------------------------------------------------------------

    @abstractmethod
    def row_table(self, name: str, split: Split) -> pd.DataFrame:
        """One row per input (columns split, index, label and the modality's own), for the GX suite."""

    def extra_tables(self, splits: Mapping[str, Split]) -> dict[str, pd.DataFrame]:
        """Tables beyond rows, splits, classes and overlap (text: mean words per split)."""
        return {}

    @abstractmethod
    def expectations(self, schema: Any, num_classes: int) -> dict[str, list[Any]]:
        """GX expectations per table of this modality (rows and extra tables), from the dataset's schema."""

    @abstractmethod
    def duplicate_keys(self, split: Split) -> dict[str, list[Any]]:
        """Per overlap column ("in_train", and e.g. "near_in_train"), one hashable key per row: a test row
        whose key is among train's keys is in train."""

    # ---- prepare ------------------------------------------------------------------------------------

    @abstractmethod
    def fit_statistics(self, split: Split) -> dict[str, Any]:
        """Statistics of the training rows the preprocessor may use (JSON-able)."""

    @abstractmethod
    def policy(self, defaults: Mapping[str, Any], changes: Mapping[str, Any]) -> Policy:
        """The run's augmentation policy: the dataset's `defaults` with the run's `changes` (unknown names are
        an error)."""

    @abstractmethod
    def policy_from_dict(self, doc: Mapping[str, Any]) -> Policy: ...

    # ---- model inputs and training -------------------------------------------------------------------

    @abstractmethod
    def fit_preprocessor(self, request: Mapping[str, Any], statistics: Mapping[str, Any], schema: Any) -> Preprocessor:
        """The preprocessor a family asks for (`request`: its options, e.g. image size or tokenizer), with the
        prepare stage's statistics and the dataset's schema."""

    @abstractmethod
    def preprocessor_from_dict(self, doc: Mapping[str, Any]) -> Preprocessor: ...

    @abstractmethod
    def training_arrays(self, split: Split, preprocessor: Preprocessor) -> dict[str, np.ndarray]:
        """The split as arrays with one row per input (`labels` among them), for the object store and the
        training device."""

    @abstractmethod
    def batch_adapter(self, preprocessor: Preprocessor, policy: Policy) -> BatchAdapter: ...

    # ---- evaluation, registry, serving ---------------------------------------------------------------

    def evaluation_extras(self, probs: np.ndarray, split: Split, labels: list[str]) -> EvaluationExtras:
        return EvaluationExtras()

    @abstractmethod
    def input_example(self, split: Split, count: int) -> Any:
        """`count` real inputs as an MLflow input example (what the registered pyfunc takes)."""

    @abstractmethod
    def from_pyfunc(self, model_input: Any) -> Any:
        """What the MLflow pyfunc was given, as inputs for the Predictor."""

    @abstractmethod
    def codec(self, preprocessor: Preprocessor, limits: Limits) -> Codec: ...

    @abstractmethod
    def write_samples(self, split: Split, classes: list[str], out_dir: Path) -> list[Path]:
        """One real input per class under `out_dir`, as a request body (or file) to try the endpoint with."""

    @abstractmethod
    def request_example(self, sample: Path, url: str) -> str:
        """A curl command that sends a written sample to a predict URL."""


def array_sha256(*arrays: np.ndarray) -> str:
    """Content hash of arrays (dtype, shape and bytes), independent of how they were compressed on disk."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def modality_names() -> tuple[str, ...]:
    return member_names(PACKAGE)


def get_modality(name: str) -> Modality:
    """The modality called `name` (its package is imported on first use)."""
    return load_member(PACKAGE, name, kind="modality").MODALITY
