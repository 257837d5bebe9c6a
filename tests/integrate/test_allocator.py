"""glibc malloc thresholds in sweep workers (stosim.integrate.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from stosim.integrate.allocator import FIXED_BY_ENVIRONMENT, _mallopt, heap_for_temporaries

glibc = pytest.mark.skipif(_mallopt() is None, reason="needs glibc's mallopt (Linux)")


def test_nothing_is_set_where_the_environment_leaves_malloc_alone():
    assert heap_for_temporaries({"OMP_NUM_THREADS": "1"}) is False


@glibc
@pytest.mark.parametrize("name", FIXED_BY_ENVIRONMENT)
def test_thresholds_are_set_where_the_environment_fixes_them(name):
    assert heap_for_temporaries({name: "65536"}) is True


@glibc
def test_tensor_sized_temporaries_stop_faulting_fresh_pages():
    """With MALLOC_TRIM_THRESHOLD_=65536 (dask's nanny) every 400 KiB temporary is a new mapping whose ~100
    pages fault on first touch; after heap_for_temporaries() they are reused heap blocks (page-fault counts,
    not times)."""
    code = textwrap.dedent(
        """
        import resource
        import numpy as np
        from stosim.integrate.allocator import heap_for_temporaries

        def faults(rounds=200):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(rounds):
                a = np.empty(50_000)  # 400 KiB
                a[:] = 1.0
                del a
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        faults(5)
        fixed = faults()
        assert heap_for_temporaries()
        faults(5)
        print(fixed, faults())
        """
    )
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    fixed, heap = map(int, out.stdout.split())
    assert fixed >= 200 * 50  # at least 50 of the ~98 pages of every block fault
    assert heap < 200  # the heap block is reused: almost no new pages
