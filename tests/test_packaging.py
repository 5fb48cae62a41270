"""The wheel holds every package of the tree under ``surgegate``, and nothing is listed by hand."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _packages_in_the_tree() -> set[str]:
    """Package folders as the wheel must name them: surgegate's own, and each top-level folder of the design
    card (a folder with an ``__init__.py``) as a sub-package of surgegate, read from the real folders, not the
    links that install them."""
    expected = set()
    for init in ROOT.glob("*/**/__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if any(p.startswith(".") or p == "build" for p in parts):
            continue
        if parts[0] == "surgegate":
            if (ROOT / "surgegate" / parts[1]).is_symlink() if len(parts) > 1 else False:
                continue  # a link to a card folder: counted from the folder itself
            expected.add("/".join(parts))
        else:
            expected.add("/".join(("surgegate", *parts)))
    return expected


def test_every_card_folder_is_linked_into_the_package():
    card = sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name != "surgegate")
    assert card, "no card folders found"
    for name in card:
        link = ROOT / "surgegate" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), \
            f"surgegate/{name} must link ../{name}, or {name}/ is missing from the installed package"


def test_the_wheel_holds_every_package_folder_and_its_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("surgegate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
    assert _packages_in_the_tree() - in_wheel == set(), "package folders missing from the wheel"
    assert in_wheel - _packages_in_the_tree() == set(), "packages in the wheel the tree does not have"
    data = {p.name for p in (ROOT / "schemas").glob("*.schema.json")} | {"dashboard.html"}
    assert data <= {name.rsplit("/", 1)[-1] for name in names}, "package data missing from the wheel"
