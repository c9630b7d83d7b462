"""Expanding --input values: folders, globs, list files, single files, s3 prefixes."""

from __future__ import annotations

from pathlib import Path

from discohead.data.sources import expand_input, fetch_to_local


def make_tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.mp4").write_bytes(b"1")
    (root / "a" / ".hidden.mp4").write_bytes(b"h")
    (root / "two.mpg").write_bytes(b"2")


def test_folder_is_recursive_and_skips_hidden(tmp_path):
    make_tree(tmp_path)
    assert [Path(p).name for p in expand_input(str(tmp_path))] == ["one.mp4", "two.mpg"]


def test_glob_and_single_file(tmp_path):
    make_tree(tmp_path)
    assert [Path(p).name for p in expand_input(str(tmp_path / "**" / "*.mp4"))] == ["one.mp4"]
    assert expand_input(str(tmp_path / "two.mpg")) == [str((tmp_path / "two.mpg").resolve())]
    assert expand_input(str(tmp_path / "missing.mp4")) == []


def test_list_file_relative_entries_and_missing_ones_kept(tmp_path):
    make_tree(tmp_path)
    listing = tmp_path / "inputs.txt"
    listing.write_text("# clips\na/one.mp4\n\nmissing.mp4\n")
    found = expand_input(str(listing))
    assert [Path(p).name for p in found] == ["one.mp4", "missing.mp4"]


def test_s3_prefix_glob_and_fetch(s3_server, tmp_path):
    fs = s3_server.filesystem()
    fs.mkdir("sources-test")
    fs.pipe({"sources-test/raw/x/one.mp4": b"1", "sources-test/raw/two.mp4": b"2"})
    options = s3_server.storage_options
    assert expand_input("s3://sources-test/raw", options) == [
        "s3://sources-test/raw/two.mp4",
        "s3://sources-test/raw/x/one.mp4",
    ]
    assert expand_input("s3://sources-test/raw/*.mp4", options) == ["s3://sources-test/raw/two.mp4"]
    local = fetch_to_local("s3://sources-test/raw/two.mp4", str(tmp_path), options)
    assert Path(local).read_bytes() == b"2"
