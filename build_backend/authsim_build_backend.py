"""setuptools' build backend, with its work files kept out of the source tree.

setuptools writes `build/` and `authsim.egg-info/` into the folder it builds from, so a plain
`pip install .` would leave both behind in the checkout. Every non-editable hook here runs setuptools'
own with those two pointed into a fresh private folder (`tempfile.mkdtemp`: 0700, a random name),
removed afterwards; distutils reads the setting from the extra setup.cfg named by `DIST_EXTRA_CONFIG`.
`pip install -e .` keeps setuptools' behaviour (its `authsim.egg-info/` is in .gitignore).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401  (the editable hooks, unchanged)
    build_editable,
    get_requires_for_build_editable,
    prepare_metadata_for_build_editable,
)

T = TypeVar("T")


@contextmanager
def _private_build_dirs() -> Iterator[None]:
    work = Path(tempfile.mkdtemp(prefix="authsim-build-"))
    config = work / "setup.cfg"
    config.write_text(f"[build]\nbuild_base = {work / 'build'}\n\n[egg_info]\negg_base = {work}\n")
    before = os.environ.get("DIST_EXTRA_CONFIG")
    os.environ["DIST_EXTRA_CONFIG"] = str(config)
    try:
        yield
    finally:
        if before is None:
            del os.environ["DIST_EXTRA_CONFIG"]
        else:
            os.environ["DIST_EXTRA_CONFIG"] = before
        shutil.rmtree(work, ignore_errors=True)


def _outside_the_tree(hook: Callable[..., T]) -> Callable[..., T]:
    def run(*args: Any, **kwargs: Any) -> T:
        with _private_build_dirs():
            return hook(*args, **kwargs)

    run.__name__ = hook.__name__
    return run


get_requires_for_build_wheel = _outside_the_tree(build_meta.get_requires_for_build_wheel)
prepare_metadata_for_build_wheel = _outside_the_tree(build_meta.prepare_metadata_for_build_wheel)
build_wheel = _outside_the_tree(build_meta.build_wheel)
get_requires_for_build_sdist = _outside_the_tree(build_meta.get_requires_for_build_sdist)
build_sdist = _outside_the_tree(build_meta.build_sdist)
