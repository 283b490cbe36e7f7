"""Read a pickled .npy (TIRG's CSS format) without ever running code from it.

`np.load(allow_pickle=True)` lets a file call any Python function while it loads. TIRG's CSS3D file is such a
pickle (a dict inside a 0-d object array), so it is read here with an unpickler that resolves only the few
names a NumPy array needs (`_reconstruct`, `ndarray`, `dtype`, `scalar`, and `_codecs.encode` for bytes in
protocol-2 pickles written by Python 3), each checked; every other name is refused before anything runs, and
the result is checked to hold only plain data (dict, list, tuple, str, bytes, int, float, bool, None, NumPy
arrays and scalars of plain dtypes).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cirlab.utils.errors import CirlabError

#: dtype kinds a plain-data array may have: bool, ints, floats, complex, str, bytes, and objects (whose items are
#: unpickled by the same restricted loader and checked like the rest of the tree).
PLAIN_KINDS = frozenset("biufcUSO")
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]


def _plain_dtype(dtype: np.dtype, path: Path) -> np.dtype:
    if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CirlabError(f"refusing to load {path}: it holds an array of dtype {dtype}, not plain data")
    return dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only NumPy's array/dtype/scalar constructors (wrapped to check their arguments)."""

    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="latin1")  # latin1: Python 2 byte strings (TIRG's file) become str
        self.path = path

    def _reconstruct(self, subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise CirlabError(f"refusing to load {self.path}: it rebuilds an array subclass")
        return _RECONSTRUCT(subtype, shape, dtype_code)

    def _dtype(self, spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(spec, str):
            raise CirlabError(f"refusing to load {self.path}: dtype {spec!r} is not a plain type code")
        return _plain_dtype(np.dtype(spec, bool(align), bool(copy)), self.path)

    def _scalar(self, dtype: Any, *data: Any) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.kind == "O":
            raise CirlabError(f"refusing to load {self.path}: a NumPy scalar of dtype {dtype!r}")
        return _SCALAR(_plain_dtype(dtype, self.path), *data)

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        """Python 3 protocol-2 pickles spell bytes as `_codecs.encode(str, "latin1")`."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise CirlabError(f"refusing to load {self.path}: _codecs.encode({type(text).__name__}, {encoding!r})")
        return text.encode("latin1")

    def find_class(self, module: str, name: str) -> Any:
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): self._dtype,
                   ("_codecs", "encode"): self._encode}
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # NumPy 1.x and 2.x spellings
            allowed.update({(module, "_reconstruct"): self._reconstruct, (module, "scalar"): self._scalar})
        if (module, name) not in allowed:
            raise CirlabError(f"refusing to load {self.path}: it asks to call {module}.{name}, which a data file "
                              "never needs (files are unpickled with a restricted loader; nothing was run)")
        return allowed[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise CirlabError(f"refusing to load {self.path}: it holds a persistent reference")


def check_plain(obj: Any, path: Path) -> None:
    """Raise CirlabError unless `obj` is a tree of plain data (see the module docstring)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, str | bytes | bool | int | float):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, np.ndarray) and type(item) is np.ndarray:
            _plain_dtype(item.dtype, path)
            if item.dtype.kind == "O":
                stack.extend(item.ravel().tolist())
        elif isinstance(item, np.generic) and item.dtype.kind in PLAIN_KINDS - {"O"}:
            continue
        else:
            raise CirlabError(f"refusing to load {path}: it holds a {type(item).__name__}, not plain data")


def load_pickled_npy(path: str | Path, what: str = "file") -> Any:
    """The object inside a pickled .npy (0-d object array -> its item), loaded without running code from it.

    Raises CirlabError naming the file when it is not a .npy, is truncated, is not an object array, or asks for
    anything beyond plain data."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise CirlabError(f"cannot read {what} {path}: unsupported .npy format version {version}")
            if not dtype.hasobject:
                raise CirlabError(f"{what} {path} holds a plain {dtype} array of shape {shape}, not a pickled dict")
            array = _RestrictedUnpickler(fh, path).load()
    except CirlabError:
        raise
    except OSError:
        raise
    except Exception as exc:  # truncated or foreign files raise many exception types
        raise CirlabError(f"cannot read {what} {path} (truncated or not a pickled .npy?): "
                          f"{type(exc).__name__}: {exc}") from None
    check_plain(array, path)
    if isinstance(array, np.ndarray) and array.shape == ():
        return array.item()
    return array
