"""One BLAS thread for numpy, set at run time.

Every matrix lbagent multiplies in numpy is small (policy layers over at most a few dozen rows),
where OpenBLAS's thread pool costs more than it saves: measured here, a 16x256 @ 256x384 float32
product took 0.65 ms threaded and 0.08 ms on one thread, and on a busy host the threaded actor slowed
sim-train's collection to 130 env steps/s. One thread also makes float results independent of the
pool size, so a seeded training run is reproducible whoever starts it. ``OPENBLAS_NUM_THREADS`` only
works before numpy loads; this works after, through the library numpy actually loaded.
"""

from __future__ import annotations

import ctypes

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def limit_blas_threads(threads: int = 1) -> bool:
    """Set the thread count of every OpenBLAS numpy has loaded; False when none was found."""
    import numpy  # noqa: F401 - make sure numpy's BLAS is loaded

    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    done = False
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                done = True
                break
    return done
