"""Reading a builder's source dataset (MNIST, CIFAR-10) from torchvision or a local ``.npz``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from debiaslab.errors import UserError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_npz(path: Path, name: str) -> list[np.ndarray]:
    """``[x_train, y_train, x_test, y_test]`` from an .npz, with one-line errors naming what is wrong."""
    try:
        with np.load(path) as z:
            return [z[k] for k in ARRAYS]
    except KeyError as e:
        raise UserError(
            f"{path} lacks the array {e}; a {name} .npz needs {', '.join(ARRAYS)}"
        ) from None
    except Exception as e:
        raise UserError(
            f"cannot read {path} as .npz ({type(e).__name__}: {e}); is the file complete?"
        ) from None


def torchvision_splits(dataset_cls, root: Path, download: bool, flag: str, local_forms: str):
    """The train and test sets of a torchvision dataset class, downloading into ``root`` if asked."""
    try:
        return (
            dataset_cls(str(root), train=True, download=download),
            dataset_cls(str(root), train=False, download=download),
        )
    except (RuntimeError, OSError) as e:
        what = "downloading" if download else "reading"
        where = "into" if download else "from"
        raise UserError(
            f"{what} {dataset_cls.__name__} {where} {root} failed ({str(e).splitlines()[0][:200]}); "
            f"pass {flag} with a local copy ({local_forms})"
        ) from None


def load_source(
    source: str | None, download_root: Path, download, forms, flag: str, describe: str
) -> tuple[dict, dict]:
    """Read a source dataset as ``({'x_train', 'y_train', 'x_test', 'y_test'}: numpy arrays, provenance)``.

    ``source`` None: ``download(download_root)``. Otherwise the first of ``forms`` — ``(matches(path),
    read(path), kind)`` — that matches the path reads it; a file's sha256 goes into the provenance.
    """
    if source is None:
        arrays = download(download_root)
        prov = {"kind": "torchvision-download", "root": str(download_root)}
    else:
        path = Path(source)
        if not path.exists():
            raise UserError(f"{flag} {path} does not exist; pass {describe}")
        form = next((f for f in forms if f[0](path)), None)
        if form is None:
            raise UserError(f"{flag} {path} is not {describe}")
        arrays = form[1](path)
        prov = {"kind": form[2], "path": str(path.resolve())}
        if path.is_file():
            prov["sha256"] = file_sha256(path)
    data = dict(zip(ARRAYS, (np.ascontiguousarray(a) for a in arrays)))
    for k in ("y_train", "y_test"):
        data[k] = data[k].astype(np.int64)
        if len(data[k]) != len(data["x" + k[1:]]):
            raise UserError(
                f"{k} of {flag} has {len(data[k])} labels for {len(data['x' + k[1:]])} images"
            )
    return data, prov
