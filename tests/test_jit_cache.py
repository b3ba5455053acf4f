"""Kernels imported from spark-submit's --py-files zip compile once per source, not once per process."""

import json
import os
import subprocess
import sys
import zipfile

import numba.core.config

from music_recs_airflow.spark_submit import package_zip
from spark_jobs.lib import cg_kernels
from spark_jobs.lib.jit import source_on_disk

# In a fresh process importing from the zip: score with the top-n kernel and solve with CG, then
# report each entry kernel's compile-cache counts and where its code object now points.
PROBE = """
import json, numpy as np
from spark_jobs.lib import cg_kernels, top_n
q = np.random.rand(20, 4).astype('f4'); y = np.random.rand(50, 4).astype('f4')
list(top_n.top_n_excluding(q, [np.array([1])] * 20, y, 5))
from spark_jobs.lib.als_local import LocalMatrix, fit
fit(LocalMatrix.from_pairs(np.arange(30) % 7, np.arange(30) % 11, np.ones(30, 'f4')), 4, 1, 0.1, lambda v: 1 + v)
print(json.dumps({name: {"hits": sum(f.stats.cache_hits.values()), "misses": sum(f.stats.cache_misses.values()),
                         "file": f.py_func.__code__.co_filename}
                  for name, f in (("top_n", top_n._top_n_rows), ("cg", cg_kernels.cg_solve_block))}))
"""


def _probe(zip_path: str, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": zip_path, "NUMBA_CACHE_DIR": cache}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_kernels_from_the_jobs_zip_compile_in_the_first_process_and_load_in_the_next(tmp_path):
    zip_path, cache = package_zip(str(tmp_path / "pyfiles")), str(tmp_path / "numba")
    first, second = _probe(zip_path, cache), _probe(zip_path, cache)
    for kernel in ("top_n", "cg"):
        assert first[kernel]["misses"] > 0 and first[kernel]["hits"] == 0, first
        assert second[kernel]["hits"] > 0 and second[kernel]["misses"] == 0, second
        # the code object points at a byte-identical copy of the zipped source, in the cache folder
        assert first[kernel]["file"].startswith(cache + os.sep)
        member = first[kernel]["file"].rsplit(os.sep, 1)[1]
        with zipfile.ZipFile(zip_path) as zf:
            assert open(first[kernel]["file"], "rb").read() == zf.read(f"spark_jobs/lib/{member}")


def _zipped_kernel(tmp_path, name: str, body: str):
    """Import module ``name`` (one @cached_njit function ``f``) from a zip of its own."""
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{name}.py", "from spark_jobs.lib.jit import cached_njit\n\n@cached_njit()\n"
                                  f"def f(x):\n    return {body}\n")
    sys.path.insert(0, str(archive))
    try:
        return __import__(name).f
    finally:
        sys.path.remove(str(archive))


def test_each_source_gets_its_own_copy_and_a_source_already_on_disk_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path / "numba"))
    plus, times = _zipped_kernel(tmp_path, "k_plus", "x + 1"), _zipped_kernel(tmp_path, "k_times", "x * 3")
    assert (plus(2), times(2)) == (3, 6)  # each compiled from its own source: no stale kernel
    a, b = plus.py_func.__code__.co_filename, times.py_func.__code__.co_filename
    assert os.path.dirname(a) != os.path.dirname(b) and os.path.isfile(a) and os.path.isfile(b)
    assert source_on_disk(cg_kernels.cg_solve_block.py_func) == cg_kernels.__file__  # a file: no copy


def test_a_cache_folder_that_cannot_be_written_compiles_uncached_instead_of_failing(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(blocker / "numba"))
    f = _zipped_kernel(tmp_path, "k_uncached", "x - 1")
    assert f(5) == 4
    assert ".zip" in f.py_func.__code__.co_filename and not f.stats.cache_path  # no copy, no cache
