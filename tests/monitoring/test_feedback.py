"""Labels back in, without a server: labels joined with logged traffic (real Fashion-MNIST test images as the
inputs), live accuracy per version, the feedback data set and its fixed holdout, and a training split that
takes the feedback's rows through the project's own fetch and validation while the test split stays put."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.config import small_config
from modelyard.data.dataset import load_split, read_metadata
from modelyard.monitoring import feedback, profile
from modelyard.monitoring.profile import decode_input, encode_input


def log_traffic(traffic: Path, task: str, images, predicted, classes, version: str, ids: list[str]) -> None:
    """What a replica logs for one request per image: its answer (here `predicted`) and its input."""
    rows = []
    for image, index, request_id in zip(images, predicted, ids):
        scores = {name: float(i == index) for i, name in enumerate(classes)}
        answer = {"index": int(index), "label": classes[index], "scores": scores}
        rows += profile.rows([answer], None, task=task, version=version, request_id=request_id,
                             latency_ms=3.0, inputs=[image])
    profile.write(rows, traffic / f"task={task}" / f"version={version}" / f"r1-{profile.stamp()}.parquet")


def post(traffic: Path, task: str, labelled: list[tuple[str, int]], classes, version="1") -> None:
    feedback.write_labels(traffic, task, [{"time": time.time(), "request_id": rid, "item": 0, "label": classes[i],
                                           "index": i, "version": version} for rid, i in labelled], "r1")


def test_inputs_survive_the_log_as_they_were(test_sample):
    assert np.array_equal(decode_input(encode_input(test_sample.images[3])), test_sample.images[3])
    assert decode_input(encode_input("un film étonnant")) == "un film étonnant"
    with pytest.raises(ValueError, match="not an input"):
        decode_input(b"xyz")


def test_labels_join_the_traffic_and_give_live_accuracy_per_version(tmp_path, test_sample, class_names):
    images, truth = test_sample.images[:40], test_sample.labels[:40]
    wrong = (truth + 1) % 10  # version 2 answers every one of its inputs wrongly
    log_traffic(tmp_path, "t", images[:20], truth[:20], class_names, "1", [f"a{i}" for i in range(20)])
    log_traffic(tmp_path, "t", images[20:], wrong[20:], class_names, "2", [f"b{i}" for i in range(20)])
    post(tmp_path, "t", [(f"a{i}", int(truth[i])) for i in range(10)]
         + [(f"b{i}", int(truth[20 + i])) for i in range(15)] + [("never-logged", 0)], class_names)
    post(tmp_path, "t", [("a0", int(wrong[0]))], class_names)  # a later label for a0 replaces the first
    frame = feedback.labelled(tmp_path, "t", inputs=True)
    assert len(frame) == 25 and "never-logged" not in set(frame["request_id"])
    live = feedback.live_accuracy(frame)
    assert live == {"1": {"accuracy": 0.9, "labelled": 10}, "2": {"accuracy": 0.0, "labelled": 15}}
    assert np.array_equal(decode_input(frame[frame.request_id == "b3"]["input"].iloc[0]), images[23])


def test_the_feedback_set_holds_each_labelled_input_once_and_its_holdout_stays_fixed(tmp_path, test_sample,
                                                                                     class_names):
    images, truth = test_sample.images[:120], test_sample.labels[:120]
    ids = [f"req-{i}" for i in range(120)]
    log_traffic(tmp_path, "t", 255 - images, truth, class_names, "1", ids)
    post(tmp_path, "t", [(ids[i], int(truth[i])) for i in range(80)], class_names)
    first = feedback.build_feedback_set(tmp_path, "t", class_names, "image", tmp_path / "set", holdout_share=0.25)
    assert first["train_rows"] + first["holdout_rows"] == 80 and 8 <= first["holdout_rows"] <= 32, first
    train, holdout = load_split(tmp_path / "set", "train"), load_split(tmp_path / "set", "holdout")
    by_id = {ids[i]: i for i in range(120)}
    held = {rid for rid in ids[:80] if feedback.in_holdout(rid, 0, 0.25)}
    assert len(holdout) == len(held)
    # every row is a logged input with its posted label
    rows = {(img.tobytes(), int(lab)) for img, lab in zip(np.concatenate([train.images, holdout.images]),
                                                         np.concatenate([train.labels, holdout.labels]))}
    assert rows == {((255 - images[by_id[r]]).tobytes(), int(truth[by_id[r]])) for r in ids[:80]}

    post(tmp_path, "t", [(ids[i], int(truth[i])) for i in range(80, 120)], class_names)
    second = feedback.build_feedback_set(tmp_path, "t", class_names, "image", tmp_path / "set", holdout_share=0.25)
    assert second["train_rows"] + second["holdout_rows"] == 120 and second["sha256"] != first["sha256"]
    again = {x.tobytes() for x in load_split(tmp_path / "set", "holdout").images}
    assert {x.tobytes() for x in holdout.images} <= again  # nothing moved from holdout to train


def test_a_label_outside_the_classes_and_a_log_without_inputs_are_refused(tmp_path, test_sample, class_names):
    log_traffic(tmp_path, "t", test_sample.images[:5], test_sample.labels[:5], class_names, "1",
                [f"x{i}" for i in range(5)])
    feedback.write_labels(tmp_path, "t", [{"time": time.time(), "request_id": "x1", "item": 0, "label": "Parrot",
                                           "index": 10, "version": "1"}], "r1")
    with pytest.raises(ValueError, match="Parrot"):
        feedback.build_feedback_set(tmp_path, "t", class_names, "image", tmp_path / "set")
    with pytest.raises(LookupError, match="no labelled input"):
        feedback.build_feedback_set(tmp_path / "empty", "t", class_names, "image", tmp_path / "set")
    assert not (tmp_path / "set").exists()


@pytest.mark.integration
def test_training_data_take_the_feedback_rows_and_the_test_split_stays(tmp_path, test_sample, class_names):
    from modelyard import stages

    ids = [f"req-{i}" for i in range(60)]
    log_traffic(tmp_path / "traffic", "t", 255 - test_sample.images[:60], test_sample.labels[:60], class_names,
                "1", ids)
    post(tmp_path / "traffic", "t", [(r, int(test_sample.labels[i])) for i, r in enumerate(ids)], class_names)
    summary = feedback.build_feedback_set(tmp_path / "traffic", "t", class_names, "image", tmp_path / "fb")

    plain = small_config(tmp_path / "plain")
    fed = small_config(tmp_path / "fed", data={"feedback": summary["path"]})
    stages.fetch(plain)
    stages.fetch(fed)
    base, merged = Path(plain.paths.data_dir) / "fashion_mnist", Path(fed.paths.data_dir) / "fashion_mnist"
    assert len(load_split(merged, "train")) == len(load_split(base, "train")) + summary["train_rows"]
    assert np.array_equal(load_split(merged, "test").images, load_split(base, "test").images)
    meta = read_metadata(merged)
    assert meta["splits"]["test"] == read_metadata(base)["splits"]["test"]
    assert meta["feedback"]["train_rows"] == summary["train_rows"] and meta["feedback"]["sha256"] == summary["sha256"]
    report = stages.validate(fed)  # the merged training split passes the same expectations
    assert report.success
    stale = small_config(tmp_path / "fed", data={"feedback": summary["path"]})
    summary2 = feedback.build_feedback_set(tmp_path / "traffic", "t", class_names, "image", tmp_path / "fb",
                                           holdout_share=0.5)  # a rebuilt set is a new cut: fetched again
    stages.fetch(stale)
    assert read_metadata(merged)["feedback"]["train_rows"] == summary2["train_rows"] != summary["train_rows"]


@pytest.mark.integration
def test_the_feedback_set_is_added_to_dvc(tmp_path, test_sample, class_names):
    from modelyard.versioning import add_to_dvc

    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    log_traffic(tmp_path / "traffic", "t", test_sample.images[:30], test_sample.labels[:30], class_names, "1",
                [f"r{i}" for i in range(30)])
    post(tmp_path / "traffic", "t", [(f"r{i}", int(test_sample.labels[i])) for i in range(30)], class_names)
    out = tmp_path / "data" / "feedback" / "t"
    feedback.build_feedback_set(tmp_path / "traffic", "t", class_names, "image", out)
    added = add_to_dvc(out)
    assert added["status"] == "added" and Path(added["dvc_file"]).is_file()
    cached = tmp_path / ".dvc" / "cache" / "files" / "md5" / added["md5"][:2] / added["md5"][2:]
    assert cached.is_file() and {e["relpath"] for e in json.loads(cached.read_text())} >= {"dataset.json"}
    assert add_to_dvc(tmp_path.parent / "elsewhere")["status"] == "not_added"


def test_the_monitor_asks_for_retraining_by_its_thresholds():
    from modelyard.config import RetrainConfig
    from modelyard.monitoring.monitor import ACCURACY_EVENT, DRIFT_EVENT, LABELS_EVENT, reasons

    rules = RetrainConfig(min_new_labels=100, min_labelled=40, accuracy_drop=0.05)
    calm = {"version": "3", "drifted": False, "new_labels": 99, "test_accuracy": 0.90,
            "live": {"3": {"accuracy": 0.86, "labelled": 500}, "2": {"accuracy": 0.10, "labelled": 500}}}
    assert reasons(calm, rules) == []  # 4 points under its test accuracy; another version's live accuracy aside
    assert reasons(calm | {"new_labels": 100}, rules) == [LABELS_EVENT]
    dropped = calm | {"live": {"3": {"accuracy": 0.84, "labelled": 40}}}
    assert reasons(dropped, rules) == [ACCURACY_EVENT]
    assert reasons(dropped | {"live": {"3": {"accuracy": 0.5, "labelled": 39}}}, rules) == []  # too few labels
    assert reasons(calm | {"drifted": True}, rules) == [DRIFT_EVENT]
    assert reasons(calm | {"drifted": True}, RetrainConfig(on_drift=False)) == []
    assert reasons(dropped | {"drifted": True, "new_labels": 500}, rules) == [DRIFT_EVENT, LABELS_EVENT, ACCURACY_EVENT]


def test_a_label_counts_only_with_a_request_logged_at_most_a_week_before_it(tmp_path, test_sample, class_names):
    """The monitor joins labels with a week of traffic, not the whole log; the feedback set reads all of it."""
    old = tmp_path / "task=t" / "version=1"
    rows = profile.rows([{"index": 1, "label": class_names[1], "scores": {c: 0.1 for c in class_names}}], None,
                        task="t", version="1", request_id="old", inputs=[test_sample.images[0]])
    profile.write(rows, old / f"r1-{profile.stamp(time.time() - 8 * 24 * 3600)}.parquet")
    post(tmp_path, "t", [("old", 1)], class_names)
    assert feedback.labelled(tmp_path, "t").empty
    assert list(feedback.labelled(tmp_path, "t", lookback_s=None)["request_id"]) == ["old"]
    built = feedback.build_feedback_set(tmp_path, "t", class_names, "image", tmp_path / "set", holdout_share=0)
    assert built["train_rows"] == 1
