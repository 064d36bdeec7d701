"""Image datasets as uint8 arrays ``[N, H, W, 3]``: CIFAR-10 (official python format), an .npz,
or a folder of images. Errors are :class:`DatasetError` with one line saying what was expected."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import Error

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# The first 100 official CIFAR-10 test images, shipped (samples/README.md says where from).
SAMPLE_PATH = Path(__file__).resolve().parent / "samples" / "cifar10-test-100.npz"
SAMPLE_NAME = "the shipped CIFAR-10 sample (official test images 0-99)"
FULL_SET_HINT = "for the full test set pass --data cifar-10-python.tar.gz (or its folder) or --download"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


class DatasetError(Error, ValueError):
    """A dataset is missing or malformed."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickle CIFAR batch files allowing only builtins and numpy arrays (no arbitrary code)."""

    # The official files (Python 2 pickles) need only the first row. Python 3 writers of the same
    # format also use ``_codecs.encode`` (bytes under protocol 2) and ``_frombuffer`` (arrays under
    # protocol 5); both only rebuild data.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"),
               ("_codecs", "encode"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"CIFAR batch file refers to {module}.{name}: not a CIFAR-10 python batch")


def _cifar_batch(raw: bytes, what: str) -> np.ndarray:
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DatasetError(f"{what} is not a CIFAR-10 python batch file ({type(e).__name__})") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{what}: expected a [N, 3072] uint8 'data' array, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _cifar_names(split: str) -> list[str]:
    if split == "train":
        return [f"data_batch_{i}" for i in range(1, 6)]
    if split == "test":
        return ["test_batch"]
    raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")


def load_cifar10(path: str | Path, split: str = "test") -> np.ndarray:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/`` folder."""
    p = Path(path)
    names = _cifar_names(split)
    if p.is_dir():
        folder = p / "cifar-10-batches-py" if (p / "cifar-10-batches-py").is_dir() else p
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DatasetError(f"{folder} does not hold the CIFAR-10 python batches (missing {', '.join(missing)})")
        return np.concatenate([_cifar_batch((folder / n).read_bytes(), str(folder / n)) for n in names])
    if p.is_file():
        try:
            with tarfile.open(p, "r:*") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in names if n not in members]
                if missing:
                    raise DatasetError(f"{p} is not the CIFAR-10 python archive (missing {', '.join(missing)})")
                return np.concatenate([_cifar_batch(tar.extractfile(members[n]).read(), f"{p}:{n}") for n in names])
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DatasetError(f"{p} is not a readable cifar-10-python.tar.gz archive ({e})") from None
    raise DatasetError(f"no CIFAR-10 data at {p}: expected cifar-10-python.tar.gz or a cifar-10-batches-py/ folder "
                       "(or pass --download)")


def download_cifar10(root: str | Path) -> Path:
    """Fetch the official archive into ``root`` and check its md5; return its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / "cifar-10-python.tar.gz"
    if not dest.exists():
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=60) as r, open(dest.with_suffix(".part"), "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except OSError as e:
            raise DatasetError(f"could not download {CIFAR10_URL}: {e}") from None
        dest.with_suffix(".part").rename(dest)
    md5 = hashlib.md5(dest.read_bytes()).hexdigest()
    if md5 != CIFAR10_MD5:
        raise DatasetError(f"{dest} has md5 {md5}, expected {CIFAR10_MD5}: delete it and download again")
    return dest


def load_npz(path: str | Path, split: str = "test") -> np.ndarray:
    """uint8 images from an .npz: key ``<split>_images`` (or ``images``, or the only array)."""
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
        if isinstance(z, np.ndarray):       # a bare .npy under an .npz name: the only array
            return _check_images(z, str(p))
        with z:
            keys = list(z.keys())
            for k in (f"{split}_images", "images", "x", "arr_0"):
                if k in keys:
                    arr = z[k]
                    break
            else:
                if len(keys) == 1:
                    arr = z[keys[0]]
                else:
                    raise DatasetError(f"{p}: no '{split}_images' or 'images' array (has {', '.join(keys) or 'none'})")
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"{p} is not a readable .npz file ({type(e).__name__}: {e})") from None
    return _check_images(arr, str(p))


