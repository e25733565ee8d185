"""Real series for the series modality's tests: 90 JapaneseVowels test utterances, committed."""

from __future__ import annotations

import pytest

from helpers.paths import FIXTURES
from modelyard.modalities.series import SeriesSplit
from modelyard.modalities.series.split import read_npz

SPEAKERS = [f"speaker {i}" for i in range(1, 10)]


@pytest.fixture(scope="session")
def vowels() -> SeriesSplit:
    return read_npz(FIXTURES / "japanese_vowels_test_90.npz")
