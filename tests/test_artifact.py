"""A saved model directory that is not one says what is missing (saving and loading every family back is the
family contract's: tests/models/test_contract.py)."""

import pytest

from modelyard.artifact import load_model_dir, read_spec


def test_reading_a_non_model_dir_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        read_spec(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model_dir(tmp_path)