def load_folder(path: str | Path) -> np.ndarray:
    """All images of a folder (sorted by name), converted to RGB; all must share one size."""
    from PIL import Image

    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    imgs = []
    for f in files:
        try:
            with Image.open(f) as im:
                imgs.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise DatasetError(f"{f} is not a readable image ({e})") from None
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise DatasetError(f"images in {p} differ in size ({sorted(shapes)[:3]}...); use one size per folder")
    return np.stack(imgs)


def _check_images(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DatasetError(f"{what}: expected uint8 images [N, H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def load_sample(split: str = "test") -> np.ndarray:
    """The shipped sample: the first 100 official CIFAR-10 test images, uint8 ``[100, 32, 32, 3]``."""
    if split != "test":
        raise DatasetError(f"the shipped CIFAR-10 sample holds test images only, not {split!r}: "
                           f"pass --data PATH or --download")
    return load_npz(SAMPLE_PATH, "test")


def example_image(index: int = 7) -> np.ndarray:
    """One image of the shipped sample (CIFAR-10 test image ``index``, 0-99), uint8 ``[32, 32, 3]``."""
    images = load_sample()
    if not 0 <= index < len(images):
        raise DatasetError(f"the shipped sample holds CIFAR-10 test images 0-{len(images) - 1}, not {index}")
    return images[index]


def load_images_or_sample(spec: str | Path, split: str = "test", *, download: bool = False,
                          root: str | Path = "~/.cache/ddpm-codec") -> tuple[np.ndarray, str | None]:
    """As :func:`load_images`, but ``cifar10`` with nothing downloaded (and no ``download``) gives the
    shipped sample's test images instead of an error, with a one-line note saying so (else None)."""
    if str(spec) == "cifar10" and not download and split == "test" and _cached_cifar10(root) is None:
        images = load_sample()
        return images, f"using {SAMPLE_NAME}, {len(images)} images; {FULL_SET_HINT}"
    return load_images(spec, split, download=download, root=root), None


def _cached_cifar10(root: str | Path) -> Path | None:
    root = Path(root).expanduser()
    for cand in (root / "cifar-10-python.tar.gz", root / "cifar-10-batches-py"):
        if cand.exists():
            return cand
    return None


def load_images(spec: str | Path, split: str = "test", *, download: bool = False,
                root: str | Path = "~/.cache/ddpm-codec") -> np.ndarray:
    """Resolve a dataset spec to uint8 ``[N, H, W, 3]``.

    ``cifar10`` (or ``cifar10:<path>``): the official CIFAR-10 archive/folder, downloaded into
    ``root`` with ``download=True``; ``cifar10-sample``: the shipped sample (:func:`load_sample`); a
    path to an ``.npz``, a CIFAR archive/folder, or a folder of images.
    """
    spec = str(spec)
    if spec == "cifar10" or spec.startswith("cifar10:"):
        if ":" in spec:
            return load_cifar10(spec.split(":", 1)[1], split)
        root = Path(root).expanduser()
        if download:
            return load_cifar10(download_cifar10(root), split)
        cached = _cached_cifar10(root)
        if cached is not None:
            return load_cifar10(cached, split)
        raise DatasetError(f"CIFAR-10 not found in {root}: pass --data PATH (archive, folder or .npz) or --download")
    if spec == "cifar10-sample":
        return load_sample(split)
    p = Path(spec).expanduser()
    if not p.exists():
        raise DatasetError(f"no dataset at {p}: expected an .npz, a CIFAR-10 archive/folder, or a folder of images")
    if p.suffix == ".npz":
        return load_npz(p, split)
    if p.is_file() and (p.name.endswith(".tar.gz") or p.suffix == ".tar"):
        return load_cifar10(p, split)
    if p.is_dir() and (p.name == "cifar-10-batches-py" or (p / "cifar-10-batches-py").is_dir()
                       or (p / "data_batch_1").exists() or (p / "test_batch").exists()):
        return load_cifar10(p, split)
    if p.is_dir():
        return load_folder(p)
    raise DatasetError(f"{p}: unsupported dataset file; expected .npz, cifar-10-python.tar.gz or a folder")


def to_model_range(images_uint8: np.ndarray):
    """uint8 [N, H, W, C] -> float32 torch [N, C, H, W] in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """torch [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (rounded, clipped)."""
    import torch

    v = torch.round((x.detach().double().clamp(-1, 1) + 1.0) * 127.5)
    return v.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
