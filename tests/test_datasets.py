"""The data as a study setting: named datasets (downloaded from a loopback server here), a user's
IDX folder or .npz, grey or colour, identified by the SHA-256 of the decoded arrays."""

import gzip
import hashlib
import shutil
import struct
from dataclasses import replace

import numpy as np
import pytest
from conftest import serve

from nas.data.datasets import IDX, MNIST, NAMED, DatasetSpec, digest, for_study, normalisation, read, read_idx
from nas.errors import DataError


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """An IDX file of unsigned bytes, as the MNIST family stores them."""
    blob = (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )
    path.write_bytes(gzip.compress(blob, mtime=0) if compress else blob)


def idx_folder(folder, n: int = 40, seed: int = 0, prefix: str = "", compress: bool = True):
    """The four IDX files of a small random grey dataset of 8x8 images in 10 classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("t10k", n // 4)):
        write_idx(
            folder / f"{prefix}{split}-images-idx3-ubyte{'.gz' if compress else ''}",
            rng.integers(0, 256, (count, 8, 8)),
            compress,
        )
        write_idx(
            folder / f"{prefix}{split}-labels-idx1-ubyte{'.gz' if compress else ''}", np.arange(count) % 10, compress
        )
    return folder


def test_reads_real_idx_files(mnist_dir):
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))


def test_uncompressed_and_bad_idx_files(tmp_path, mnist_dir):
    blob = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "raw").write_bytes(blob)
    assert np.array_equal(read_idx(tmp_path / "raw"), read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"))
    (tmp_path / "short").write_bytes(blob[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "zip").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(tmp_path / "zip")
    (tmp_path / "bad.gz").write_bytes((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_mnist_is_what_the_default_settings_say_however_it_is_stored(tmp_path, mnist_dir):
    """The published files give the MNIST spec StudySettings() uses (normalisation 0.1307 / 0.3081
    from the data itself); a gunzipped copy and an .npz of the same arrays are the same data."""
    ds = read("mnist", mnist_dir)
    assert ds.spec == MNIST and (ds.spec.mean, ds.spec.std) == ((0.1307,), (0.3081,))
    assert ds.x_train.shape == (60_000, 1, 28, 28) and ds.y_test.dtype == np.int64
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in IDX:
        (plain / name.removesuffix(".gz")).write_bytes(gzip.decompress((mnist_dir / name).read_bytes()))
    assert read("mnist", plain).spec == MNIST and read(str(plain)).spec == MNIST  # by name, or as a user's folder
    np.savez(tmp_path / "mnist.npz", x=ds.x_train[:, 0], y=ds.y_train, x_test=ds.x_test[:, 0], y_test=ds.y_test)
    as_npz = read(str(tmp_path / "mnist.npz")).spec
    assert as_npz == MNIST and as_npz.name == "mnist.npz" and as_npz.path == str(tmp_path / "mnist.npz")
    raw = plain / "t10k-labels-idx1-ubyte"
    raw.write_bytes(
        raw.read_bytes()[:-1] + bytes([(raw.read_bytes()[-1] + 1) % 10])
    )  # one test label changed: no .gz to check, the arrays are
    with pytest.raises(DataError, match="not the published MNIST images and labels"):
        read("mnist", plain)


def test_an_npz_in_grey_or_colour(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (70, 6, 5, 3), dtype=np.uint8)
    y = np.arange(70) % 4
    np.savez(tmp_path / "rgb.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    ds = read(str(tmp_path / "rgb.npz"))
    spec = ds.spec
    assert spec.shape == (3, 6, 5) and spec.classes == 4 and spec.class_names == ("a", "b", "c", "d")
    assert spec.held_out and (spec.train, spec.test) == (60, 10)  # a seventh held out as the test set, and said so
    assert "(held out of x, seeded)" in spec.describe()
    assert ds.x_train.shape == (60, 3, 6, 5) and any(
        np.array_equal(ds.x_train[0], image.transpose(2, 0, 1)) for image in x
    )  # [N, C, H, W]
    again = read(str(shutil.copy(tmp_path / "rgb.npz", tmp_path / "copy.npz")))
    assert again.spec == spec and np.array_equal(again.x_test, ds.x_test)  # the held-out split is fixed
    train_rows = {r.tobytes() for r in ds.x_train}
    assert not any(r.tobytes() in train_rows for r in ds.x_test)
    np.savez(tmp_path / "grey.npz", x=x[..., 0], y=y, x_test=x[:5, ..., 0], y_test=y[:5])
    grey = read(str(tmp_path / "grey.npz")).spec
    assert (
        grey.shape == (1, 6, 5)
        and not grey.held_out
        and (grey.train, grey.test) == (70, 5)
        and grey.class_names is None
    )


@pytest.mark.parametrize(
    "arrays, problem",
    [
        (dict(x=np.zeros((20, 8, 8), np.float32), y=np.zeros(20, int)), "must be uint8 pixels 0-255 (got float32)"),
        (
            dict(x=np.zeros((20, 3, 8, 8), np.uint8), y=np.zeros(20, int)),
            "channels first; nas reads [N, H, W, C] (channels last): np.moveaxis(x, 1, -1)",
        ),
        (dict(x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(19, int)), "19 labels for 20 images"),
        (dict(x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(20)), "labels must be a 1-d array of integers"),
        (dict(x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) - 1), "labels must be 0 to 4095 (got -1 to 18)"),
        (dict(x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(20, int)), "every label is 0"),
        (
            dict(x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 2, x_test=np.zeros((2, 8, 8), np.uint8)),
            "x_test and y_test go together",
        ),
        (
            dict(
                x=np.zeros((20, 8, 8), np.uint8),
                y=np.arange(20) % 2,
                x_test=np.zeros((2, 9, 8), np.uint8),
                y_test=np.zeros(2, int),
            ),
            "test images are [1, 9, 8]",
        ),
        (dict(images=np.zeros((20, 8, 8), np.uint8), y=np.zeros(20, int)), "unknown array 'images'"),
        (dict(y=np.zeros(20, int)), "no array 'x'"),
        (
            dict(x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 2, class_names=np.array(["one"])),
            "1 class names for labels 0 to 1",
        ),
    ],
)
def test_a_bad_npz_is_one_line_naming_the_fix(tmp_path, arrays, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as e:
        read(str(path))
    assert problem in str(e.value) and str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_a_users_idx_folder_and_what_is_not_data(tmp_path):
    folder = idx_folder(tmp_path / "letters", prefix="emnist-letters-")  # EMNIST names its files so
    spec = read(str(folder)).spec
    assert (
        spec.name == "letters"
        and spec.shape == (1, 8, 8)
        and (spec.train, spec.test, spec.classes) == (40, 10, 10)
        and not spec.held_out
    )
    write_idx(folder / "emnist-digits-train-images-idx3-ubyte.gz", np.zeros((4, 8, 8)))
    with pytest.raises(DataError, match="holds several train images files"):
        read(str(folder))
    with pytest.raises(
        DataError,
        match="no such file or folder, and not a dataset nas knows by name \\(mnist, fashion-mnist, kmnist\\)",
    ):
        read(str(tmp_path / "nope.npz"))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="give an .npz file"):
        read(str(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError, match="no train images and no train labels and no test images and no test labels IDX file"
    ):
        read(str(tmp_path / "empty"))


def test_normalisation_is_exact_per_channel():
    x = np.random.default_rng(2).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = normalisation(x)
    pixels = x.transpose(1, 0, 2, 3).reshape(3, -1) / 255
    assert mean == tuple(round(v, 4) for v in pixels.mean(1)) and std == tuple(round(v, 4) for v in pixels.std(1))


def test_the_digest_is_of_the_arrays_and_the_class_names():
    x, y = np.zeros((4, 1, 2, 2), np.uint8), np.arange(4, dtype=np.int64)
    base = digest(x, y, x[:1], y[:1], None)
    assert base == digest(x.copy(), y.copy(), x[:1].copy(), y[:1].copy(), None)
    assert base != digest(x, y[::-1].copy(), x[:1], y[:1], None) != digest(x, y, x[:1], y[:1], ("a", "b", "c", "d"))
    assert base != digest(x.reshape(4, 1, 4, 1), y, x[:1].reshape(1, 1, 4, 1), y[:1], None)  # same bytes, other shape


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A tiny dataset 'published' on a loopback server under the name fashion-mnist, with the MD5
    checksums of its files (Fashion-MNIST publishes MD5), and a mirror that serves other bytes."""
    good, evil = idx_folder(tmp_path / "good"), tmp_path / "evil"
    evil.mkdir()
    for name in IDX:
        (evil / name).write_bytes(b"not the data")
    with serve(good) as good_url, serve(evil) as evil_url:
        files = {name: "md5:" + hashlib.md5((good / name).read_bytes()).hexdigest() for name in IDX}
        named = replace(NAMED["fashion-mnist"], mirrors=(evil_url, good_url), files=files)
        monkeypatch.setitem(NAMED, "fashion-mnist", named)
        yield named


