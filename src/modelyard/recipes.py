"""Named recipes: a dataset, a model family and the training settings that suit them, in one word.

    modelyard pipeline --recipe fashion-mlp          # or -S recipe=fashion-mlp
    dvc exp run -S recipe=fashion-transfer
    Prefect form: the `recipe` field of training-pipeline

A recipe is applied over params.yaml, and per-run overrides over the recipe; what a recipe leaves out keeps
its default. The README's recipe table has what each one reached, and in how long.
"""

from __future__ import annotations

from typing import Any

_NO_AUGMENT = {"augment": {"crop_padding": 0, "hflip_prob": 0.0, "erasing_prob": 0.0}}
# Fine-tuning a pretrained Transformer (and training a small RNN): AdamW, a short warm-up, linear decay.
_FINE_TUNE = {"optimizer": "adamw", "weight_decay": 0.01, "schedule": "linear", "warmup_epochs": 0.1,
              "grad_clip_norm": 1.0, "label_smoothing": 0.0, "channels_last": False}

RECIPES: dict[str, dict[str, Any]] = {
    "fashion-cnn": {
        "description": "Fashion-MNIST, 5-layer batch-norm CNN from scratch, SGD + cosine (the default)",
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "cnn"},
    },
    # The settings of the search that lifted it from 88.38% to 90.84% (README: Hyper-parameter search), rounded.
    "fashion-mlp": {
        "description": "Fashion-MNIST, raw-PyTorch MLP (2 x 512) over pixels: the baseline",
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "mlp", "hidden": 512, "depth": 2, "dropout": 0.0169},
        "prepare": {"augment": {"crop_padding": 0, "hflip_prob": 0.0355, "erasing_prob": 0.0}},
        "train": {"epochs": 24, "batch_size": 64, "learning_rate": 0.0641, "weight_decay": 1.61e-5,
                  "channels_last": False},
    },
    "fashion-gpu": {
        "description": "Fashion-MNIST on one GPU: torchvision ResNet-18 (CIFAR stem) from scratch, batch 512, "
                       "30 epochs",
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "resnet18", "stem": "cifar"},
        "train": {"epochs": 30, "batch_size": 512, "learning_rate": 0.2, "warmup_epochs": 2, "use_gpu": "true"},
    },
    "fashion-vit": {
        "description": "Fashion-MNIST, a Vision Transformer from scratch: 7x7-pixel patches, 6 pre-norm "
                       "self-attention blocks of width 128, AdamW + cosine",
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "vit", "patch_size": 7, "dim": 128, "depth": 6, "heads": 4},
        "train": {"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.05, "epochs": 10,
                  "warmup_epochs": 1, "grad_clip_norm": 1.0, "channels_last": False},
    },
    "mnist-cnn": {
        "description": "MNIST digits, the batch-norm CNN from scratch (crop and erasing, no flips: a flipped "
                       "digit is another glyph)",
        "data": {"dataset": "mnist"},
        "model": {"name": "cnn"},
    },
    "cifar10-resnet18": {
        "description": "CIFAR-10, torchvision ResNet-18 with a CIFAR stem from scratch, crop + flip, SGD + cosine",
        "data": {"dataset": "cifar10"},
        "model": {"name": "resnet18", "stem": "cifar"},
        "train": {"epochs": 30, "batch_size": 256, "learning_rate": 0.1, "weight_decay": 5e-4, "warmup_epochs": 1},
    },
    "fashion-transfer": {
        "description": "Fashion-MNIST, EfficientNet-Lite0 (ImageNet) frozen as a feature extractor at 64 px; "
                       "features cached, only the head trains",
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "transfer", "backbone": "efficientnet_lite0", "mode": "feature_extraction",
                  "image_size": 64},
        "prepare": _NO_AUGMENT,  # nothing upstream is augmented, so the backbone's features are computed once
        "train": {"optimizer": "adamw", "learning_rate": 0.003, "weight_decay": 1e-4, "epochs": 20,
                  "batch_size": 256, "warmup_epochs": 0, "label_smoothing": 0.0, "channels_last": False},
    },
    "fashion-transfer-finetune": {
        "description": "Fashion-MNIST, EfficientNet-Lite0 (ImageNet) fine-tuned end to end at 64 px, backbone at "
                       "a quarter of the head's learning rate",
        "data": {"dataset": "fashion_mnist"},
        "model": {"name": "transfer", "backbone": "efficientnet_lite0", "mode": "fine_tuning", "image_size": 64,
                  "backbone_lr_scale": 0.25},
        "prepare": {"augment": {"crop_padding": 2, "hflip_prob": 0.5, "erasing_prob": 0.0}},
        "train": {"optimizer": "adamw", "learning_rate": 0.002, "weight_decay": 0.01, "epochs": 5,
                  "batch_size": 128, "warmup_epochs": 0.5, "grad_clip_norm": 1.0, "label_smoothing": 0.1},
    },
    "rt-bert": {
        "description": "Rotten Tomatoes polarity, all-MiniLM-L6-v2 (BERT, 22.7M) fine-tuned with Transformers: "
                       "AdamW, warm-up + linear decay, clipping",
        "data": {"dataset": "rt_polarity"},
        "model": {"name": "bert", "pretrained": "all-MiniLM-L6-v2", "max_length": 64},
        "train": _FINE_TUNE | {"epochs": 3, "batch_size": 32, "learning_rate": 1e-4},
    },
    # The settings of the search that lifted it from 76.04% to 81.63% (README: Hyper-parameter search), rounded:
    # a GRU whose embedding starts from the tokenizer's own model's token embeddings.
    "rt-lstm": {
        "description": "Rotten Tomatoes polarity, a bidirectional GRU over the same tokenizer's ids, its embedding "
                       "started from all-MiniLM-L6-v2's token embeddings: the baseline",
        "data": {"dataset": "rt_polarity"},
        "model": {"name": "lstm", "max_length": 64, "cell": "gru", "embedding_init": "pretrained", "hidden": 64,
                  "dropout": 0.341},
        "prepare": {"augment": {"token_delete_prob": 0.0472}},
        "train": _FINE_TUNE | {"epochs": 3, "batch_size": 64, "learning_rate": 7.31e-4, "weight_decay": 7.88e-3},
        # The family's space, plus the cell, the embedding's start (from scratch, or the tokenizer's own model's
        # token embeddings) and token dropping.
        "search": {
            "train.learning_rate": {"loguniform": [5e-4, 5e-3]},
            "train.weight_decay": {"loguniform": [1e-4, 0.1]},
            "train.batch_size": {"choice": [32, 64, 128]},
            "train.epochs": {"int": [3, 10]},
            "model.cell": {"choice": ["lstm", "gru"]},
            "model.embedding_init": {"choice": ["random", "pretrained"]},
            "model.embedding_dim": {"choice": [128, 256]},
            "model.hidden": {"choice": [64, 128, 256]},
            "model.dropout": {"uniform": [0.2, 0.6]},
            "prepare.augment.token_delete_prob": {"uniform": [0.0, 0.15]},
        },
    },
    "bbc-bert": {
        "description": "BBC News topics, all-MiniLM-L6-v2 fine-tuned on each article's first 256 tokens",
        "data": {"dataset": "bbc_news"},
        "model": {"name": "bert", "pretrained": "all-MiniLM-L6-v2", "max_length": 256},
        "train": _FINE_TUNE | {"epochs": 3, "batch_size": 16, "learning_rate": 1e-4},
    },
    "vowels-lstm": {
        "description": "JapaneseVowels (UEA): which of 9 speakers, from 12 LPC coefficients a frame; a "
                       "bidirectional LSTM over the frames, jitter, scaling and time warp",
        "data": {"dataset": "japanese_vowels"},
        "model": {"name": "lstm", "embedding_dim": 64, "hidden": 64, "dropout": 0.2},
        "train": _FINE_TUNE | {"epochs": 60, "batch_size": 32, "learning_rate": 3e-3, "warmup_epochs": 2,
                               "label_smoothing": 0.1},
    },
    "vowels-fcn": {
        "description": "JapaneseVowels (UEA): which of 9 speakers; a fully convolutional network over time "
                       "(1-D convolutions, global average pooling), jitter, scaling and time warp",
        "data": {"dataset": "japanese_vowels"},
        "model": {"name": "fcn"},
        "train": _FINE_TUNE | {"epochs": 60, "batch_size": 32, "learning_rate": 3e-3, "warmup_epochs": 2,
                               "label_smoothing": 0.1},
    },
}
RECIPE_NAMES = tuple(RECIPES)


NOT_SECTIONS = ("description", "search")  # what a recipe says of itself, not settings of its run


def recipe_overrides(name: str) -> dict[str, Any]:
    """The sections a recipe sets (its description and search space left out)."""
    return {k: v for k, v in _recipe(name).items() if k not in NOT_SECTIONS}


def recipe_search_space(name: str) -> dict[str, Any]:
    """The search space a recipe names for `modelyard tune` (modelyard.tuning.space); {} when it names none,
    and its family's is used."""
    return dict(_recipe(name).get("search", {}))


def _recipe(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPE_NAMES)}")
    return RECIPES[name]
