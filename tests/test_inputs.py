import os

import fsspec
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

from corpus.inputs import InputFile, expand_inputs, find_inputs, fixed_prefix

EXTENSIONS = (".tar", ".jsonl")


def touch(root, *names):
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")


@pytest.fixture
def tree(tmp_path):
    touch(tmp_path, "data/b.tar", "data/a.JSONL", "data/deep/c.tar", "data/notes.txt",
          "data/.hidden.tar", "other/b.tar")
    return tmp_path


def relatives(files: list[InputFile]) -> list[str]:
    return [f.relative for f in files]


def test_folder_is_searched_recursively_for_the_extensions(tree):
    files = expand_inputs([str(tree / "data")], EXTENSIONS)
    assert relatives(files) == ["a.JSONL", "b.tar", "deep/c.tar"]  # any case; no .txt, no dotfile
    assert files[2] == InputFile(str(tree / "data" / "deep" / "c.tar"), "deep/c.tar",
                                 str(tree / "data"))
    assert relatives(expand_inputs([str(tree / "data") + "/"], EXTENSIONS)) == relatives(files)


def test_glob_keys_are_below_its_fixed_part(tree):
    assert relatives(expand_inputs([str(tree / "data" / "*.tar")], EXTENSIONS)) == ["b.tar"]
    assert relatives(expand_inputs([str(tree / "data" / "**" / "*.tar")], EXTENSIONS)) == [
        "b.tar", "deep/c.tar"]
    assert relatives(expand_inputs([str(tree / "da*" / "*.tar")], EXTENSIONS)) == [
        "data/b.tar"]
    # the glob filters by extension too
    assert relatives(expand_inputs([str(tree / "data" / "*")], EXTENSIONS)) == [
        "a.JSONL", "b.tar"]


def test_named_file_gets_its_base_name_whatever_its_extension(tree):
    [notes] = expand_inputs([str(tree / "data" / "notes.txt")], EXTENSIONS)
    assert (notes.relative, notes.root) == ("notes.txt", str(tree / "data"))
    touch(tree, "odd/[1].tar")  # glob characters in a real file name
    assert relatives(expand_inputs([str(tree / "odd" / "[1].tar")], EXTENSIONS)) == ["[1].tar"]


def test_relative_patterns_give_absolute_paths_and_the_same_keys(tree, monkeypatch):
    monkeypatch.chdir(tree)
    files = expand_inputs(["data/deep", "./data/*.tar"], EXTENSIONS)
    assert [(f.path, f.relative) for f in files] == [
        (str(tree / "data" / "b.tar"), "b.tar"), (str(tree / "data" / "deep" / "c.tar"), "c.tar")]


def test_a_file_named_twice_is_listed_once_with_its_first_key(tree):
    files = expand_inputs([str(tree / "data"), str(tree / "data" / "deep" / "*.tar"),
                           str(tree / "data" / "b.tar")], EXTENSIONS)
    assert relatives(files) == ["a.JSONL", "b.tar", "deep/c.tar"]


def test_output_is_sorted_by_key_not_by_pattern_order(tree):
    files = expand_inputs([str(tree / "data" / "deep"), str(tree / "data" / "a.JSONL")],
                          EXTENSIONS)
    assert relatives(files) == ["a.JSONL", "c.tar"]


def test_two_files_with_one_key_are_refused(tree):
    with pytest.raises(ValueError, match="both have the key 'b.tar'"):
        expand_inputs([str(tree / "data" / "b.tar"), str(tree / "other")], EXTENSIONS)


def test_a_pattern_matching_nothing_is_named(tree):
    touch(tree, "texts/only.txt")  # a folder without a file of the extensions
    for pattern in (str(tree / "none*.tar"), str(tree / "missing.tar"), str(tree / "texts")):
        with pytest.raises(FileNotFoundError, match="no input matched") as error:
            expand_inputs([str(tree / "data"), pattern], EXTENSIONS)
        assert repr(pattern) in str(error.value)


def unread(patterns: list[str]) -> list[str]:
    return [f.relative for f in find_inputs(patterns, EXTENSIONS, "corpus test").unread]


