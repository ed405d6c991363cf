"""retain_freed_memory: freed tensor memory is reused instead of page-faulted in afresh."""

import os
import platform
import subprocess
import sys

import pytest

from posterior.training.cpu_allocator import retain_freed_memory

# Three 12 MiB tensors allocated and freed together, ten times. The baseline pins glibc's mmap
# threshold at its initial 128 KiB (MALLOC_MMAP_THRESHOLD_), so every round maps its pages anew:
# left adaptive, whether the freed 36 MiB stays mapped depends on the heap's layout and varies from
# run to run. Prints the minor page faults of the last five rounds.
FAULTS_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from posterior.training.cpu_allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
counts = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(3 << 20) for _ in range(3)]
    del tensors
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(counts[5:]))
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt thresholds are a glibc feature")


def _late_faults(mode: str) -> int:
    from conftest import ROOT
    script = FAULTS_SCRIPT.format(root=str(ROOT))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if mode == "default" else None
    done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_retained_memory_is_reused_without_page_faults():
    default = _late_faults("default")
    retained = _late_faults("retain")
    # 36 MiB a round is ~9000 pages of 4 KiB: the default faults on thousands of them each round.
    assert default > 5 * 2000, default
    assert retained < default / 50, (retained, default)


@glibc_only
def test_settings_take_effect():
    assert retain_freed_memory() is True
    assert retain_freed_memory(trim_threshold=256 << 20) is True


@pytest.mark.parametrize("bad", [-1, 2**31, 1.5, True, "1"])
def test_bad_trim_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="trim_threshold"):
        retain_freed_memory(trim_threshold=bad)
