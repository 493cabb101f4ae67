"""The artifact store on real files: tarballs (gzip and plain), directories, the extraction cache, hostile archives."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from moorage.store.artifacts import ArtifactError, ArtifactStore, describe, model_data_urls

FILES = {
    "model.joblib": b"not really a model, just bytes\x00\x01",
    "code/inference.py": b"def model_fn(d):\n    pass\n",
}


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def write_hostile_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def all_paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """Separate folders for sources and the cache, inside a sandbox whose other contents must never change."""
    sandbox = tmp_path / "sandbox"
    paths = {"src": sandbox / "src", "cache": sandbox / "cache", "sandbox": sandbox, "outside": tmp_path}
    paths["src"].mkdir(parents=True)
    return paths


@pytest.fixture
def store(layout: dict[str, Path]) -> ArtifactStore:
    return ArtifactStore(layout["cache"])


def leftovers(cache: Path) -> list[str]:
    """Staging folders that a failed or finished extraction left behind."""
    return [p.name for p in cache.iterdir() if p.name.startswith(".")] if cache.exists() else []


# --------------------------------------------------------------------------------------------------
# what materialize accepts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("filename,mode", [("model.tar.gz", "w:gz"), ("model.tgz", "w:gz"), ("model.tar", "w"),
                                           ("model-data", "w:gz"), ("model.bin", "w")])
@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "plain-path"])
def test_materialize_extracts_archives(store: ArtifactStore, layout: dict[str, Path], filename: str, mode: str,
                                       as_url: bool) -> None:
    archive = write_tar(layout["src"] / filename, FILES, mode)
    url = archive.as_uri() if as_url else str(archive)
    target = store.materialize(url)
    assert target.is_dir()
    assert target.parent == layout["cache"]
    assert read_tree(target) == FILES
    assert leftovers(layout["cache"]) == []


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "plain-path"])
def test_materialize_local_directory_is_used_in_place(store: ArtifactStore, layout: dict[str, Path],
                                                      as_url: bool) -> None:
    model_dir = layout["src"] / "model-dir"
    (model_dir / "code").mkdir(parents=True)
    for name, data in FILES.items():
        (model_dir / name).write_bytes(data)
    target = store.materialize(model_dir.as_uri() if as_url else str(model_dir))
    assert target.resolve() == model_dir.resolve()
    assert read_tree(target) == FILES
    assert not layout["cache"].exists() or list(layout["cache"].iterdir()) == []  # nothing copied


def test_a_file_that_is_not_an_archive_is_refused(store: ArtifactStore, layout: dict[str, Path]) -> None:
    plain = layout["src"] / "model.joblib"
    plain.write_bytes(b"just a pickle, not a tarball" * 20)
    with pytest.raises(ArtifactError, match="neither a directory nor a tar archive"):
        store.materialize(str(plain))


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------
def test_second_materialize_reuses_the_extraction(store: ArtifactStore, layout: dict[str, Path]) -> None:
    archive = write_tar(layout["src"] / "model.tar.gz", FILES)
    first = store.materialize(archive.as_uri())
    model_file = first / "model.joblib"
    before = os.stat(model_file)
    marker = first / "added-after-extraction"
    marker.write_text("a re-extraction would not have this")

    second = store.materialize(archive.as_uri())
    assert second == first
    after = os.stat(model_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert marker.exists()
    assert [p for p in layout["cache"].iterdir() if p.suffix != ".url"] == [first]  # .url: its recorded source

    # A new ArtifactStore on the same cache (a restarted server) finds it too.
    assert ArtifactStore(layout["cache"]).materialize(archive.as_uri()) == first


def test_changed_archive_under_the_same_url_is_extracted_again(store: ArtifactStore, layout: dict[str, Path]) -> None:
    archive = write_tar(layout["src"] / "model.tar.gz", FILES)
    first = store.materialize(str(archive))

    new_files = {"model.joblib": b"version two of the model, longer than the first one"}
    write_tar(archive, new_files)
    second = store.materialize(str(archive))
    assert second != first
    assert read_tree(second) == new_files
    assert read_tree(first) == FILES  # the old extraction is untouched (instances may still use it)


def test_same_size_archive_with_a_new_mtime_is_extracted_again(store: ArtifactStore, layout: dict[str, Path]) -> None:
    archive = write_tar(layout["src"] / "model.tar", {"model.joblib": b"AAAA"}, mode="w")
    first = store.materialize(str(archive))
    stat = archive.stat()
    write_tar(archive, {"model.joblib": b"BBBB"}, mode="w")
    assert archive.stat().st_size == stat.st_size
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = store.materialize(str(archive))
    assert second != first
    assert (second / "model.joblib").read_bytes() == b"BBBB"


def test_concurrent_materialize_of_one_archive_agrees(store: ArtifactStore, layout: dict[str, Path]) -> None:
    archive = write_tar(layout["src"] / "model.tar.gz", {**FILES, "big.bin": os.urandom(1 << 20)})
    results: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(store.materialize(archive.as_uri()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(set(results)) == 1
    assert read_tree(results[0])["model.joblib"] == FILES["model.joblib"]
    assert leftovers(layout["cache"]) == []


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["file-url", "plain-path"])
def test_missing_model_data(store: ArtifactStore, layout: dict[str, Path], form: str) -> None:
    missing = layout["src"] / "nope" / "model.tar.gz"
    url = missing.as_uri() if form == "file-url" else str(missing)
    with pytest.raises(ArtifactError, match="Could not find model data") as info:
        store.materialize(url)
    assert str(missing) in str(info.value)
    with pytest.raises(ArtifactError, match="Could not find model data"):
        describe(url)


def test_describe_reports_size_and_type(layout: dict[str, Path]) -> None:
    archive = write_tar(layout["src"] / "model.tar.gz", FILES)
    info = describe(archive.as_uri())
    assert info["size"] == archive.stat().st_size
    assert info["type"] == "file"
    assert describe(str(layout["src"]))["type"] == "directory"


@pytest.mark.parametrize("content", [
    b"this is not gzip at all" * 10,
    b"\x1f\x8b\x08\x00garbage after a gzip magic number" * 4,
], ids=["garbage", "bad-gzip"])
def test_corrupt_archive(store: ArtifactStore, layout: dict[str, Path], content: bytes) -> None:
    archive = layout["src"] / "model.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(ArtifactError, match="Could not extract model data"):
        store.materialize(str(archive))
    assert leftovers(layout["cache"]) == []
    assert [p for p in layout["cache"].iterdir()] == []


def test_truncated_archive(store: ArtifactStore, layout: dict[str, Path]) -> None:
    good = write_tar(layout["src"] / "good.tar.gz", {"model.joblib": os.urandom(200_000)})
    truncated = layout["src"] / "model.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="Could not extract model data"):
        store.materialize(str(truncated))
    assert list(layout["cache"].iterdir()) == []
    # A good archive under another URL still works afterwards.
    assert (store.materialize(str(good)) / "model.joblib").stat().st_size == 200_000


# --------------------------------------------------------------------------------------------------
# hostile archives: nothing may be written outside the extraction folder
# --------------------------------------------------------------------------------------------------
def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _assert_nothing_outside(layout: dict[str, Path], before: set[str]) -> None:
    now = all_paths(layout["outside"])
    new_outside = {p for p in now - before if not p.startswith("sandbox/cache")}
    assert new_outside == set()


@pytest.mark.parametrize("members", [
    [(_file("model.joblib"), b"ok"), (_file("../evil"), b"pwned")],
    [(_file("model.joblib"), b"ok"), (_file("../../evil"), b"pwned")],
    [(_file("code/../../../evil"), b"pwned")],
    # A symlink pointing out of the tree, then a file written through it.
    [(_link("escape", "../.."), None), (_file("escape/evil"), b"pwned")],
    [(_link("escape", "/tmp"), None)],
    [(_link("model.joblib", "../../../../../etc/passwd"), None)],
    # A hard link to a file outside the tree.
    [(_link("model.joblib", "../evil-target", tarfile.LNKTYPE), None)],
    [(_link("passwd", "/etc/passwd", tarfile.LNKTYPE), None)],
], ids=["dotdot", "dotdot2", "nested-dotdot", "symlink-then-write", "abs-symlink", "rel-symlink-out",
        "hardlink-out", "abs-hardlink"])
def test_escaping_members_are_refused(store: ArtifactStore, layout: dict[str, Path],
                                      members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    (layout["outside"] / "evil-target").write_bytes(b"secret")
    archive = write_hostile_tar(layout["src"] / "model.tar.gz", members)
    before = all_paths(layout["outside"])
    with pytest.raises(ArtifactError, match="Could not extract model data"):
        store.materialize(str(archive))
    _assert_nothing_outside(layout, before)
    assert not (layout["outside"] / "evil").exists()
    assert not (layout["sandbox"] / "evil").exists()
    assert (layout["outside"] / "evil-target").read_bytes() == b"secret"
    assert list(layout["cache"].iterdir()) == []  # no half-extracted folder to be reused later


def test_absolute_member_never_lands_at_its_absolute_path(store: ArtifactStore, layout: dict[str, Path]) -> None:
    """An absolute member name is made relative (as GNU tar does); it can only land inside the extraction."""
    victim = layout["outside"] / "absolute-victim"
    archive = write_hostile_tar(layout["src"] / "model.tar.gz",
                                [(_file("model.joblib"), b"ok"), (_file(str(victim)), b"pwned")])
    before = all_paths(layout["outside"])
    try:
        target = store.materialize(str(archive))
    except ArtifactError:
        target = None  # refusing it outright is fine too
    assert not victim.exists()
    _assert_nothing_outside(layout, before)
    if target is not None:
        assert (target / "model.joblib").read_bytes() == b"ok"
        inside = target / str(victim).lstrip("/")
        assert inside.read_bytes() == b"pwned"
        assert inside.resolve().is_relative_to(target.resolve())


def test_device_files_are_refused(store: ArtifactStore, layout: dict[str, Path]) -> None:
    dev = tarfile.TarInfo("dev-null")
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = 1, 3
    archive = write_hostile_tar(layout["src"] / "model.tar.gz", [(_file("model.joblib"), b"ok"), (dev, None)])
    with pytest.raises(ArtifactError):
        store.materialize(str(archive))
    assert list(layout["cache"].iterdir()) == []


def test_links_inside_the_tree_are_kept(store: ArtifactStore, layout: dict[str, Path]) -> None:
    archive = write_hostile_tar(layout["src"] / "model.tar.gz", [
        (_file("weights/v1.joblib"), b"weights"),
        (_link("model.joblib", "weights/v1.joblib"), None),
    ])
    target = store.materialize(str(archive))
    assert (target / "model.joblib").read_bytes() == b"weights"
    assert (target / "model.joblib").is_symlink()


# --------------------------------------------------------------------------------------------------
# decompression bombs and the cache's cleanup
# --------------------------------------------------------------------------------------------------
def test_an_archive_past_its_expansion_ratio_is_refused_whole(layout: dict[str, Path]) -> None:
    # 4 MiB of zeros gzip to a few KiB: far past 20 times the archive (the floor lowered to 1 MiB here).
    bomb = write_tar(layout["src"] / "bomb.tar.gz", {"code/inference.py": b"x = 1\n", "zeros.bin": bytes(4 << 20)})
    store = ArtifactStore(layout["cache"], max_expansion=20, floor_bytes=1 << 20)
    with pytest.raises(ArtifactError, match=r"expands beyond \d+ bytes .*decompression bomb.*MOORAGE_MAX_ARCHIVE"):
        store.materialize(str(bomb))
    assert all_paths(layout["cache"]) == set()  # nothing of it stays, not even the member before the cap
    # The same archive under a cap that fits it is extracted.
    roomy = ArtifactStore(layout["cache"], max_expansion=20, floor_bytes=8 << 20)
    assert (roomy.materialize(str(bomb)) / "zeros.bin").stat().st_size == 4 << 20


def test_an_archive_past_the_absolute_cap_is_refused(layout: dict[str, Path]) -> None:
    data = os.urandom(3 << 20)  # incompressible: the ratio is about 1
    archive = write_tar(layout["src"] / "big.tar.gz", {"weights.bin": data})
    store = ArtifactStore(layout["cache"], max_bytes=2 << 20, floor_bytes=1)
    with pytest.raises(ArtifactError, match="expands beyond 2097152 bytes"):
        store.materialize(str(archive))
    assert leftovers(layout["cache"]) == []


def test_prune_keeps_only_the_extractions_in_use(store: ArtifactStore, layout: dict[str, Path]) -> None:
    used = write_tar(layout["src"] / "used.tar.gz", FILES)
    unused = write_tar(layout["src"] / "unused.tar.gz", {"model.joblib": b"other"})
    kept, dropped = store.materialize(str(used)), store.materialize(str(unused))
    (layout["cache"] / ".extract-crashed").mkdir()  # what a process killed mid-extraction leaves
    (layout["cache"] / "empty").mkdir()  # not an extraction: never touched
    assert store.prune([str(used)]) == [dropped.name]
    assert kept.is_dir() and not dropped.exists() and (layout["cache"] / ".extract-crashed").is_dir()
    assert store.prune([str(used)], staging=True) == [".extract-crashed"]
    assert sorted(p.name for p in layout["cache"].iterdir()) == sorted([kept.name, f"{kept.name}.url", "empty"])
    assert read_tree(kept) == FILES


def test_prune_keeps_the_archives_under_a_multi_model_prefix(store: ArtifactStore, layout: dict[str, Path]) -> None:
    prefix = layout["src"] / "mme"
    under = write_tar(prefix / "a.tar.gz", FILES)
    elsewhere = write_tar(layout["src"] / "other" / "b.tar.gz", FILES)
    kept, dropped = store.materialize(str(under)), store.materialize(str(elsewhere))
    assert store.prune([str(prefix) + "/"]) == [dropped.name]
    assert kept.is_dir() and not dropped.exists()
    assert sorted(p.name for p in layout["cache"].iterdir()) == sorted([kept.name, f"{kept.name}.url"])


def test_prune_spares_what_was_made_after_it_began(store: ArtifactStore, layout: dict[str, Path]) -> None:
    made = store.materialize(str(write_tar(layout["src"] / "new.tar.gz", FILES)))
    assert store.prune([], before=os.stat(made).st_mtime - 1) == []
    assert store.prune([]) == [made.name]


def test_model_data_urls_of_every_container() -> None:
    assert model_data_urls({"PrimaryContainer": {"ModelDataUrl": "s3://b/m.tar.gz"}}) == ["s3://b/m.tar.gz"]
    assert model_data_urls({"Containers": [
        {"ModelDataUrl": "file:///a.tar.gz"}, {"Image": "x"},
        {"ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/prefix/"}}}]}) == ["file:///a.tar.gz", "s3://b/prefix/"]


def test_model_data_urls_include_the_code_archive_the_sdk_uploads() -> None:
    # SKLearnModel(entry_point=..., source_dir=...) points SAGEMAKER_SUBMIT_DIRECTORY at sourcedir.tar.gz;
    # it is extracted into the same cache, so the start-up prune must keep it too.
    model = {"PrimaryContainer": {"ModelDataUrl": "s3://b/model.tar.gz",
                                  "Environment": {"SAGEMAKER_SUBMIT_DIRECTORY": "s3://b/code/sourcedir.tar.gz",
                                                  "SAGEMAKER_PROGRAM": "inference.py"}}}
    assert model_data_urls(model) == ["s3://b/model.tar.gz", "s3://b/code/sourcedir.tar.gz"]
    in_model = {"PrimaryContainer": {"ModelDataUrl": "s3://b/model.tar.gz",
                                     "Environment": {"SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}}}
    assert model_data_urls(in_model) == ["s3://b/model.tar.gz"]
