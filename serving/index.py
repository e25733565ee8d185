"""`GET /`: every served task with its route and the model version it answers with (set by `deploy`)."""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.

from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from serving import protocol
from serving.openapi import AUTH_ERROR

index_api = FastAPI(title="modelyard", description="The tasks this cluster serves, one application each.",
                    version="1")


@serve.deployment(name="Index", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  logging_config={"enable_access_log": False})
@serve.ingress(index_api)
class Index:
    def __init__(self, auth_token: str | None = None) -> None:
        self.apps: list[dict[str, Any]] = []
        self.auth_token = auth_token

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.apps = list(user_config.get("apps", []))

    @index_api.get("/", responses=AUTH_ERROR)
    async def index(self, request: Request) -> Any:
        if denied := protocol.unauthorized(request, self.auth_token):
            return denied
        return {"apps": self.apps}

    @index_api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "apps": len(self.apps)}


def build_index(apps: list[dict[str, Any]], auth_token: str | None = None):
    return Index.options(user_config={"apps": apps}).bind(auth_token)
