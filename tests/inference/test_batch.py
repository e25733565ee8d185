"""Batch inference (modelyard.inference.batch, `modelyard predict-batch`): real test images and texts with
broken records among them, through Ray Data's actor pool over the registered champion; every row checked
against the Predictor's own answer for the same input, the broken ones against the error they must carry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.config import REPO, small_config
from helpers.models import make_model, register, register_text_lstm
from helpers.serving import png
from modelyard.data.dataset import load_split
from modelyard.inference import Predictor

pytestmark = [pytest.mark.slow, pytest.mark.integration]

IMAGES_TASK, TEXT_TASK = "fashion-batch", "rt-batch"
BROKEN_IMAGES = {"empty.png": (b"", "empty_file"), "notes.txt": (b"not an image at all", "not_an_image"),
                 "cut.png": (None, "not_an_image")}  # None: a real PNG cut in half


@pytest.fixture(scope="module")
def registry(small_dataset_dir, rt_polarity_dir, class_names, test_sample, tmp_path_factory):
    """(tracking uri, image model dir, text model dir): an MLP on Fashion-MNIST and an LSTM on RT polarity, each
    the champion of its task with its ONNX export at parity."""
    import ray

    from modelyard.runtime import connect_ray

    tmp = tmp_path_factory.mktemp("batch")
    uri = small_config(tmp).registry.resolved_tracking_uri()
    image_dir = make_model(tmp, "mlp", small_dataset_dir, class_names, train_epochs=1)
    assert register(uri, IMAGES_TASK, image_dir, small_dataset_dir, "hash-I", test_sample.images[:128],
                    onnx=True).promoted
    text_dir = register_text_lstm(uri, TEXT_TASK, rt_polarity_dir, tmp, onnx=True)
    connect_ray(None)  # one local Ray for the module; predict_batch joins it
    try:
        yield uri, image_dir, text_dir
    finally:
        ray.shutdown()


def _image_folder(folder: Path, test_sample, count: int) -> list[str]:
    folder.mkdir()
    names = []
    for i in range(count):
        (folder / f"test-{i:03d}.png").write_bytes(png(test_sample.images[i]))
        names.append(f"test-{i:03d}.png")
    for name, (data, _) in BROKEN_IMAGES.items():
        (folder / name).write_bytes(data if data is not None else png(test_sample.images[0])[:60])
    return names


def _read(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output)


def test_a_folder_of_test_images_with_broken_files_gets_a_row_each(registry, test_sample, tmp_path):
    from modelyard.inference.batch import predict_batch

    uri, image_dir, _ = registry
    good = _image_folder(tmp_path / "photos", test_sample, 40)
    summary = predict_batch(uri, IMAGES_TASK, tmp_path / "photos", tmp_path / "out", workers=2, batch_size=16)
    rows = _read(tmp_path / "out")
    assert summary.rows == len(rows) == 40 + len(BROKEN_IMAGES) and summary.errors == len(BROKEN_IMAGES)
    rows["name"] = rows["path"].map(lambda p: Path(p).name)
    assert sorted(rows["name"]) == sorted(good + list(BROKEN_IMAGES))
    assert (rows["model_name"] == IMAGES_TASK).all() and (rows["model_version"] == "1").all()
    assert (rows["backend"] == "onnxruntime").all()  # the export passed its parity check at registration
    for name, (_, code) in BROKEN_IMAGES.items():
        row = rows[rows["name"] == name].iloc[0]
        assert row["error"].startswith(code + ":") and pd.isna(row["prediction"]), (name, row["error"])
    fine = rows[rows["error"].isna()].sort_values("name")
    expected = Predictor.from_dir(image_dir).predict(test_sample.images[:40])
    assert list(fine["prediction"]) == [p.label for p in expected]
    scores = np.array([list(json.loads(s).values()) for s in fine["scores"]])
    assert np.allclose(scores, [list(p.scores.values()) for p in expected], atol=1e-4)
    accuracy = (fine["index"].to_numpy() == test_sample.labels[:40]).mean()
    assert accuracy >= 0.6, accuracy  # an MLP trained one epoch; the match with the Predictor is the check


def test_json_lines_and_parquet_of_texts_keep_their_order_their_columns_and_their_broken_rows(
        registry, rt_polarity_dir, tmp_path):
    from modelyard.inference.batch import predict_batch

    uri, _, text_dir = registry
    texts = load_split(rt_polarity_dir, "test").texts[:30]
    lines = [json.dumps({"text": t}) for t in texts]
    broken = {3: ("", "not_json"), 7: (json.dumps({"text": "   "}), "empty_text"),
              11: (json.dumps({"review": texts[0]}), "missing_field"), 15: (json.dumps({"text": 5}), "not_a_string")}
    for at, (line, _) in sorted(broken.items()):
        lines.insert(at, line or "{this is not json")
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    summary = predict_batch(uri, TEXT_TASK, tmp_path / "reviews.jsonl", tmp_path / "out", workers=2, batch_size=8)
    rows = _read(tmp_path / "out")
    assert summary.rows == len(rows) == len(lines) and summary.errors == len(broken)
    assert list(rows["line"]) == lines  # in the input's order
    for at, (_, code) in broken.items():
        assert rows["error"].iloc[at].startswith(code + ":"), (at, rows["error"].iloc[at])
    expected = Predictor.from_dir(text_dir).predict(texts)
    assert list(rows[rows["error"].isna()]["prediction"]) == [p.label for p in expected]

    table = pd.DataFrame({"id": np.arange(len(texts) + 1) + 100, "text": [*texts, None]})
    table.to_parquet(tmp_path / "reviews.parquet")
    predict_batch(uri, TEXT_TASK, tmp_path / "reviews.parquet", tmp_path / "out2", workers=1)
    rows = _read(tmp_path / "out2")
    assert list(rows["id"]) == list(table["id"])  # other columns pass through
    assert rows["error"].iloc[-1].startswith("missing_field:") and rows["error"].iloc[:-1].isna().all()
    assert list(rows["prediction"].iloc[:-1]) == [p.label for p in expected]


def test_bad_arguments_are_refused_before_anything_runs_and_an_output_is_never_overwritten(registry, tmp_path):
    from modelyard.inference.batch import predict_batch

    uri, _, _ = registry
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    with pytest.raises(FileExistsError, match="exists"):
        predict_batch(uri, TEXT_TASK, tmp_path / "in.jsonl", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="folder of images, a JSON-lines file"):
        (tmp_path / "in.csv").write_text("text\nfine\n")
        predict_batch(uri, TEXT_TASK, tmp_path / "in.csv", tmp_path / "o1")
    with pytest.raises(LookupError, match="no-such-task"):
        predict_batch(uri, "no-such-task", tmp_path / "in.jsonl", tmp_path / "o2")
    pd.DataFrame({"review": ["fine"]}).to_parquet(tmp_path / "in.parquet")
    with pytest.raises(ValueError, match="no column of records"):
        predict_batch(uri, TEXT_TASK, tmp_path / "in.parquet", tmp_path / "o3")
    assert not list(tmp_path.glob(".o*partial*")) and not (tmp_path / "o3").exists()


def test_the_command_line_writes_the_rows_and_prints_the_summary(registry, rt_polarity_dir, tmp_path):
    uri, _, _ = registry
    texts = load_split(rt_polarity_dir, "test").texts[:5]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    done = subprocess.run([sys.executable, "-m", "modelyard.cli", "predict-batch", TEXT_TASK, str(tmp_path / "in.jsonl"),
                           str(tmp_path / "out"), "-S", f"registry.tracking_uri={uri}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["errors"] == 0 and summary["model_name"] == TEXT_TASK
    assert len(_read(tmp_path / "out")) == 5
