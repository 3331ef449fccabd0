"""The server slide folder: listing and confinement (the Case page offers only what lies inside it)."""

from __future__ import annotations

import pytest

from mosare.app.workbench import confined_slide, server_slides
from mosare.errors import InputError


def test_server_slides_are_listed_relative_and_confined(tmp_path):
    root = tmp_path / "slides"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.svs").write_bytes(b"0")
    (root / "notes.txt").write_text("no")
    (tmp_path / "secret.svs").write_bytes(b"0")
    (root / "link.svs").symlink_to(tmp_path / "secret.svs")
    assert server_slides(root, ("svs",)) == ["a/x.svs", "link.svs"] and server_slides(None, ("svs",)) == []
    assert confined_slide(root, "a/x.svs") == (root / "a" / "x.svs").resolve()
    for name in ("../secret.svs", str(tmp_path / "secret.svs"), "link.svs"):
        with pytest.raises(InputError, match="outside the configured slide folder"):
            confined_slide(root, name)
