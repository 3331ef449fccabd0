"""Slide decoding runs in a child process: crashes, memory and time limits end that job only, in one line."""

from __future__ import annotations

import hashlib
import time

import pytest

from mosare.errors import InputError
from mosare.app.sandbox import GIB, Limits, run_isolated
from tests.conftest import require_data
from tests import sandbox_jobs as jobs


def test_result_and_progress_come_back():
    seen = []
    assert run_isolated(jobs.add, 2, 3, what="job", on_progress=lambda *v: seen.append(v)) == 5
    assert seen == [(2, 3)]


def test_a_native_crash_kills_only_the_job():
    with pytest.raises(InputError, match=r"^x\.svs: the slide decoder crashed \(SIGSEGV\)"):
        run_isolated(jobs.crash, what="x.svs")
    assert run_isolated(jobs.add, 1, 1, what="next") == 2  # this process is fine


def test_memory_limit():
    with pytest.raises(InputError, match="memory"):
        run_isolated(jobs.hog, 3.0, what="big.svs", limits=Limits(memory_bytes=GIB // 2, seconds=60))


def test_time_limit():
    start = time.monotonic()
    with pytest.raises(InputError, match=r"slow\.svs: stopped after 2 s \(time limit\)"):
        run_isolated(jobs.sleep, 30, what="slow.svs", limits=Limits(seconds=2))
    assert time.monotonic() - start < 15


def test_an_exception_is_one_line():
    with pytest.raises(InputError) as info:
        run_isolated(jobs.fail, what="a.tiff")
    assert str(info.value).startswith("a.tiff: ValueError") and "\n" not in str(info.value)


def test_real_slides_decode_in_isolation_and_originals_are_untouched(tmp_path):
    from mosare.app.workbench import slide_features

    good = require_data("slides/cmu-1-small-region.svs")
    before = hashlib.sha256(good.read_bytes()).hexdigest()
    art = slide_features(good, "handcrafted", tmp_path)
    assert art.features.is_file() and art.thumbnail.is_file() and 1 < art.downsample < 3
    assert hashlib.sha256(good.read_bytes()).hexdigest() == before
    assert not list((tmp_path / "slides").rglob(".tmp-*"))
    for name, fragment in [("broken.svs", "broken.svs"), ("unopenable.tiff", "unopenable.tiff"),
                           ("unreadable.svs", "unreadable.svs")]:
        with pytest.raises(InputError) as info:
            slide_features(require_data(f"slides/{name}"), "handcrafted", tmp_path)
        assert str(info.value).startswith(fragment) and "\n" not in str(info.value)
