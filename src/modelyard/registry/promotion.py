"""Promotion: a new version takes the champion alias only when it is at least as good on the same test set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelyard.registry.lock import compare_and_set_alias, current_alias_version, registry_lock
from modelyard.registry.versions import (
    PREVIOUS_CHAMPION_TAG,
    fetched_model_dir,
    get_version,
    set_version_tags,
)


@dataclass
class PromotionDecision:
    name: str
    version: str
    alias: str  # the alias the new version got
    promoted: bool
    reason: str
    metric: str
    challenger_value: float
    champion_version: str | None = None
    champion_value: float | None = None

    def to_markdown(self) -> str:
        verdict = "promoted to" if self.promoted else "kept as"
        return (f"## Registry\n\n`{self.name}` version **{self.version}** {verdict} `@{self.alias}`: "
                f"{self.reason}\n")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote_if_better(
    tracking_uri: str,
    name: str,
    version: str,
    *,
    metric: str,
    value: float,
    test_set_hash: str,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    score_champion: Callable[[Path], float] | None = None,
    enter_as_challenger: bool = False,
) -> PromotionDecision:
    """Give `version` the champion alias if there is none or it is at least as good on the same test set.

    The champion's score is its recorded `metric` when it was measured on the same test set (same hash);
    otherwise `score_champion(model_dir)` re-scores it on this test set, so the comparison is always like
    for like. A version that loses becomes the challenger. The whole read-compare-move holds the registry's
    own lock (modelyard.registry.lock), and each alias moves only if it still points where it was read:
    promotions from any process or host on the same store come one after the other.

    `enter_as_challenger` (a search's winner): the version takes the challenger alias first, then the same
    comparison decides whether it also becomes the champion.
    """
    set_version_tags(tracking_uri, name, version, {metric: value, "test_set_sha256": test_set_hash})
    with registry_lock(tracking_uri, name):
        if enter_as_challenger:
            compare_and_set_alias(tracking_uri, name, challenger_alias, version,
                                  expected=current_alias_version(tracking_uri, name, challenger_alias))
        champion = get_version(tracking_uri, name, alias=champion_alias)
        if champion is None or champion.version == version:
            compare_and_set_alias(tracking_uri, name, champion_alias, version,
                                  expected=champion.version if champion else None)
            return PromotionDecision(name, version, champion_alias, True, "no champion yet", metric, value)

        if champion.tags.get("test_set_sha256") == test_set_hash and metric in champion.tags:
            champ_value = float(champion.tags[metric])
            basis = "its recorded score on the same test set"
        elif score_champion is not None:
            with fetched_model_dir(tracking_uri, name, version=champion.version) as (model_dir, _):
                champ_value = float(score_champion(model_dir))
            basis = "re-scored on this test set (its own was different)"
        else:
            raise ValueError(f"champion v{champion.version} was scored on another test set and no re-scorer was given")

        if value >= champ_value:
            set_version_tags(tracking_uri, name, version, {PREVIOUS_CHAMPION_TAG: champion.version})
            compare_and_set_alias(tracking_uri, name, champion_alias, version, expected=champion.version)
            reason = (f"{metric} {value:.4f} >= champion v{champion.version}'s {champ_value:.4f} ({basis}); "
                      f"v{champion.version} steps down")
            return PromotionDecision(name, version, champion_alias, True, reason, metric, value, champion.version,
                                     champ_value)
        compare_and_set_alias(tracking_uri, name, challenger_alias, version,
                              expected=current_alias_version(tracking_uri, name, challenger_alias))
        reason = (f"{metric} {value:.4f} < champion v{champion.version}'s {champ_value:.4f} ({basis}); "
                  f"champion unchanged")
        return PromotionDecision(name, version, challenger_alias, False, reason, metric, value, champion.version,
                                 champ_value)
