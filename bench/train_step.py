"""modelyard's training step against the same work written inline in plain PyTorch, for every model family,
in one process, on real data (Fashion-MNIST images; Rotten Tomatoes sentences for the text families).

    python -m bench.train_step [--family cnn mlp resnet18 transfer-ft transfer-fe bert lstm] [--precision auto]
                               [--threads 2] [--device cpu|cuda] [--chunks N] [--batch B]

modelyard's side is the code training runs: the family's model built from its typed config, the fitted
preprocessor's augmentation and resize on the device (`ImageBatches`), and `loop.train_epoch` (autocast,
optimiser step over the family's parameter groups, the loss/accuracy bookkeeping) over a run of steps, as an
epoch runs them. The plain side writes the same computation out: gather, crop + flip, resize, normalise,
forward, loss, backward, step. Each timed call is a chunk of steps; the two kinds alternate chunk by chunk,
and samples/s come from the median chunk. Prints the ratio (modelyard / plain: the median over chunk pairs of
plain's time over modelyard's) per family; the target is at least 0.97. Absolute numbers depend on the machine; only the ratio is comparable across machines.

Text: modelyard's side is `TextBatches` (token ids resident on the device, each batch cut to its longest
text) and `loop.train_epoch` with the recipe's clipping; the plain side is plain PyTorch + Transformers
(`AutoModelForSequenceClassification` called on input_ids/attention_mask, `.logits`, clip, AdamW) over the
same token ids, padded the same way.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from modelyard.config import load_config
from modelyard.data.dataset import load_split
from modelyard.data.datasets import get_dataset
from modelyard.data.fetch import fetch_dataset
from modelyard.modalities import get_modality
from modelyard.modalities.image import ImagePolicy
from modelyard.modalities.image.preprocess import ImageBatches
from modelyard.models import build_model, family_config
from modelyard.paths import TaskPaths
from modelyard.runtime import configure_environment
from modelyard.training import loop
from modelyard.training.precision import Precision, resolve_precision

# family -> (recipe it comes from, model overrides, steps per chunk, chunks, batch) at `make bench`'s defaults
FAMILIES = {
    "cnn": ("fashion-cnn", {}, 10, 8, 128),
    "mlp": ("fashion-mlp", {}, 40, 8, 128),
    "resnet18": ("fashion-cnn", {"name": "resnet18", "stem": "cifar"}, 2, 6, 32),
    "transfer-ft": ("fashion-transfer-finetune", {}, 2, 6, 32),
    "transfer-fe": ("fashion-transfer", {}, 4, 6, 32),  # frozen backbone, features not cached (augmented inputs)
}
TEXT_FAMILIES = {
    "bert": ("rt-bert", 1, 24, 32),
    "lstm": ("rt-lstm", 10, 8, 64),
}


def plain_step(model, opt, images, labels, idx, gen, mean, std, size, channels, pad, amp, channels_last, smoothing):
    """The same computation, written out: crop (pad) + flip at 28 px, resize, channels, normalise, step."""
    dev = images.device
    x = images[idx].float().div(255).unsqueeze(1)
    b, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if size != h:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, channels, -1, -1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure_interleaved(steps: dict[str, Callable[[], None]], n: int, samples: int, sync=lambda: None) -> dict[str, float]:
    """samples/s of each kind from the median of `n` timed calls (`samples` each), alternating call by call,
    and under "paired" the median over calls of plain's time / modelyard's time for the i-th call of each.

    Alternating (and swapping which goes first) exposes both to the same machine state, so drift in clock
    speed or background load cancels out of the ratio instead of deciding it. The paired ratio is the one
    printed: where a call's cost depends on its rows (a text batch costs what its longest text does), the
    i-th calls of both kinds take the same rows, so pairing them compares like with like.
    """
    for fn in steps.values():  # warm-up: allocator, autotuning, first-call overheads
        fn()
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    kinds = list(steps)
    for i in range(n):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            sync()
            start = time.perf_counter()
            steps[kind]()
            sync()
            times[kind].append(time.perf_counter() - start)
    rates = {kind: samples / statistics.median(t) for kind, t in times.items()}
    plain, ours = times[kinds[0]], times[kinds[1]]
    rates["paired"] = statistics.median(p / o for p, o in zip(plain, ours))
    return rates


def bench_family(family: str, images, labels, dev, precision_mode: str, chunks: int | None, batch: int | None, sync):
    recipe, model_overrides, chunk, default_chunks, default_batch = FAMILIES[family]
    chunks, batch = chunks or default_chunks, batch or default_batch
    cfg = load_config("params.yaml", {"recipe": recipe, **({"model": model_overrides} if model_overrides else {})})
    fam, tc = family_config(cfg.model), cfg.train
    # the family's preprocessor as training fits it: its size, channels and normalisation (Fashion-MNIST's
    # statistics where it asks for none)
    statistics = {"mean": [0.286], "std": [0.353]}
    schema = get_dataset(cfg.data.dataset).schema
    pre = get_modality("image").fit_preprocessor(fam.preprocessing(), statistics, schema)
    shape = pre.input_shape
    pad = 2  # crop + flip for every family (the frozen backbone's step then sees augmented inputs, no cache)
    policy = ImagePolicy(crop_padding=pad, hflip_prob=0.5, erasing_prob=0.0)  # erasing has no plain twin here
    mode, why = resolve_precision(precision_mode, dev)
    channels_last = tc.channels_last
    precision = Precision(device=dev, mode=mode, channels_last=channels_last)
    spec_args = fam.builder_args(pre.model_input(), 10)

    def make_step(kind: str):
        torch.manual_seed(0)
        model = build_model(fam.name, **spec_args)  # a transfer model is built frozen or not, as configured
        model = model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        groups = fam.param_groups(model)
        opt = loop.build_optimizer(groups, tc.learning_rate, tc.momentum, tc.weight_decay, tc.optimizer)
        gen = torch.Generator(device=dev).manual_seed(0)
        batches = loop.ResidentBatches({"images": images, "labels": labels}, ImageBatches(pre, policy))
        mean = torch.tensor(pre.mean, device=dev).view(1, -1, 1, 1)
        std = torch.tensor(pre.std, device=dev).view(1, -1, 1, 1)

        def run_chunk() -> None:
            rows = torch.randint(0, len(labels), (chunk * batch,), generator=gen, device=dev)
            if kind == "plain":
                model.train()
                for start in range(0, len(rows), batch):
                    plain_step(model, opt, images, labels, rows[start:start + batch], gen, mean, std, shape[0],
                               shape[2], pad, mode == "bf16", channels_last, tc.label_smoothing)
            else:
                loop.train_epoch(model, batches.train(rows, batch, gen), optimizer=opt, scheduler=None,
                                 precision=precision, label_smoothing=tc.label_smoothing)

        return run_chunk

    rates = measure_interleaved({"plain": make_step("plain"), "modelyard": make_step("modelyard")}, chunks,
                                chunk * batch, sync)
    return rates, mode, why, chunk * chunks, batch


def bench_text_family(family: str, texts: list[str], text_labels, dev, precision_mode: str, chunks: int | None,
                      batch: int | None, sync):
    from modelyard.modalities.text import TextPolicy
    from modelyard.modalities.text.preprocess import TextBatches

    recipe, chunk, default_chunks, default_batch = TEXT_FAMILIES[family]
    chunks, batch = chunks or default_chunks, batch or default_batch
    cfg = load_config("params.yaml", {"recipe": recipe})
    fam, tc = family_config(cfg.model), cfg.train
    pre = get_modality("text").fit_preprocessor(fam.preprocessing(), {}, get_dataset(cfg.data.dataset).schema)
    ids_np, lengths_np, _ = pre.tokenize(texts)
    ids, lengths = torch.from_numpy(ids_np).to(dev), torch.from_numpy(lengths_np).to(dev)
    labels = torch.from_numpy(text_labels).to(dev)
    mode, why = resolve_precision(precision_mode, dev)
    precision = Precision(device=dev, mode=mode)
    spec_args = fam.builder_args(pre.model_input(), 2)
    clip = tc.grad_clip_norm

    def make_step(kind: str):
        torch.manual_seed(0)
        model = build_model(fam.name, **spec_args)
        # plain Transformers: the Hugging Face model itself, called as its users call it
        plain_model = model.model if family == "bert" else model
        plain_model.to(dev).train()
        groups = fam.param_groups(model)
        opt = loop.build_optimizer(groups, tc.learning_rate, tc.momentum, tc.weight_decay, tc.optimizer)
        gen = torch.Generator(device=dev).manual_seed(0)
        batches = loop.ResidentBatches({"ids": ids, "lengths": lengths, "labels": labels},
                                       TextBatches(pre, TextPolicy()))

        def run_chunk() -> None:
            rows = torch.randint(0, len(labels), (chunk * batch,), generator=gen, device=dev)
            if kind == "plain":
                for start in range(0, len(rows), batch):
                    idx = rows[start:start + batch]
                    longest = int(lengths[idx].max())
                    input_ids = ids[idx, :longest].long()
                    mask = (torch.arange(longest, device=dev)[None, :] < lengths[idx, None]).long()
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                        out = plain_model(input_ids=input_ids, attention_mask=mask)
                        loss = F.cross_entropy(getattr(out, "logits", out), labels[idx])
                    loss.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                # the very batches the plain side takes (a text step's cost follows its longest text): the
                # adapter's unshuffled iteration, which differs from its training one only in the shuffle
                loop.train_epoch(model, batches.eval(rows, batch), optimizer=opt, scheduler=None,
                                 precision=precision, label_smoothing=tc.label_smoothing, clip_norm=clip)

        return run_chunk

    rates = measure_interleaved({"plain": make_step("plain"), "modelyard": make_step("modelyard")}, chunks,
                                chunk * batch, sync)
    return rates, mode, why, chunk * chunks, batch


def dataset_dir(recipe: str, data_dir: str):
    """The recipe's dataset under `data_dir` (raw downloads in `<data_dir>/raw`), fetched when missing."""
    cfg = load_config("params.yaml", {"recipe": recipe, "paths": {"data_dir": data_dir}})
    paths = TaskPaths.of(cfg)
    return fetch_dataset(cfg.data, paths.dataset_dir, paths.raw_dir, local_dir=cfg.paths.local_source_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=[*FAMILIES, *TEXT_FAMILIES],
                        default=[*FAMILIES, *TEXT_FAMILIES])
    parser.add_argument("--chunks", type=int, default=None, help="timed chunks of steps per kind (default: per family)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: per family)")
    parser.add_argument("--precision", choices=["auto", "bf16", "none"], default="auto",
                        help="auto: what training would pick here (bf16 only where native)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda (data resident there, as in training)")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configure_environment()  # the project's process settings (telemetry off, Ray's metrics collection off)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"{where}; samples/s, median step, plain PyTorch vs modelyard alternating")
    images = labels = sentences = None
    for family in args.family:
        if family in TEXT_FAMILIES:
            if sentences is None:
                sentences = load_split(dataset_dir(TEXT_FAMILIES[family][0], args.data_dir), "train")
            rates, mode, why, steps, batch = bench_text_family(family, sentences.texts, sentences.labels, dev,
                                                               args.precision, args.chunks, args.batch, sync)
        else:
            if images is None:
                train = load_split(dataset_dir(FAMILIES[family][0], args.data_dir), "train")
                images, labels = torch.from_numpy(train.images).to(dev), torch.from_numpy(train.labels).to(dev)
            rates, mode, why, steps, batch = bench_family(family, images, labels, dev, args.precision, args.chunks,
                                                          args.batch, sync)
        plain, ours = rates["plain"], rates["modelyard"]
        print(f"  {family:<12} batch={batch:<4} steps={steps:<4} precision={mode:<5} plain {plain:8.0f}  "
              f"modelyard {ours:8.0f}  ratio {rates['paired']:.3f}", flush=True)


if __name__ == "__main__":
    main()
