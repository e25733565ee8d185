"""Where a search's trials should train: inside the Tune trial (`engine: local`, the Ray Train worker's code
in the trial's process) or in a TorchTrainer each trial launches (`engine: ray_train`, Ray Train V2's pattern).

    python -m bench.search_engines [--trials 4] [--epochs 10]

The same search both ways: the `vowels-lstm` recipe on the real JapaneseVowels data (fetched by the project's
fetch code), the same four sampled configurations (Optuna, seed 42), FIFO (no trial stopped), one trial at a
time with every core, no MLflow. Prints each engine's wall time, its mean seconds per trial, and what
launching a TorchTrainer adds to each trial (Ray's own start is paid once, before, by both).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from modelyard import stages
from modelyard.config import load_config
from modelyard.paths import TaskPaths
from modelyard.runtime import configure_environment, connect_ray
from modelyard.tuning.config import SearchConfig
from modelyard.tuning.search import run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        cfg = load_config("params.yaml", {"recipe": "vowels-lstm", "train": {"progress_every_s": 600},
                                          "paths": {"data_dir": args.data_dir, "artifacts_dir": tmp}})
        for stage in (stages.fetch, stages.validate, stages.prepare):
            stage(cfg)
        paths = TaskPaths.of(cfg)
        connect_ray()
        cpus = int(ray.cluster_resources()["CPU"])
        space = {"train.epochs": {"choice": [args.epochs]}, "train.learning_rate": {"loguniform": [1e-3, 1e-2]}}
        walls = {}
        for engine in ("local", "ray_train"):
            settings = SearchConfig(trials=args.trials, concurrency=1, cpus_per_trial=cpus, scheduler="fifo",
                                    engine=engine, time_budget_min=None)
            result = run_search(cfg, space, settings, paths.dataset_dir, paths.prepared_dir, Path(tmp) / engine)
            per_trial = sum(t.seconds for t in result.trials) / len(result.trials)
            walls[engine] = (result.wall_s, per_trial, result.best.score)
        ray.shutdown()
    print(f"\nsearch engines: {args.trials} trials x {args.epochs} epochs of vowels-lstm, one at a time on "
          f"{cpus} CPU(s) ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    for engine, (wall, per_trial, best) in walls.items():
        print(f"  {engine:10s} wall {wall:6.1f} s   {per_trial:5.1f} s a trial   best val accuracy {best:.4f}")
    added = walls["ray_train"][1] - walls["local"][1]
    print(f"  a TorchTrainer per trial adds {added:.1f} s to each trial; local / ray_train wall ratio "
          f"{walls['local'][0] / walls['ray_train'][0]:.2f}")


if __name__ == "__main__":
    main()
