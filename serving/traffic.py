"""Requests, latency and champion/challenger agreement per model version, summed over an app's replicas."""

from __future__ import annotations

import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class TrafficStats:
    def __init__(self) -> None:
        self.versions: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, tuple[str | None, float]] = {}  # replica -> (version it serves, when told)

    def add(self, replica: str, serving: str | None, deltas: dict[str, dict[str, Any]]) -> None:
        self.replicas[replica] = (serving, time.monotonic())
        for version, d in deltas.items():
            v = self.versions.setdefault(version, {"requests": 0, "latencies_ms": [], "compared": 0, "agreed": 0})
            v["requests"] += d["requests"]
            v["compared"] += d["compared"]
            v["agreed"] += d["agreed"]
            v["latencies_ms"] = (v["latencies_ms"] + d["latencies_ms"])[-4096:]

    def serving(self) -> dict[str, str | None]:
        """The version each live replica serves (replicas report every second)."""
        now = time.monotonic()
        return {r: v for r, (v, at) in sorted(self.replicas.items()) if now - at < 3.0}

    def summary(self) -> dict[str, Any]:
        out = {}
        for version, v in self.versions.items():
            lat = sorted(v["latencies_ms"])
            out[version] = {
                "requests": v["requests"],
                "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
                "compared_with_champion": v["compared"],
                "agreement": round(v["agreed"] / v["compared"], 4) if v["compared"] else None,
            }
        return out


class TrafficCounter:
    """A replica's counts since it last handed them to the app's TrafficStats."""

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}

    def count(self, version: str, latency_ms: float, agreed: bool | None = None) -> None:
        d = self.pending.setdefault(version, {"requests": 0, "latencies_ms": [], "compared": 0, "agreed": 0})
        d["requests"] += 1
        d["latencies_ms"].append(round(latency_ms, 3))
        if agreed is not None:
            d["compared"] += 1
            d["agreed"] += int(agreed)

    def take(self) -> dict[str, dict[str, Any]]:
        pending, self.pending = self.pending, {}
        return pending
