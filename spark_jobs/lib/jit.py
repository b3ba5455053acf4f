"""``njit`` whose compiled code is cached on disk, also when the job imports it from a zip.

Spark jobs import ``spark_jobs`` from spark-submit's ``--py-files`` zip, and every Spark
application unpacks it into a folder of its own: numba keys its cache by the source file's path,
so it cached nothing and every job's driver and each of its Python workers compiled the kernels
again (about 3 s of CPU per process for ``top_n`` and ``cg_kernels``, a few times per daily run and
for every job of the test suite).

Here a kernel module found in a zip is first copied, byte for byte, to a folder named by the
SHA-256 of its source (``cache_root()``), and its functions' code objects are pointed at that
copy: numba then caches next to it, shared by every process and application that runs the same
source, and a changed source gets a new folder, never a stale kernel. When the copy cannot be
written (a read-only disk), the kernel compiles as before, uncached.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile

from numba import njit
from numba.core import config


def cache_root() -> str:
    """Where copies of zipped kernel sources (and their compiled code) are kept: numba's own cache
    folder (``NUMBA_CACHE_DIR``, read by numba) when set, else ``music_recs_numba`` in the temp folder."""
    return config.CACHE_DIR or os.path.join(tempfile.gettempdir(), "music_recs_numba")


def source_on_disk(func) -> str | None:
    """A path on disk holding ``func``'s module source: its own file, or a content-addressed copy
    of the source read from the zip it was imported from; None when neither is possible."""
    path = func.__code__.co_filename
    if os.path.isfile(path):
        return path
    return _copy_of(func.__module__, path)


@functools.lru_cache(maxsize=None)
def _copy_of(module: str, path: str) -> str | None:
    """The content-addressed copy of ``module``'s zipped source ``path``, made once per process
    (every kernel of a module shares it)."""
    loader = getattr(sys.modules.get(module), "__loader__", None)
    try:
        source = loader.get_data(path)  # zipimporter: the member's bytes
        folder = os.path.join(cache_root(), hashlib.sha256(source).hexdigest()[:32])
        copy = os.path.join(folder, os.path.basename(path))
        if not os.path.isfile(copy):
            os.makedirs(folder, exist_ok=True)
            tmp = f"{copy}.{os.getpid()}.tmp"  # processes starting together never read a half copy
            with open(tmp, "wb") as fh:
                fh.write(source)
            os.replace(tmp, copy)
        return copy
    except (AttributeError, OSError):
        return None


def cached_njit(**options):
    """``numba.njit(cache=True, **options)`` that caches from a zipped module too (see the module docstring)."""
    def wrap(func):
        path = source_on_disk(func)
        if path is not None and path != func.__code__.co_filename:
            func.__code__ = func.__code__.replace(co_filename=path)
        return njit(cache=path is not None, **options)(func)
    return wrap