def test_files_not_read_below_folders_and_globs_are_listed(tree):
    found = find_inputs([str(tree / "data")], EXTENSIONS, "corpus test")
    assert relatives(found.files) == ["a.JSONL", "b.tar", "deep/c.tar"]
    [notes] = found.unread  # the dotfile stays skipped
    assert (notes.uri, notes.relative) == (str(tree / "data" / "notes.txt"), "notes.txt")
    assert notes.detail == "extension .txt is not read by corpus test (it reads .tar, .jsonl " \
                           "files)"
    assert unread([str(tree / "data" / "*")]) == ["notes.txt"]
    assert unread([str(tree / "data" / "*.tar")]) == []  # a glob finds only what it matches
    # named on its own, or by another pattern, a file is read whatever its extension
    assert unread([str(tree / "data"), str(tree / "data" / "notes.txt")]) == []
    assert find_inputs([str(tree / "data")], EXTENSIONS, "corpus test",
                       companions=(".TXT",)).unread == []


def test_a_folder_of_only_other_files_names_them(tree):
    touch(tree, "texts/only.txt")
    with pytest.raises(FileNotFoundError, match="found only 1 other file\\(s\\): only.txt"):
        expand_inputs([str(tree / "texts")], EXTENSIONS)


def test_uris_of_fsspec_filesystems():
    fs = fsspec.filesystem("memory")
    for name in ("set/x.tar", "set/sub/y.tar", "set/skip.txt", "set/.cache/z.tar"):
        fs.pipe(f"/inputs-test/{name}", b"x")
    try:
        folder = expand_inputs(["memory://inputs-test/set"], EXTENSIONS)
        assert relatives(folder) == ["sub/y.tar", "x.tar"]
        assert unread(["memory://inputs-test/set"]) == ["skip.txt"]
        with fsspec.open(folder[1].path, "rb") as f:  # the path opens as given
            assert f.read() == b"x"
        assert relatives(expand_inputs(["memory://inputs-test/set/*.tar"], EXTENSIONS)) == [
            "x.tar"]
        assert relatives(expand_inputs(["memory://inputs-test/set/skip.txt"], EXTENSIONS)) == [
            "skip.txt"]
        with pytest.raises(FileNotFoundError, match="inputs-test/none"):
            expand_inputs(["memory://inputs-test/none*.tar"], EXTENSIONS)
    finally:
        fs.rm("/inputs-test", recursive=True)


class PrefixedLocalFileSystem(LocalFileSystem):
    """Local files under a URI scheme only Beam knows, standing in for gs:// or s3://."""
    PREFIX = "beamtest://"

    @classmethod
    def scheme(cls):
        return "beamtest"

    def local(self, path):
        return path.removeprefix(self.PREFIX)

    def _list(self, dir_or_prefix):
        for m in super()._list(self.local(dir_or_prefix)):
            yield FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds)

    def exists(self, path):
        return super().exists(self.local(path))

    def metadata(self, path):
        return FileMetadata(path, super().metadata(self.local(path)).size_in_bytes)


def test_uris_of_beam_filesystems(tree):
    uri = PrefixedLocalFileSystem.PREFIX + str(tree / "data")
    folder = expand_inputs([uri], EXTENSIONS)
    assert [(f.path, f.relative) for f in folder] == [(uri + "/a.JSONL", "a.JSONL"),
                                                      (uri + "/b.tar", "b.tar"),
                                                      (uri + "/deep/c.tar", "deep/c.tar")]
    assert relatives(expand_inputs([uri + "/"], EXTENSIONS)) == relatives(folder)
    assert relatives(expand_inputs([uri + "/*.tar"], EXTENSIONS)) == ["b.tar"]
    assert unread([uri]) == unread([uri + "/*"]) == ["notes.txt"]
    [notes] = expand_inputs([uri + "/notes.txt"], EXTENSIONS)
    assert (notes.path, notes.relative, notes.root) == (uri + "/notes.txt", "notes.txt", uri)
    for pattern in (uri + "/none*.tar", uri + "/none.tar"):
        with pytest.raises(FileNotFoundError, match="no input matched"):
            expand_inputs([pattern], EXTENSIONS)


def test_fixed_prefix():
    assert fixed_prefix("data/a*/*.tar") == "data"
    assert fixed_prefix("data/*.tar") == "data"
    assert fixed_prefix("/*.html") == "/"
    assert fixed_prefix("gs://bucket/set/**/*.tar") == "gs://bucket/set"
    assert fixed_prefix("*.tar") == ""
