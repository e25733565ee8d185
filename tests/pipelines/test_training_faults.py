"""The training flow refuses damaged data: every kind of corruption the image and text suites know stops a flow
run (deploy=True) at validation, with the failed expectations named, nothing trained, registered or published,
while the served champion of another task keeps answering. Real Fashion-MNIST and Rotten Tomatoes, damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests

from helpers.serving import png, serve_small_model

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

NAME = "reliability-mlp"


@pytest.fixture(scope="module")
def served(small_dataset_dir, class_names, test_sample, tmp_path_factory):
    """(config, tracking uri, the served task's URL, real PNGs) with NAME's champion served."""
    import ray
    from ray import serve

    cfg, uri, url = serve_small_model(tmp_path_factory.mktemp("serving"), NAME, small_dataset_dir, class_names,
                                      test_sample)
    try:
        yield cfg, uri, url, [png(image) for image in test_sample.images[:8]]
    finally:
        serve.shutdown()
        ray.shutdown()


def _corruptions(train, test) -> dict[str, tuple]:
    """Every kind of damage the image suite knows, applied to real splits: name -> (train, test)."""
    from modelyard.modalities.image import ImageSplit

    def labels_out_of_range():
        labels = train.labels.copy()
        labels[[3, 17, 250]] = [12, -1, 10]
        return ImageSplit(train.images, labels), test

    def nan_pixels():
        images = test.images.astype(np.float32)
        images[5, 10, 10] = np.nan
        return train, ImageSplit(images, test.labels)

    def pixels_out_of_range():
        images = train.images.astype(np.int16)
        images[0, 0, 0] = 300
        return ImageSplit(images, train.labels), test

    def wrong_height():
        return ImageSplit(train.images[:, :27, :], train.labels), test

    def empty_test_split():
        return train, ImageSplit(test.images[:0], test.labels[:0])

    def missing_labels():
        return train, ImageSplit(test.images, test.labels[:-7])

    def class_imbalance():
        keep = (train.labels != 3) | (np.arange(len(train)) % 10 == 0)  # 90% of 'Dress' gone
        return ImageSplit(train.images[keep], train.labels[keep]), test

    def test_images_in_train():
        return ImageSplit(np.concatenate([train.images, test.images[:200]]),
                          np.concatenate([train.labels, test.labels[:200]])), test

    def black_images():
        images = train.images.copy()
        images[::5] = 0  # a fifth of the images blank
        return ImageSplit(images, train.labels), test

    return {f.__name__: f() for f in (labels_out_of_range, nan_pixels, pixels_out_of_range, wrong_height,
                                       empty_test_split, missing_labels, class_imbalance, test_images_in_train,
                                       black_images)}


def _text_corruptions(train, test) -> dict[str, tuple]:
    """Every kind of damage the text suite knows, applied to real Rotten Tomatoes sentences."""
    from modelyard.modalities.text import TextSplit

    def edit(split, rows: dict[int, object]):
        texts = list(split.texts)
        for i, value in rows.items():
            texts[i] = value
        return TextSplit(texts, split.labels)

    def labels_out_of_range():
        labels = train.labels.copy()
        labels[[4, 40]] = [2, -1]
        return TextSplit(train.texts, labels), test

    def collapsed_class():
        keep = (train.labels == 0) | (np.arange(len(train)) % 20 == 0)  # 95% of the positive sentences gone
        return train.take(np.flatnonzero(keep)), test

    def test_sentences_in_train():
        return TextSplit(train.texts + test.texts[:60], np.concatenate([train.labels, test.labels[:60]])), test

    def near_copies_in_train():  # the same words, other case and punctuation
        near = [t.upper().replace(",", " ,  ").rstrip(".") + " !" for t in test.texts[:60]]
        return TextSplit(train.texts + near, np.concatenate([train.labels, test.labels[:60]])), test

    return {
        "labels_out_of_range": labels_out_of_range(),
        "non_string_texts": (edit(train, {3: 42, 9: None}), test),
        "lost_bytes_decoded_as_u_fffd": (edit(train, {7: "a gr\ufffdat film"}), test),
        "blank_texts": (edit(train, {i: "   " for i in range(0, 300, 10)}), test),
        "a_text_far_too_long": (edit(train, {11: "so " * 20_000}), test),
        "every_text_cut_to_a_word": (TextSplit([t.split()[0] for t in train.texts], train.labels), test),
        "empty_test_split": (train, test.take(slice(0, 0))),
        "missing_labels": (train, test, _drop_labels_of_the_last_test_lines),  # a JSON line with no label
        "collapsed_class": collapsed_class(),
        "test_sentences_in_train": test_sentences_in_train(),
        "near_copies_in_train": near_copies_in_train(),
    }


def _drop_labels_of_the_last_test_lines(dataset_dir: Path, count: int = 5) -> None:
    path = dataset_dir / "test.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    for i in range(len(lines) - count, len(lines)):
        lines[i] = json.dumps({"text": json.loads(lines[i])["text"]}, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _corrupted_runs_stop_before_training(served, tmp_path, dataset_dir, corruptions, *, recipe=None, task=NAME):
    """A flow run with deploy=True per corruption, its data written where fetch takes it as current; each must
    stop at validation with nothing trained, registered or published, while the served champion answers."""
    from helpers.config import write_params
    from modelyard.config import load_config
    from modelyard.data.dataset import load_split, read_metadata, write_dataset
    from modelyard.data.fetch import _limits
    from modelyard.forms import NO_RECIPE, form_defaults
    from modelyard.paths import TaskPaths
    from modelyard.registry import versions
    from modelyard.runs import run_config, runs_root
    from pipelines.training import training_pipeline

    base, uri, url, pngs = served
    meta = read_metadata(dataset_dir)
    params = write_params(base.with_overrides({
        "recipe": recipe, "registry": {"model_name": task},
        "data": {"dataset": meta["name"], "train_limit": len(load_split(dataset_dir, "train")),
                 "test_limit": len(load_split(dataset_dir, "test"))},
        "paths": {"data_dir": str(tmp_path / "data"), "artifacts_dir": str(tmp_path / "artifacts")}}),
        tmp_path / "params.yaml")
    cfg = load_config(params)  # the recipe applied, as the flow reads it
    stable = TaskPaths.of(cfg)
    champion = versions.get_version(uri, NAME, alias="champion").version
    versions_before = {n: _versions(uri, n) for n in {NAME, task}}
    outcome = {}
    for name, (bad_train, bad_test, *after_write) in corruptions.items():
        written = write_dataset(stable.dataset_dir, {"train": bad_train, "test": bad_test}, meta["classes"],
                                source=f"corrupted: {name}", name=meta["name"], modality=meta["modality"])
        for damage in after_write:  # what the writer cannot produce (a text line with no label)
            damage(written)
        (written / "limits.txt").write_text(_limits(cfg.data))  # fetch takes it as the current copy
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MODELYARD_PARAMS", str(params))
            state = training_pipeline(recipe=recipe or NO_RECIPE, **form_defaults(params), deploy=True,
                                      return_state=True)
        run_dir = max(runs_root(cfg).glob("2*"))  # the flow run's own directory (the newest)
        in_run = TaskPaths.of(run_config(cfg, run_dir))
        report = json.loads((in_run.validation_dir / "report.json").read_text())
        failed = sorted({f"{c['table']}.{c['column'] or c['expectation']}" for c in report["results"]
                         if not c["success"]})
        outcome[name] = (state.is_failed(), failed)
        assert state.is_failed() and failed, name
        assert json.loads((run_dir / "run.json").read_text())["status"] == "failed", name
        assert not in_run.train_dir.exists() and not (in_run.task_dir / "ray").exists(), name  # no training began
        assert not stable.task_dir.exists(), name  # and nothing was published
        assert {n: _versions(uri, n) for n in {NAME, task}} == versions_before, name
        assert versions.get_version(uri, NAME, alias="champion").version == champion, name
        answer = requests.post(url + "/predict", files={"file": ("x.png", pngs[0], "image/png")}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == champion, name
    for name, (stopped, failed) in outcome.items():
        print(f"  {name}: flow stopped at validation={stopped}; failed expectations: {', '.join(failed)}")
    return outcome


def _versions(uri: str, name: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    return sorted(v.version for v in MlflowClient(uri, registry_uri=uri).search_model_versions(f"name='{name}'"))


def test_every_corruption_the_image_suite_knows_stops_the_flow_before_training_and_the_champion_keeps_serving(
        served, prefect_api, small_dataset_dir, tmp_path, record_property):
    from modelyard.data.dataset import load_split

    train, test = load_split(small_dataset_dir, "train"), load_split(small_dataset_dir, "test")
    outcome = _corrupted_runs_stop_before_training(served, tmp_path, small_dataset_dir, _corruptions(train, test))
    record_property("corruptions", len(outcome))


def test_every_corruption_the_text_suite_knows_stops_the_flow_before_training(
        served, prefect_api, rt_polarity_dir, tmp_path, record_property):
    """The text task (rt-lstm) has no champion of its own here: nothing may be registered under its name,
    and the served (image) champion keeps answering throughout."""
    from modelyard.data.dataset import load_split, read_metadata, write_dataset

    train, test = load_split(rt_polarity_dir, "train").take(slice(0, 3000)), load_split(rt_polarity_dir, "test")
    small = write_dataset(tmp_path / "source" / "rt_polarity", {"train": train, "test": test},
                          read_metadata(rt_polarity_dir)["classes"], source="first 3,000 training sentences",
                          name="rt_polarity", modality="text")
    outcome = _corrupted_runs_stop_before_training(served, tmp_path, small, _text_corruptions(train, test),
                                                   recipe="rt-lstm", task="rt-polarity-lstm")
    record_property("corruptions", len(outcome))
