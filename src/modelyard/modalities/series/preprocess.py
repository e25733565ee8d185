"""The fitted preprocessing of a series model: per-channel normalisation statistics of the training frames and
the longest series it takes, saved with the model.

    series (T, C) each --check--> float32 --feeds--> values (B, longest T in the batch, C) + attention_mask
    graph: (values - mean) / std on real frames (padding stays 0) -> the model
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from modelyard.modalities import InvalidInputError, Preprocessor
from modelyard.modalities.series.augment import SeriesPolicy, jitter, scale, time_warp


@dataclass(frozen=True)
class SeriesPreprocessor(Preprocessor):
    channels: int
    mean: tuple[float, ...]  # per channel, of the training frames
    std: tuple[float, ...]
    max_length: int  # frames; a longer series is refused (serving) or cut (training)
    max_abs_value: float  # the dataset's bound on a value (its GX suite's); a larger one is refused

    kind: ClassVar[str] = "series"

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {list(self.mean)} / {list(self.std)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1 frame, got {self.max_length}")
        if not 0 < self.max_abs_value < np.finfo(np.float32).max:
            raise ValueError(f"max_abs_value must be positive and finite in float32, got {self.max_abs_value}")

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/std as (1, 1, C) tensors on `device`, made once (not copied from the host every step)."""
        cache = self.__dict__.setdefault("_stats_cache", {})
        if device not in cache:
            cache[device] = (torch.tensor(self.mean, dtype=torch.float32).view(1, 1, -1).to(device),
                             torch.tensor(self.std, dtype=torch.float32).view(1, 1, -1).to(device))
        return cache[device]

    def normalize(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) raw values -> normalised, padding at 0."""
        mean, std = self._stats(values.device)
        return (values.float() - mean) / std * mask[:, :, None].to(torch.float32)

    # ---- the Preprocessor interface -------------------------------------------------------------------

    def model_input(self) -> dict[str, Any]:
        return {"in_features": self.channels, "max_length": self.max_length}

    def describe(self, inputs: Any) -> list[dict[str, float]]:
        return [{"length": float(len(series))} for series in inputs]

    def check_batch(self, inputs: Any) -> list[np.ndarray]:
        """Each series a (T, C) grid of finite numbers, C the model's channels, 1 <= T <= max_length."""
        if isinstance(inputs, np.ndarray) and inputs.ndim == 2:
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)):
            raise InvalidInputError("bad_type", f"expected a list of series, got {type(inputs).__name__}")
        return [self._check_one(i, series) for i, series in enumerate(inputs)]

    def _check_one(self, i: int, series: Any) -> np.ndarray:
        try:
            with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused below
                array = np.asarray(series, dtype=np.float32)
        except OverflowError:  # an integer past float64's range
            raise InvalidInputError("not_finite", f"series {i} holds a number beyond float32's range") from None
        except (TypeError, ValueError):
            raise InvalidInputError("bad_shape", f"series {i} is not a grid of numbers: every frame must hold "
                                                 f"{self.channels} numbers") from None
        if array.ndim != 2 or array.shape[1] != self.channels:
            shape = "x".join(map(str, array.shape)) or "a scalar"
            code = "bad_channels" if array.ndim == 2 else "bad_shape"
            raise InvalidInputError(code, f"series {i} is {shape}; expected frames of {self.channels} numbers "
                                          f"(T x {self.channels})")
        if len(array) == 0:
            raise InvalidInputError("empty_series", f"series {i} has no frames")
        if len(array) > self.max_length:
            raise InvalidInputError("series_too_long", f"series {i} has {len(array)} frames; at most {self.max_length}")
        if not np.isfinite(array).all():
            raise InvalidInputError("not_finite", f"series {i} holds NaN, infinite or values beyond float32's range")
        if np.abs(array).max() > self.max_abs_value:
            raise InvalidInputError("value_out_of_range", f"series {i} holds a value of magnitude "
                                                          f"{np.abs(array).max():g}; at most {self.max_abs_value:g}")
        return array

    def feeds(self, series: list[np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Series of similar length batched together, each batch padded to its longest."""
        lengths = np.array([len(s) for s in series], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            values, mask = pad([series[i] for i in rows], self.channels)
            yield rows, {"values": torch.from_numpy(values), "attention_mask": torch.from_numpy(mask)}

    def graph(self, model: torch.nn.Module) -> torch.nn.Module:
        return SeriesGraph(self, model)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"values": {0: "batch", 1: "frames"}, "attention_mask": {0: "batch", 1: "frames"}}

    # ---- model.json ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SeriesPreprocessor:
        if doc.get("kind") != cls.kind:
            raise ValueError(f"not a series preprocessor: kind {doc.get('kind')!r}")
        return cls(channels=int(doc["channels"]), mean=tuple(doc["mean"]), std=tuple(doc["std"]),
                   max_length=int(doc["max_length"]), max_abs_value=float(doc["max_abs_value"]))


def pad(series: list[np.ndarray], channels: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values (N, T, C) float32 zero-padded to the longest or to `length`, attention_mask (N, T) int64)."""
    longest = length or max((len(s) for s in series), default=1)
    values = np.zeros((len(series), longest, channels), dtype=np.float32)
    mask = np.zeros((len(series), longest), dtype=np.int64)
    for row, s in enumerate(series):
        n = min(len(s), longest)
        values[row, :n] = s[:n]
        mask[row, :n] = 1
    return values, mask


class SeriesGraph(torch.nn.Module):
    """Raw values and mask -> logits, the normalisation included (what serving and ONNX run)."""

    def __init__(self, preprocessor: SeriesPreprocessor, model: torch.nn.Module) -> None:
        super().__init__()
        self.preprocessor, self.model = preprocessor, model

    def forward(self, values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(values=self.preprocessor.normalize(values, attention_mask), attention_mask=attention_mask)


class SeriesBatches:
    """Series padded to the split's longest, on the training device; a batch is cut to its own longest,
    normalised, and augmented there."""

    def __init__(self, preprocessor: SeriesPreprocessor, policy: SeriesPolicy) -> None:
        self.preprocessor, self.policy = preprocessor, policy

    def _batch(self, rows: Mapping[str, torch.Tensor], gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        lengths = rows["lengths"]
        longest = int(lengths.max()) if len(lengths) else 1
        values = rows["values"][:, :longest]
        mask = (torch.arange(longest, device=values.device)[None, :] < lengths[:, None]).long()
        x = self.preprocessor.normalize(values, mask)
        if gen is not None and self.policy.warp_prob > 0:
            x = time_warp(x, lengths, self.policy.warp_prob, self.policy.warp_max, gen)
        if gen is not None and self.policy.scale_std > 0:
            x = scale(x, self.policy.scale_std, gen)
        if gen is not None and self.policy.jitter_std > 0:
            x = jitter(x, mask, self.policy.jitter_std, gen)
        return {"values": x, "attention_mask": mask}

    def train_batch(self, rows: Mapping[str, torch.Tensor], gen: torch.Generator) -> tuple[Any, torch.Tensor]:
        return self._batch(rows, gen), rows["labels"]

    def eval_batch(self, rows: Mapping[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        return self._batch(rows, None), rows["labels"]
