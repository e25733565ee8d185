"""Distributed training with Ray Train: the only module that imports `ray.train`.

`train(...)` is the one function that builds ScalingConfig/RunConfig. The driver decides everything about
the task: it builds the model's spec and fitted preprocessor, loads pretrained weights (so no worker reads
a file only the driver has), and puts the data, split and initial weights into Ray's object store.
`run_worker` then runs the plain steps of `loop.py` on each worker through a batch adapter: the data sit on
the worker's device, each worker takes its shard of a permutation shared by all (same seed), gradients
are averaged by DDP (gloo on CPU, NCCL on GPU). Every epoch ends with a checkpoint, so a run that loses a
worker restarts from the last one. `run_worker` also runs without Ray (`LocalSession`), for benchmarks and
device checks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelyard.config import PipelineConfig, TrainConfig
from modelyard.data.augment import check_prepared, load_prepared, policy_from_dict
from modelyard.data.dataset import load_split, read_metadata, replace_dir
from modelyard.data.preprocess import ImagePreprocessor, image_shape
from modelyard.models.artifact import ModelSpec, save_model_dir
from modelyard.runtime import connect_ray
from modelyard.training import loop

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_dir: str
    run_id: str | None
    epochs: int
    history: list[dict[str, float]]
    wall_time_s: float
    num_workers: int
    device: str
    checkpoint_path: str
    cpus_per_worker: int = 1
    precision: str = "none"  # what the steps ran in: none (fp32) | bf16 | fp16
    precision_reason: str = ""
    features_cached: bool = False  # a frozen backbone's features were computed once and only the head trained
    # Ray Train's fixed cost: from `trainer.fit()` to the end of the first optimiser step (worker start, process
    # group, data and weights from the object store, model build), in seconds
    startup_s: float | None = None
    startup_breakdown_s: dict[str, float] = field(default_factory=dict)  # the same, stage by stage (rank 0)
    resumed_after_epochs: list[int] = field(default_factory=list)  # one entry per restart from a checkpoint

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


@dataclass(frozen=True)
class WorkerPlan:
    """How many Ray Train workers, what each reserves, and why."""

    num_workers: int
    cpus_per_worker: int
    use_gpu: bool
    reason: str


def plan_workers(tc: TrainConfig, nodes: list[dict[str, float]]) -> WorkerPlan:
    """Choose workers x CPUs from the resources of the cluster's alive nodes (`[{"CPU": 2, "GPU": 0}, ...]`).

    GPUs: one worker per GPU. CPUs only: one worker per node using every core of it: one process per node
    holds the data once and needs no gradient all-reduce within the node. (On 2 cores, `make bench` measured
    1 worker x 2 threads at 0.973x plain PyTorch and 2 workers x 1 thread at 0.972x: equal within noise.
    The 0.69x once seen with 2 workers was Ray's metrics collection, now off; see `modelyard.runtime`.)
    Explicit `num_workers` / `cpus_per_worker` are honoured and checked against what the cluster has.
    """
    cpu_nodes = [n for n in nodes if n.get("CPU", 0) >= 1]
    if not cpu_nodes:
        raise ValueError("the Ray cluster has no node with a CPU to train on")
    gpus = sum(int(n.get("GPU", 0)) for n in nodes)
    total_cpus = sum(int(n["CPU"]) for n in cpu_nodes)
    wanted = tc.num_workers if isinstance(tc.num_workers, int) else None
    if tc.use_gpu == "true" and gpus < (wanted or 1):
        raise ValueError(f"train.use_gpu=true but the cluster has {gpus} GPU(s) for {wanted or 1} worker(s)")
    use_gpu = tc.use_gpu == "true" or (tc.use_gpu == "auto" and gpus >= max(wanted or 1, 1))
    if use_gpu:
        workers = wanted or gpus
        gpu_nodes = [n for n in cpu_nodes if n.get("GPU", 0) >= 1] or cpu_nodes
        per_node = min(int(n["CPU"]) // max(int(n.get("GPU", 1)), 1) for n in gpu_nodes)
        reason = f"{workers} worker(s), one per GPU ({gpus} in the cluster)"
    else:
        workers = wanted or len(cpu_nodes)
        per_node = min(int(n["CPU"]) for n in cpu_nodes) // max(1, math.ceil(workers / len(cpu_nodes)))
        reason = (f"{workers} CPU worker(s) over {len(cpu_nodes)} node(s) with {total_cpus} CPU(s)"
                  + ("" if wanted else ", one per node using all its cores"))
    cpus = tc.cpus_per_worker if isinstance(tc.cpus_per_worker, int) else max(1, per_node)
    if workers * cpus > total_cpus:
        raise ValueError(
            f"train.num_workers={workers} x cpus_per_worker={cpus} needs {workers * cpus} CPUs, but the cluster "
            f"has {total_cpus}; lower them or set both to auto"
        )
    return WorkerPlan(workers, cpus, use_gpu, f"{reason}; {cpus} CPU(s) each")


def preflight(cfg: PipelineConfig, dataset_dir: str | os.PathLike[str], prepared_dir: str | os.PathLike[str],
              *, local: bool) -> None:
    """Every check that needs no cluster, made before anything is started.

    The data must be what the last validation passed, and the prepared split must have been cut from them.
    On a local Ray (this machine's own devices), asking for GPUs or fp16 without a CUDA device fails here, not
    after Ray has started.
    """
    from modelyard.data.validate import check_validated

    check_validated(cfg.validate_.report_dir, dataset_dir)
    check_prepared(prepared_dir, dataset_dir)
    if not local:
        return
    has_cuda = torch.cuda.is_available()
    if cfg.train.use_gpu == "true" and not has_cuda:
        raise ValueError("train.use_gpu=true but this machine has no CUDA device; use auto or false")
    if cfg.train.mixed_precision == "fp16" and not has_cuda:
        raise ValueError("train.mixed_precision=fp16 needs a CUDA device; use auto, bf16 or none on CPU")
    if not has_cuda or cfg.train.use_gpu == "false":
        loop.resolve_precision(cfg.train.mixed_precision, torch.device("cpu"))  # warns early about emulated bf16


def _remove_dead_partials(output_dir: Path) -> None:
    """Delete the half-written outputs of trainings into `output_dir` whose process is gone (killed before its
    own cleanup ran); a live one's is left alone."""
    import psutil

    for partial in output_dir.parent.glob(f".{output_dir.name}.partial-*"):
        pid = partial.name.removeprefix(f".{output_dir.name}.partial-").partition("-")[0]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            log.info("removing %s, left by a training that died", partial)
            shutil.rmtree(partial, ignore_errors=True)


def train(
    cfg: PipelineConfig,
    dataset_dir: str | os.PathLike[str],
    prepared_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
) -> TrainResult:
    """Train `cfg.model` on the prepared split with Ray Train (workers planned by `plan_workers`).

    Writes `<output_dir>/model/` (weights + spec), `history.json`, `train.json` and TensorBoard events
    under `<output_dir>/tensorboard/`. Per-epoch metrics also go to the MLflow run `run_id` from rank 0.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    address = ray_address or os.environ.get("RAY_ADDRESS")
    preflight(cfg, dataset_dir, prepared_dir, local=not address and not ray.is_initialized())
    output_dir = Path(output_dir or cfg.train.output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # This run's own: a second training into the same place (by hand, beside `dvc repro`) neither reads nor
    # deletes it, and the last one to finish is what stays.
    started_ray = not ray.is_initialized()
    connect_ray(ray_address)
    _remove_dead_partials(output_dir)
    tmp_out = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-{os.getpid()}-", dir=output_dir.parent))
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        plan = plan_workers(cfg.train, nodes)
        log.info("training plan: %s", plan.reason)
        task = prepare_task(cfg, dataset_dir, prepared_dir)
        streaming = choose_loading(cfg, task.data.get("images")) == "streaming"
        rows = task.data.get("images", task.data.get("ids"))
        log.info("data: %s (%d training rows, %.0f MB)", "streamed by Ray Data" if streaming else "resident on "
                 "each worker", len(task.data["train_idx"]), rows.nbytes / 1e6)
        loop_config = {
            "cfg": cfg.model_dump(mode="json", by_alias=True),
            "task": {"spec": asdict(task.spec), "policy": asdict(task.policy)},
            # Data and initial weights travel through the object store: workers on other nodes need no path.
            "data_ref": None if streaming else ray.put(task.data),
            "streaming": {"train": len(task.data["train_idx"]), "val": len(task.data["val_idx"])} if streaming else None,
            "init_ref": ray.put(task.init_state),
            "output_dir": str(tmp_out),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "cpus_per_worker": plan.cpus_per_worker,
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            datasets=ray_datasets(task.data) if streaming else None,
            scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                         resources_per_worker={"CPU": plan.cpus_per_worker}),
            run_config=RunConfig(
                name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                storage_path=str(output_dir.parent / "ray"),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            ),
        )
        start, fit_called_at = time.perf_counter(), time.time()
        result = trainer.fit()
        wall = time.perf_counter() - start
        if result.error is not None:
            raise RuntimeError(f"training failed: {result.error}") from result.error
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / "state.pt", map_location="cpu", weights_only=False)
        history = state["history"]
        spec = ModelSpec(**state["spec"])
        model = spec.build()
        model.load_state_dict(state["model"])
        save_model_dir(model, spec, tmp_out / "model")
        train_result = TrainResult(
            model_dir=str(output_dir / "model"),
            run_id=run_id,
            epochs=len(history),
            history=history,
            wall_time_s=round(wall, 2),
            num_workers=plan.num_workers,
            device="cuda" if plan.use_gpu else "cpu",
            checkpoint_path=result.checkpoint.path,
            cpus_per_worker=plan.cpus_per_worker,
            precision=state["precision"]["mode"],
            precision_reason=state["precision"]["reason"],
            features_cached=state.get("features_cached", False),
            startup_s=round(state["startup"]["first_step"] - fit_called_at, 2) if state.get("startup") else None,
            startup_breakdown_s=_breakdown(state.get("startup") or {}, fit_called_at),
            resumed_after_epochs=state.get("resumed_after_epochs", []),
        )
        (tmp_out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        (tmp_out / "train.json").write_text(json.dumps(asdict(train_result), indent=2) + "\n")
        # Swap the finished output into place only now: a failed run leaves the previous output intact.
        replace_dir(tmp_out, output_dir)
        log.info("trained %d epochs in %.1f s (%s, precision %s); val accuracy %.4f; %.1f s from fit() to the "
                 "first step (%s)", len(history), wall, plan.reason, train_result.precision,
                 train_result.final.get("val/accuracy", float("nan")), train_result.startup_s or float("nan"),
                 ", ".join(f"{k} {v:.1f}" for k, v in train_result.startup_breakdown_s.items()))
        return train_result
    finally:
        shutil.rmtree(tmp_out, ignore_errors=True)
        if started_ray:
            ray.shutdown()


@dataclass
class Task:
    """What the driver hands every worker: the model's spec (with its fitted preprocessor), the augmentation
    policy, the data and split, and the initial weights (pretrained ones loaded here, once)."""

    spec: ModelSpec
    policy: Any  # AugmentPolicy | TextAugmentPolicy
    data: dict[str, Any]  # images (or ids + lengths for text), labels, train_idx, val_idx (numpy)
    init_state: dict[str, torch.Tensor]


def prepare_task(cfg: PipelineConfig, dataset_dir: str | os.PathLike[str], prepared_dir: str | os.PathLike[str]) -> Task:
    meta = read_metadata(dataset_dir)
    prepared = load_prepared(prepared_dir)
    train_split = load_split(dataset_dir, "train")
    family = cfg.model
    modality = meta.get("modality", "image")
    family_modality = "text" if hasattr(family, "text_preprocessor") else "image"
    if modality != family_modality:
        raise ValueError(f"model.name={family.name} is a {family_modality} model but {meta['name']} holds {modality} "
                         f"data; pick a {modality} model (or a recipe: `modelyard recipes`)")
    if modality == "text":
        return _prepare_text_task(cfg, meta, prepared, train_split)
    source = image_shape(train_split.images)
    input_shape = family.input_shape(source)
    fixed = family.normalization()
    if fixed is None:  # the statistics the augment stage fitted on the training rows
        mean, std = prepared.mean, prepared.std
        if input_shape[2] != source[2]:
            mean, std = mean * input_shape[2], std * input_shape[2]
        fixed = (mean, std, f"fitted on the {meta['name']} training split")
    preprocessor = ImagePreprocessor(source, input_shape, tuple(fixed[0]), tuple(fixed[1]), fixed[2])
    data = {"images": train_split.images, "labels": train_split.labels,
            "train_idx": prepared.train_indices, "val_idx": prepared.val_indices}
    return _task(cfg, meta, prepared, family.builder_args(input_shape, len(meta["classes"])), preprocessor, data)


def _task(cfg: PipelineConfig, meta: dict[str, Any], prepared: Any, args: dict[str, Any], preprocessor: Any,
          data: dict[str, Any]) -> Task:
    """The spec (family, builder arguments, labels, fitted preprocessing) and the seeded initial weights."""
    family = cfg.model
    spec = ModelSpec(
        family=family.name,
        args=args,
        labels=list(meta["classes"]),
        preprocessing=preprocessor.to_dict(),
        extra={"dataset": meta["name"], "dataset_sha256": meta["splits"]["train"]["sha256"],
               "config": family.model_dump(mode="json")},
    )
    torch.manual_seed(cfg.train.seed)  # the initial weights are a function of the seed, as the run's record says
    model = spec.build()
    family.prepare(model)  # pretrained weights, frozen layers
    return Task(spec, prepared.policy, data, {k: v.detach().clone() for k, v in model.state_dict().items()})


def _prepare_text_task(cfg: PipelineConfig, meta: dict[str, Any], prepared: Any, train_split: Any) -> Task:
    """Tokenised once here, on the driver: workers get token ids, not texts, and need no tokenizer files."""
    family = cfg.model
    preprocessor = family.text_preprocessor()
    ids, lengths, truncated = preprocessor.tokenize(train_split.texts)
    log.info("tokenised %d texts: mean %.1f tokens, %.1f%% truncated at %d", len(ids), lengths.mean(),
             100 * truncated.mean(), preprocessor.max_length)
    data = {"ids": ids, "lengths": lengths, "labels": train_split.labels,
            "train_idx": prepared.train_indices, "val_idx": prepared.val_indices,
            "special_ids": preprocessor.special_ids(), "pad_id": preprocessor.pad_id}
    return _task(cfg, meta, prepared, family.builder_args(None, len(meta["classes"])), preprocessor, data)


def choose_loading(cfg: PipelineConfig, images: Any) -> str:
    """resident or streaming, as configured; auto keeps splits up to data.resident_max_mb resident."""
    if images is None:  # token ids: small; streaming is for images
        if cfg.data.loading == "streaming":
            raise ValueError("data.loading=streaming streams images; text datasets are tokenised and kept resident "
                             "(use auto or resident)")
        return "resident"
    if cfg.data.loading != "auto":
        return cfg.data.loading
    return "resident" if images.nbytes <= cfg.data.resident_max_mb * 1024**2 else "streaming"


def ray_datasets(data: dict[str, Any]) -> dict[str, Any]:
    """The train and val rows as Ray Datasets (image tensor column + label), for Ray Train to shard."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    def table(rows: Any) -> Any:
        return pa.table({"image": ArrowTensorArray.from_numpy(data["images"][rows]), "label": data["labels"][rows]})

    return {name: ray.data.from_arrow(table(data[f"{name}_idx"])) for name in ("train", "val")}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    run_worker(config, _RaySession())


class _RaySession:
    """Ray Train's view of a worker: rank, device, checkpoints, reports."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def dataset_shard(self, name: str) -> Any:
        return self._train.get_dataset_shard(name)

    def get_checkpoint_state(self, device: torch.device) -> dict[str, Any] | None:
        checkpoint = self._train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as ckpt_dir:
            return torch.load(Path(ckpt_dir) / "state.pt", map_location=device, weights_only=False)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if state is not None:
                torch.save(state, Path(tmp) / "state.pt")
                checkpoint = self._train.Checkpoint.from_directory(tmp)
            self._train.report(dict(metrics), checkpoint=checkpoint)


class LocalSession:
    """One process, no Ray: the same worker code for benchmarks and device checks. Keeps the last state."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.rank, self.world = 0, 1
        self.device = torch.device(device)
        self.last_state: dict[str, Any] | None = None

    def get(self, value: Any) -> Any:
        return value

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def get_checkpoint_state(self, device: torch.device) -> dict[str, Any] | None:
        return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.last_state = state if state is not None else self.last_state


def run_worker(config: dict[str, Any], session: Any) -> None:
    """One worker's training: the same for every model family (the batch adapter differs)."""
    marks = {"worker_started": time.time()}  # wall-clock times of the startup, for Ray Train's fixed cost
    cfg = PipelineConfig.model_validate(config["cfg"])
    tc = cfg.train
    rank, world, device = session.rank, session.world, session.device
    if device.type == "cpu":
        torch.set_num_threads(int(config.get("cpus_per_worker", 1)))
    torch.manual_seed(tc.seed)
    mode, why = loop.resolve_precision(tc.mixed_precision, device)
    if rank == 0:
        log.info("precision: %s (%s); %d worker(s), %d torch thread(s) each", "fp32" if mode == "none" else mode,
                 why, world, torch.get_num_threads())

    spec = ModelSpec(**config["task"]["spec"])
    policy = policy_from_dict(config["task"]["policy"])
    local_batch = max(1, tc.batch_size // world)
    streaming = config.get("streaming")
    if streaming:
        batches: Any = loop.StreamingBatches(session.dataset_shard("train"), session.dataset_shard("val"),
                                             spec.preprocessor(), policy, device, seed=tc.seed)
        # Ray Train splits a dataset equally between workers: every worker runs the same number of steps.
        per_worker_train = streaming["train"] // world
        train_rows = torch.arange(streaming["train"])  # placeholders: the shards decide the rows
        val_idx = torch.arange(0)
    else:
        data = session.get(config["data_ref"])
        with warnings.catch_warnings():  # arrays from the object store are read-only views; nothing writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            labels = torch.from_numpy(data["labels"]).to(device)
            if "ids" in data:  # text: token ids, resident
                batches = loop.TextBatches(torch.from_numpy(data["ids"]).to(device),
                                           torch.from_numpy(data["lengths"]).to(device), labels, policy,
                                           data["special_ids"], data["pad_id"])
            else:
                images = torch.from_numpy(data["images"]).to(device)  # uint8, resident
                batches = loop.ImageBatches(images, labels, spec.preprocessor(), policy)
        train_rows = torch.from_numpy(data["train_idx"])
        # Every worker gets an equal share, so all run the same number of steps (DDP needs that).
        per_worker_train = len(train_rows) // world
        val_idx = torch.from_numpy(data["val_idx"])[rank::world].to(device)

    marks["data_ready"] = time.time()
    model = spec.build()
    model.load_state_dict(session.get(config["init_ref"]))
    model = model.to(device)
    precision = loop.Precision(device=device, mode=mode, channels_last=tc.channels_last)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trained = model  # what the optimiser updates
    if getattr(model, "frozen", False) and policy.is_identity and not streaming:
        # A frozen backbone over unaugmented inputs gives the same features every epoch: compute them once.
        t0 = time.perf_counter()
        rows = torch.cat([train_rows.to(device), val_idx]).unique()
        feats = loop.compute_features(model.backbone, batches, rows, precision)
        batches, trained = loop.TensorBatches(feats, labels), model.head
        if rank == 0:
            log.info("cached %d x %d backbone features in %.1f s", len(rows), feats.shape[1], time.perf_counter() - t0)
    groups = cfg.model.param_groups(model)
    optimizer = loop.build_optimizer(groups, tc.learning_rate, tc.momentum, tc.weight_decay, tc.optimizer)
    batches_per_epoch = loop.steps_per_epoch(per_worker_train, local_batch)
    steps = max(1, math.ceil(batches_per_epoch / tc.grad_accum_steps))
    scheduler = loop.build_scheduler(optimizer, total_steps=steps * tc.epochs,
                                     warmup_steps=int(round(steps * tc.warmup_epochs)), schedule=tc.schedule)

    marks["model_ready"] = time.time()
    start_epoch, history, resumed = 0, [], []
    state = session.get_checkpoint_state(device)
    if state:  # resuming after a failure: pick up where the last checkpoint left off
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        marks, resumed = state.get("startup") or {}, [*state.get("resumed_after_epochs", []), start_epoch]
        if rank == 0:
            log.warning("resumed from the checkpoint of epoch %d after a worker failure", start_epoch)

    step_model = session.prepare_model(trained)
    if tc.compile:
        step_model = torch.compile(step_model)
    tracker = _Rank0Tracker(config, rank, resume_at=start_epoch + 1 if state else None)
    if state:
        tracker.backfill(history)  # an epoch checkpointed just before the failure, not yet logged
        tracker.tags({"train.resumed_after_epochs": ",".join(map(str, resumed))})
    tracker.tags({"train.precision": "fp32" if mode == "none" else mode, "train.precision_reason": why,
                  "train.workers": world, "train.threads_per_worker": torch.get_num_threads(),
                  "train.device": device.type, "train.features_cached": trained is not model})
    marks.setdefault("tracking_ready", time.time())

    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        # Every random draw of an epoch (order, augmentation, dropout) is seeded by (seed, epoch, rank) alone, so
        # an epoch re-run after a failure draws what the undisturbed run drew.
        torch.manual_seed(tc.seed * 100_003 + epoch * 1009 + rank)
        gen = torch.Generator(device=device).manual_seed(tc.seed * 1000 + epoch)
        perm = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(tc.seed + epoch))
        shard = train_rows[perm][rank * per_worker_train:(rank + 1) * per_worker_train].to(device)
        epoch_batches = batches.train(shard, local_batch, gen)
        if "first_step" not in marks:
            epoch_batches = _FirstStepClock(epoch_batches)
        tr = loop.train_epoch(
            step_model, epoch_batches, optimizer=optimizer, scheduler=scheduler,
            precision=precision, label_smoothing=tc.label_smoothing, accum_steps=tc.grad_accum_steps,
            clip_norm=tc.grad_clip_norm,
        )
        train_time = time.perf_counter() - t0
        va = loop.evaluate_batches(trained, batches.eval(val_idx, 500), precision)
        totals = _all_reduce_sum([tr["loss_sum"], tr["correct"], tr["count"], va["loss_sum"], va["correct"], va["count"]],
                                 device)
        metrics = {
            "epoch": epoch + 1,
            "train/loss": totals[0] / max(totals[2], 1),
            "train/accuracy": totals[1] / max(totals[2], 1),
            "val/loss": totals[3] / max(totals[5], 1),
            "val/accuracy": totals[4] / max(totals[5], 1),
            "train/lr": optimizer.param_groups[0]["lr"],
            "train/epoch_time_s": train_time,
            "train/samples_per_s": totals[2] / train_time,
            # the whole epoch as a user waits for it: training, validation and the metrics all-reduce
            "epoch/wall_time_s": time.perf_counter() - t0,
        }
        history.append(metrics)
        if "first_step" not in marks:
            marks["first_step"] = epoch_batches.first_step_at
        state = None
        if rank == 0:
            state = {"model": {k: v.cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "history": history, "spec": asdict(spec),
                     "precision": {"mode": mode, "reason": why}, "features_cached": trained is not model,
                     "startup": marks, "resumed_after_epochs": resumed}
        session.report(metrics, state)
        # Logged once checkpointed: an epoch lost to a failure is re-run, and logged, once.
        tracker.log(metrics, step=epoch + 1)
    tracker.close()


def _breakdown(marks: dict[str, float], fit_called_at: float) -> dict[str, float]:
    """Seconds of each startup stage: workers up, data and weights in, model built, tracking ready, first step."""
    names = {"worker_started": "workers_started", "data_ready": "data", "model_ready": "model",
             "tracking_ready": "tracking", "first_step": "first_step"}
    out, before = {}, fit_called_at
    for key, name in names.items():
        if key in marks:
            out[name] = round(marks[key] - before, 2)
            before = marks[key]
    return out


class _FirstStepClock:
    """Passes `batches` through and notes the wall-clock time the first step ended (when the second batch is
    asked for, or the epoch ends)."""

    def __init__(self, batches: Any) -> None:
        self.batches, self.first_step_at = batches, None

    def __iter__(self) -> Any:
        for i, item in enumerate(self.batches):
            if i == 1:
                self.first_step_at = time.time()
            yield item
        if self.first_step_at is None:
            self.first_step_at = time.time()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


class _Rank0Tracker:
    """TensorBoard events and MLflow metrics, written by rank 0 only."""

    def __init__(self, config: dict[str, Any], rank: int, resume_at: int | None = None) -> None:
        self.active = rank == 0
        self.writer = None
        self.run_id = config.get("run_id")
        self.tracking_uri = config.get("tracking_uri")
        if self.active and config.get("output_dir"):  # no output dir (a local, untracked run): no events
            from torch.utils.tensorboard import SummaryWriter

            # After a restart, events an earlier attempt wrote from the resumed step on are hidden.
            self.writer = SummaryWriter(log_dir=str(Path(config["output_dir"]) / "tensorboard"), purge_step=resume_at)

    def backfill(self, history: list[dict[str, float]]) -> None:
        """Log the checkpointed epochs MLflow has not got (a failure between checkpoint and log)."""
        if not (self.active and self.run_id and self.tracking_uri):
            return
        from modelyard.registry import logged_steps

        have = logged_steps(self.tracking_uri, self.run_id, "val/accuracy")
        for metrics in history:
            if int(metrics["epoch"]) not in have:
                self.log(metrics, step=int(metrics["epoch"]))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        log.info("epoch %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        if self.run_id and self.tracking_uri:
            from modelyard.registry import log_metrics

            log_metrics(self.tracking_uri, self.run_id, metrics, step=step)

    def tags(self, tags: dict[str, Any]) -> None:
        """What this run resolved at run time (precision, workers), recorded on the MLflow run."""
        if self.active and self.run_id and self.tracking_uri:
            from modelyard.registry import set_tags

            set_tags(self.tracking_uri, self.run_id, tags)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
