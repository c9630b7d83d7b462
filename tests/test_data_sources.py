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


def test_a_symlink_loop_under_a_glob_lists_each_file_once(tmp_path):
    """Python's ``**`` re-enters a loop until the OS refuses: one file, dozens of clip ids."""
    make_tree(tmp_path)
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "alias.mp4").symlink_to(tmp_path / "a" / "one.mp4")
    found = expand_input(str(tmp_path / "**" / "*.mp4"))
    assert found == [str(tmp_path / "a" / "one.mp4")]
    assert [Path(p).name for p in expand_input(str(tmp_path / "**" / "*"))] == ["one.mp4", "two.mpg"]
    assert [Path(p).name for p in expand_input(str(tmp_path))] == ["one.mp4", "two.mpg"]  # folder mode too


def test_folder_mode_skips_hidden_folders_below_the_input_only(tmp_path):
    root = tmp_path / ".videos" / "set"  # the input itself may live in a hidden folder
    make_tree(root)
    (root / ".cache").mkdir()
    (root / ".cache" / "copy.mp4").write_bytes(b"c")
    (root / "a" / ".thumbs").mkdir()
    (root / "a" / ".thumbs" / "t.jpg").write_bytes(b"t")
    assert [Path(p).name for p in expand_input(str(root))] == ["one.mp4", "two.mpg"]


def test_one_unreadable_list_entry_is_reported_and_the_rest_kept(tmp_path):
    from discohead.data.sources import Unreadable, list_sources

    make_tree(tmp_path)
    listing = tmp_path / "inputs.txt"
    listing.write_text("a/one.mp4\nnosuch://bucket/clip.mp4\ntwo.mpg\n")
    assert [Path(p).name for p in expand_input(str(listing))] == ["one.mp4", "two.mpg"]
    found, problems = list_sources(str(listing))
    assert [Path(p).name for p in found] == ["one.mp4", "two.mpg"]
    assert problems == [Unreadable("nosuch://bucket/clip.mp4", "unreadable_input", problems[0].detail)]
    assert "nosuch" in problems[0].detail and "\n" not in problems[0].detail


def test_s3_prefix_glob_and_fetch(s3_server, tmp_path):
    fs = s3_server.filesystem()
    fs.mkdir("sources-test")
    fs.pipe(
        {"sources-test/raw/x/one.mp4": b"1", "sources-test/raw/two.mp4": b"2", "sources-test/raw/.tmp/three.mp4": b"3"}
    )
    options = s3_server.storage_options
    assert expand_input("s3://sources-test/raw", options) == [
        "s3://sources-test/raw/two.mp4",
        "s3://sources-test/raw/x/one.mp4",
    ]
    assert expand_input("s3://sources-test/raw/*.mp4", options) == ["s3://sources-test/raw/two.mp4"]
    local = fetch_to_local("s3://sources-test/raw/two.mp4", str(tmp_path), options)
    assert Path(local).read_bytes() == b"2"
