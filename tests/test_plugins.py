"""modelyard.plugins: registries list their members from the package directory, without importing them, and
an unknown name is an error that lists the known ones."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from helpers.paths import REPO
from modelyard.plugins import UnknownNameError, load_member, member_names


def test_member_names_imports_no_member():
    """In a fresh interpreter (this one has imported members already): listing the datasets, families and
    modalities imports none of them, nor torch."""
    code = textwrap.dedent("""
        import json, sys
        from modelyard.plugins import member_names
        packages = ("modelyard.data.datasets", "modelyard.models", "modelyard.modalities")
        names = {p: member_names(p) for p in packages}
        modules = [f"{p}.{n}" for p, members in names.items() for n in members]
        imported = sorted(m for m in modules if m in sys.modules)
        print(json.dumps({"names": names, "imported": imported, "torch": "torch" in sys.modules,
                          "cifar10": "modelyard.data.datasets.cifar10" in sys.modules}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         check=True)
    import json

    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert "cifar10" in doc["names"]["modelyard.data.datasets"]  # listed...
    assert doc["cifar10"] is False  # ...but not imported
    assert doc["imported"] == [] and doc["torch"] is False
    assert {"cnn", "bert"} <= set(doc["names"]["modelyard.models"])
    assert {"image", "text"} <= set(doc["names"]["modelyard.modalities"])


def test_members_are_the_public_modules_sorted():
    names = member_names("modelyard.data.datasets")
    assert list(names) == sorted(names)
    assert {"bbc_news", "cifar10", "fashion_mnist", "rt_polarity"} <= set(names)
    assert "_sources" not in names  # private helpers are not members
    assert not {"_http", "_samples"} & set(member_names("modelyard.modalities"))


@pytest.mark.parametrize("package", ["modelyard.config", "modelyard.no_such_package"])
def test_a_module_that_is_not_a_package_is_refused(package):
    with pytest.raises(ValueError, match=f"{package} is not a package"):
        member_names(package)


def test_load_member_imports_the_module_it_names():
    module = load_member("modelyard.data.datasets", "fashion_mnist", kind="dataset")
    assert module is importlib.import_module("modelyard.data.datasets.fashion_mnist")
    assert module.SPEC.name == "fashion_mnist"


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as exc:
        load_member("modelyard.data.datasets", "imagenet", kind="dataset")
    known = ", ".join(member_names("modelyard.data.datasets"))
    assert str(exc.value) == f"unknown dataset 'imagenet'; available: {known}"  # a sentence, not a quoted key
    assert isinstance(exc.value, KeyError)
    with pytest.raises(UnknownNameError, match="unknown dataset '_sources'"):  # a private module is no member
        load_member("modelyard.data.datasets", "_sources", kind="dataset")


def test_the_registries_answer_with_the_same_error():
    from modelyard.data.datasets import get_dataset
    from modelyard.modalities import get_modality
    from modelyard.models import build_model, config_class

    with pytest.raises(UnknownNameError, match=r"unknown modality 'audio'; available: .*image.*text"):
        get_modality("audio")
    with pytest.raises(UnknownNameError, match=r"unknown model family 'gpt'; available: bert, cnn"):
        config_class("gpt")
    with pytest.raises(UnknownNameError, match="unknown model family 'gpt'"):
        build_model("gpt")
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenet'; available: bbc_news"):
        get_dataset("imagenet")
