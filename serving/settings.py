"""What one task's application is served with: its part of the config and what `deploy` resolved. No
defaults here: every value comes from params.yaml's `serve` and `registry` sections (modelyard.config)."""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.config import RegistryConfig, ServeConfig


@dataclass(frozen=True)
class AppSettings:
    model_name: str  # the task: its registered model
    tracking_uri: str
    serve: ServeConfig  # the `serve` section with this task's `serve.apps.<name>` applied
    registry: RegistryConfig
    threads: int  # torch (or ONNX Runtime) threads in each replica
    auth_token: str | None  # when set, every route but /health wants `Authorization: Bearer <token>`
    traffic_dir: str | None = None  # where answered requests are recorded (absolute); None: not recorded
