"""Dataset loading: fake CIFAR-10 python archives/folders, .npz files, image folders, and every
malformed input raising :class:`DatasetError` with a message that says what is wrong."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from ddpm_codec.data import DatasetError, load_cifar10, load_images, load_npz, to_model_range, to_uint8

TRAIN_SIZES = (3, 4, 2, 5, 1)      # distinct, so concatenation order is checked
TEST_SIZE = 6
NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _planar_to_hwc(rows: np.ndarray) -> np.ndarray:
    """Independent conversion by explicit indexing: byte c*1024 + y*32 + x is channel c of pixel (y, x)."""
    out = np.zeros((len(rows), 32, 32, 3), np.uint8)
    for i, r in enumerate(rows):
        for c in range(3):
            for y in range(32):
                out[i, y, :, c] = r[c * 1024 + y * 32: c * 1024 + y * 32 + 32]
    return out


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    out = {n: _rows(i, s) for i, (n, s) in enumerate(zip(NAMES, TRAIN_SIZES + (TEST_SIZE,)))}
    # a hand-made pixel: test image 1, row 2, column 5 is (R, G, B) = (10, 20, 30)
    out["test_batch"][1, 0 * 1024 + 2 * 32 + 5] = 10
    out["test_batch"][1, 1 * 1024 + 2 * 32 + 5] = 20
    out["test_batch"][1, 2 * 1024 + 2 * 32 + 5] = 30
    return out


def _pickled(rows: np.ndarray, protocol: int = 2) -> bytes:
    n = len(rows)
    return pickle.dumps({b"batch_label": b"fake", b"labels": list(range(n)), b"data": rows,
                         b"filenames": [f"img{i}.png".encode() for i in range(n)]}, protocol=protocol)


def _write_tar(path, members: dict[str, bytes], mode: str = "w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory, batches):
    root = tmp_path_factory.mktemp("cifar")
    _write_tar(root / "cifar-10-python.tar.gz", {n: _pickled(batches[n], protocol=2 + i % 4) for i, n in enumerate(NAMES)})
    folder = root / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for n in NAMES:
        (folder / n).write_bytes(_pickled(batches[n], protocol=4))
    return root


def _expected(batches, split):
    names = NAMES[:5] if split == "train" else NAMES[5:]
    return _planar_to_hwc(np.concatenate([batches[n] for n in names]))


def test_hand_made_pixel(cifar):
    x = load_images(cifar / "cifar-10-python.tar.gz", "test")
    assert x[1, 2, 5].tolist() == [10, 20, 30]


@pytest.mark.parametrize("where", ["archive", "folder", "parent", "spec", "root"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_archive_and_folder(cifar, batches, where, split):
    if where == "archive":
        x = load_images(cifar / "cifar-10-python.tar.gz", split)
    elif where == "folder":
        x = load_images(cifar / "extracted" / "cifar-10-batches-py", split)
    elif where == "parent":
        x = load_images(cifar / "extracted", split)
    elif where == "spec":
        x = load_images(f"cifar10:{cifar / 'cifar-10-python.tar.gz'}", split)
    else:
        x = load_images("cifar10", split, root=cifar)
    assert x.dtype == np.uint8 and x.shape == (sum(TRAIN_SIZES) if split == "train" else TEST_SIZE, 32, 32, 3)
    np.testing.assert_array_equal(x, _expected(batches, split))


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    tr, te = (rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for n in (5, 3))
    np.savez(tmp_path / "d.npz", train_images=tr, test_images=te, test_labels=np.arange(3))
    np.testing.assert_array_equal(load_images(tmp_path / "d.npz", "train"), tr)
    np.testing.assert_array_equal(load_images(str(tmp_path / "d.npz")), te)
    np.savez_compressed(tmp_path / "c.npz", images=te, labels=np.arange(3))
    np.testing.assert_array_equal(load_npz(tmp_path / "c.npz", "train"), te)
    np.savez(tmp_path / "one.npz", whatever=tr)
    np.testing.assert_array_equal(load_npz(tmp_path / "one.npz"), tr)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = [rng.integers(0, 256, (6, 7, 3), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(rgb[1]).save(tmp_path / "b.png")
    Image.fromarray(rgb[0]).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb[2], np.full((6, 7), 9, np.uint8)])).save(tmp_path / "c.png")   # RGBA
    gray = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "d.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_images(tmp_path)
    assert x.shape == (4, 6, 7, 3) and x.dtype == np.uint8
    for i in range(3):
        np.testing.assert_array_equal(x[i], rgb[i])
    np.testing.assert_array_equal(x[3], np.repeat(gray[:, :, None], 3, axis=2))


def test_pixel_range_round_trip():
    v = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    x = to_model_range(v)
    assert x.shape == (1, 3, 16, 16) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    np.testing.assert_allclose(x[0, 0].numpy().ravel(), np.arange(256) / 127.5 - 1, atol=1e-7)
    np.testing.assert_array_equal(to_uint8(x), v)


# ---------------------------------------------------------------------------------- malformed input
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _archive(tmp_path, batches, replace: dict[str, bytes] | None = None, drop: str | None = None):
    members = {n: _pickled(batches[n], protocol=4) for n in NAMES if n != drop}
    members.update(replace or {})
    _write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    return tmp_path / "cifar-10-python.tar.gz"


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no dataset at"):
        load_images(tmp_path / "nope.npz")
    with pytest.raises(DatasetError, match="--download"):
        load_images("cifar10", root=tmp_path)
    with pytest.raises(DatasetError, match="no CIFAR-10 data"):
        load_cifar10(tmp_path / "nothing-here")


def test_missing_batch_files(tmp_path, batches):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for n in NAMES:
        if n != "data_batch_3":
            (folder / n).write_bytes(_pickled(batches[n]))
    np.testing.assert_array_equal(load_images(folder, "test"), _expected(batches, "test"))
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        load_images(folder, "train")
    arch = _archive(tmp_path, batches, drop="test_batch")
    with pytest.raises(DatasetError, match="missing test_batch"):
        load_images(arch, "test")


def test_not_a_tar(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(os.urandom(2000))
    with pytest.raises(DatasetError, match="not a readable"):
        load_images(p)
    p.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a readable"):
        load_images(p)


def test_truncated_archive(tmp_path, batches):
    arch = _archive(tmp_path, batches)
    raw = arch.read_bytes()
    arch.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="not a readable"):
        load_images(arch, "train")


@pytest.mark.parametrize("bad,match", [
    ("wrong_width", r"\[N, 3072\]"),
    ("one_dim", r"\[N, 3072\]"),
    ("not_a_dict", "not a CIFAR-10 python batch"),
    ("no_data_key", "not a CIFAR-10 python batch"),
    ("not_a_pickle", "not a CIFAR-10 python batch"),
])
def test_malformed_batch(tmp_path, batches, bad, match):
    raw = {
        "wrong_width": lambda: _pickled(np.zeros((4, 3000), np.uint8)),
        "one_dim": lambda: _pickled(np.zeros(3072, np.uint8)),
        "not_a_dict": lambda: pickle.dumps([1, 2, 3]),
        "no_data_key": lambda: pickle.dumps({b"labels": [1]}),
        "not_a_pickle": lambda: b"\x00garbage" * 30,
    }[bad]()
    arch = _archive(tmp_path, batches, replace={"test_batch": raw})
    with pytest.raises(DatasetError, match=match) as e:
        load_images(arch, "test")
    assert "test_batch" in str(e.value)
    # and the same file in an extracted folder
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(raw)
    with pytest.raises(DatasetError, match=match):
        load_images(folder, "test")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_referring_to_os_system_is_refused(tmp_path, batches, protocol):
    marker = tmp_path / "PWNED"
    raw = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=protocol)
    assert b"system" in raw
    arch = _archive(tmp_path, batches, replace={"test_batch": raw})
    with pytest.raises(DatasetError, match=r"system.*not a CIFAR-10 python batch"):
        load_images(arch, "test")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(_Evil(marker), protocol=protocol))
    with pytest.raises(DatasetError, match="system"):
        load_images(folder, "test")
    assert not marker.exists()


def test_unknown_split(cifar):
    with pytest.raises(DatasetError, match="validation"):
        load_images(cifar / "cifar-10-python.tar.gz", "validation")


@pytest.mark.parametrize("case,match", [
    ("no_images", "no 'test_images' or 'images' array"),
    ("empty_npz", "no 'test_images'"),
    ("only_labels", r"expected uint8 images \[N, H, W, 3\]"),
    ("float", r"expected uint8 images"),
    ("gray", r"expected uint8 images"),
    ("object", "not a readable .npz"),
    ("garbage", "not a readable .npz"),
    ("empty_file", "not a readable .npz"),
    ("truncated", "not a readable .npz"),
])
def test_malformed_npz(tmp_path, case, match):
    p = tmp_path / "d.npz"
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    if case == "no_images":
        np.savez(p, labels=np.arange(2), names=np.array(["a", "b"]))
    elif case == "empty_npz":
        np.savez(p)
    elif case == "only_labels":
        np.savez(p, labels=np.arange(2))
    elif case == "float":
        np.savez(p, test_images=imgs.astype(np.float32))
    elif case == "gray":
        np.savez(p, test_images=imgs[..., 0])
    elif case == "object":
        np.savez(p, test_images=np.array([_Evil(tmp_path / "PWNED")], dtype=object))
    elif case == "garbage":
        p.write_bytes(os.urandom(500))
    elif case == "empty_file":
        p.write_bytes(b"")
    else:
        np.savez(tmp_path / "full.npz", test_images=np.ones((50, 8, 8, 3), np.uint8))
        raw = (tmp_path / "full.npz").read_bytes()
        p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=match):
        load_images(p)
    assert not (tmp_path / "PWNED").exists()


def test_npy_named_npz(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    os.replace(tmp_path / "a.npy", tmp_path / "a.npz")
    np.testing.assert_array_equal(load_images(tmp_path / "a.npz"), imgs)
    np.save(tmp_path / "b.npy", imgs[..., 0])
    os.replace(tmp_path / "b.npy", tmp_path / "b.npz")
    with pytest.raises(DatasetError, match="expected uint8 images"):
        load_images(tmp_path / "b.npz")


def test_malformed_image_folder(tmp_path):
    from PIL import Image

    with pytest.raises(DatasetError, match="holds no images"):
        load_images(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="b.png is not a readable image"):
        load_images(tmp_path)
    (tmp_path / "b.png").unlink()
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DatasetError, match="differ in size"):
        load_images(tmp_path)


def test_unsupported_file(tmp_path):
    p = tmp_path / "images.h5"
    p.write_bytes(b"x")
    with pytest.raises(DatasetError, match="unsupported"):
        load_images(p)