def test_a_named_dataset_is_downloaded_into_its_cache_and_checked(tmp_path, published):
    said = []
    ds = read("fashion-mnist", tmp_path / "cache", log=said.append)
    folder = tmp_path / "cache" / "fashion-mnist"  # --data-dir is a cache root for the named datasets other than mnist
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX)  # the evil mirror's bytes never landed
    assert ds.spec.name == "fashion-mnist" and ds.spec.class_names[9] == "Ankle boot" and ds.spec.shape == (1, 8, 8)
    assert len(said) == 8 and said[0].startswith(f"downloading Fashion-MNIST {IDX[0]} from {published.mirrors[0]}")
    (folder / IDX[1]).write_bytes(
        gzip.compress(gzip.decompress((folder / IDX[1]).read_bytes()))
    )  # same labels, other bytes
    with pytest.raises(DataError, match="MD5 does not match the published Fashion-MNIST file; delete it"):
        read("fashion-mnist", tmp_path / "cache")


def test_a_download_with_no_good_mirror_leaves_nothing(tmp_path, published, monkeypatch):
    monkeypatch.setitem(
        NAMED, "fashion-mnist", replace(published, mirrors=published.mirrors[:1] + ("http://127.0.0.1:9/",))
    )
    with pytest.raises(DataError) as e:
        read("fashion-mnist", tmp_path / "cache", log=lambda line: None)
    message = str(e.value)
    assert (
        "could not be downloaded" in message
        and "checksum mismatch" in message
        and "127.0.0.1:9" in message
        and "\n" not in message
    )
    assert list((tmp_path / "cache" / "fashion-mnist").iterdir()) == []


