"""A lock held in the registry itself, and the alias compare-and-set it makes possible.

Promotion reads the champion, compares, and moves the alias; two runs doing that at once could each replace
a champion the other had already replaced. The lock is a registered model named `<name>.promotion-lock`:
the store creates a name once (its unique constraint, in sqlite or PostgreSQL, behind the HTTP server or
not), so exactly one caller holds it, whichever host it runs on and whichever URI it reaches the store by.
It carries its holder and a lease; a holder that died leaves a lock that expires, and the next caller takes
it over. Inside it, `compare_and_set_alias` moves an alias only if it still points where the caller read it.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from modelyard.registry.store import client

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"
OWNER_TAG, EXPIRES_TAG = "modelyard.lock.owner", "modelyard.lock.expires"


class RegistryLockTimeout(TimeoutError):
    """Another holder kept the registry lock longer than the caller would wait."""


class AliasMovedError(RuntimeError):
    """The alias no longer points where the caller read it: someone else moved it in between."""


@contextmanager
def registry_lock(tracking_uri: str, name: str, *, lease_s: float = 300.0, wait_s: float = 900.0) -> Iterator[str]:
    """Hold `name`'s promotion lock for the block (yields the holder's id). Waits up to `wait_s` for another
    holder; a lock whose lease ran out (its holder died) is taken over."""
    from mlflow.exceptions import MlflowException

    registry = client(tracking_uri)
    lock = name + LOCK_SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            registry.create_registered_model(
                lock, tags={OWNER_TAG: owner, EXPIRES_TAG: f"{time.time() + lease_s:.3f}"},
                description=f"modelyard's promotion lock for {name}; removed when the promotion ends")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        holder = _holder(registry, lock)
        if holder is not None and float(holder.get(EXPIRES_TAG, 0)) < time.time():
            log.warning("taking over %s: its holder %s let its lease run out", lock, holder.get(OWNER_TAG))
            _delete_if_held_by(registry, lock, holder.get(OWNER_TAG))
            continue
        if time.monotonic() > deadline:
            raise RegistryLockTimeout(f"{lock} is held by {holder and holder.get(OWNER_TAG)}; waited {wait_s:.0f} s")
        time.sleep(random.uniform(0.05, 0.3))
    try:
        yield owner
    finally:
        _delete_if_held_by(registry, lock, owner)


def _holder(registry, lock: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(registry.get_registered_model(lock).tags or {})
    except MlflowException:  # released in between
        return None


def _delete_if_held_by(registry, lock: str, owner: str | None) -> None:
    from mlflow.exceptions import MlflowException

    holder = _holder(registry, lock)
    if holder is None or holder.get(OWNER_TAG) != owner:
        return
    try:
        registry.delete_registered_model(lock)
    except MlflowException:  # someone else took it over and removed it first
        pass


def current_alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def compare_and_set_alias(tracking_uri: str, name: str, alias: str, version: str, *, expected: str | None) -> None:
    """Point `alias` at `version` only if it still points at `expected` (None: it is unset). Call it inside
    `registry_lock(name)`, which every alias move of modelyard takes, so nothing moves it between the check
    and the set; raises AliasMovedError otherwise."""
    now = current_alias_version(tracking_uri, name, alias)
    if now != expected:
        raise AliasMovedError(f"'{name}@{alias}' points at v{now}, not v{expected} as read: moved by someone else")
    client(tracking_uri).set_registered_model_alias(name, alias, version)
