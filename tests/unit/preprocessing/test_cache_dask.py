"""The Dask options of build_cache (no cluster is started here: the cluster runs are in
tests/integration/test_preprocess_dask.py), and the input-ordered cache files that make Dask, pool and resumed
builds equal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ichd.errors import DependencyError, InputError
from ichd.preprocessing.cache import build_cache
from ichd.preprocessing.config import PreprocessConfig
from ichd.preprocessing.dask_backend import resolve_target
from ichd.testing.factories import write_ctich_tree

CFG = PreprocessConfig(image_size=16)


def test_resolve_target() -> None:
    assert resolve_target(None, None, 3) is None  # the process pool stays the default
    assert resolve_target("local", None, 3) == ("local", 3)
    assert resolve_target(" LOCAL ", 2, 3) == ("local", 2)
    assert resolve_target(None, 2, None) == ("local", 2)
    assert resolve_target("local", None, None)[1] >= 1
    assert resolve_target("tcp://10.0.0.1:8786", None, 4) == ("tcp://10.0.0.1:8786", 0)
    with pytest.raises(InputError, match="cannot be combined"):
        resolve_target("tcp://10.0.0.1:8786", 2, None)
    with pytest.raises(InputError, match="at least 1"):
        resolve_target(None, 0, None)


def test_options_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    root = write_ctich_tree(tmp_path / "ctich", {49: 2}, size=24)
    with pytest.raises(InputError):
        build_cache([root], tmp_path / "cache", CFG, scheduler="tcp://10.0.0.1:8786", dask_workers=2)
    assert not (tmp_path / "cache").exists()


def test_missing_distributed_is_a_dependency_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_ctich_tree(tmp_path / "ctich", {49: 2}, size=24)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(DependencyError, match=r"ichd\[dask\]"):
        build_cache([root], tmp_path / "cache", CFG, dask_workers=1)
    # nothing was recorded: a later run does the unit
    assert build_cache([root], tmp_path / "cache", CFG, workers=0).written == 1


def test_nothing_to_do_starts_no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_ctich_tree(tmp_path / "ctich", {49: 2}, size=24)
    build_cache([root], tmp_path / "cache", CFG, workers=0)
    monkeypatch.setitem(sys.modules, "distributed", None)
    summary = build_cache([root], tmp_path / "cache", CFG, scheduler="tcp://10.0.0.1:8786")
    assert (summary.written, summary.skipped_inputs) == (0, 1)


def test_cache_files_follow_input_order_not_completion_or_resume_order(tmp_path: Path) -> None:
    root = write_ctich_tree(tmp_path / "ctich", {49: 2, 50: 3, 51: 2}, size=24)
    fresh = tmp_path / "fresh"
    build_cache([root], fresh, CFG, workers=0)
    resumed = tmp_path / "resumed"
    build_cache([root], resumed, CFG, workers=0, patients=[51])
    build_cache([root], resumed, CFG, workers=0, patients=[50])
    build_cache([root], resumed, CFG, workers=0)
    for name in ("manifest.json", "slices.csv"):
        assert (resumed / name).read_bytes() == (fresh / name).read_bytes(), name


def test_workers_that_cannot_see_the_cache_folder_are_an_input_error(tmp_path: Path) -> None:
    from ichd.preprocessing.dask_backend import _check_workers_see

    class FakeClient:
        def __init__(self, seen: dict[str, bool]) -> None:
            self.seen = seen

        def run(self, fn: Callable[[str], bool], folder: str) -> dict[str, bool]:  # the one call made
            assert fn(folder) is True  # the check itself is os.path.isdir
            return self.seen

    _check_workers_see(FakeClient({"tcp://a:1": True, "tcp://b:1": True}), str(tmp_path))
    with pytest.raises(InputError, match="1 of 2 Dask worker"):
        _check_workers_see(FakeClient({"tcp://a:1": True, "tcp://b:1": False}), str(tmp_path))


def test_each_task_carries_only_the_cached_ids_it_could_produce() -> None:
    from ichd.preprocessing.cache import CacheInput
    from ichd.preprocessing.dask_backend import _skip_for

    known = frozenset({"1.2.3", "ctich-049", "ID_abc"})
    assert _skip_for(CacheInput("dicom", "/d", series="1.2/1.2.3"), known) == {"1.2.3"}
    assert _skip_for(CacheInput("dicom", "/d", series="1.2/1.2.4"), known) == set()
    assert _skip_for(CacheInput("ctich", "/c", 49), known) == {"ctich-049"}
    assert _skip_for(CacheInput("ctich", "/c", 50), known) == set()
    assert _skip_for(CacheInput("path", "/p.nii.gz"), known) == known  # unknown until read: all of them