def test_the_published_checksums_are_cited():
    for named in NAMED.values():
        assert set(named.files) == set(IDX) and named.checksums and named.mirrors
        assert all(known.split(":")[0] in ("sha256", "md5") for known in named.files.values())
    assert NAMED["mnist"].arrays_sha256 == MNIST.sha256


def test_a_studys_data_is_found_on_this_machine_or_refused(tmp_path):
    first = idx_folder(tmp_path / "a", seed=1)
    spec = read(str(first)).spec
    moved = shutil.copytree(first, tmp_path / "elsewhere")
    assert for_study(spec, None, None).spec == spec  # where the study was made
    assert for_study(spec, str(moved), None).spec == spec  # where this machine has it
    other = idx_folder(tmp_path / "b", seed=2)
    with pytest.raises(DataError, match=r"this is other data than the study's: the study was made with a \(1x8x8"):
        for_study(spec, str(other), None)
    shutil.rmtree(first)
    with pytest.raises(DataError, match="is not there on this machine; give --dataset PATH"):
        for_study(spec, None, None)


def test_specs_compare_by_data_and_round_trip():
    assert replace(MNIST, name="mine.npz", path="/x") == MNIST
    assert replace(MNIST, sha256="0" * 64) != MNIST
    assert DatasetSpec.from_dict(MNIST.to_dict()) == MNIST and isinstance(
        DatasetSpec.from_dict(MNIST.to_dict()).shape, tuple
    )
    assert MNIST.default_val_size == 10_000 and replace(MNIST, train=600).default_val_size == 100


def test_the_progress_bar_follows_a_download(tmp_path):
    """The bar nas gives pooch on a terminal (rich's), driven by pooch's own downloader here."""
    import pooch

    from nas.data.download import _Bar

    folder = idx_folder(tmp_path / "served")
    bar = _Bar(IDX[0])
    with serve(folder) as url:
        pooch.HTTPDownloader(progressbar=bar)(url + IDX[0], str(tmp_path / "got.gz"), None)
    task = bar.progress.tasks[0]
    assert task.total == task.completed == (folder / IDX[0]).stat().st_size and task.finished
    assert (tmp_path / "got.gz").read_bytes() == (folder / IDX[0]).read_bytes()
