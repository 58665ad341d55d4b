"""dense.core.host_memory: the entry scripts make glibc keep the memory of large tensors (faster CPU
steps)."""

import subprocess
import sys
import textwrap

import pytest

import dense.cli.runner as cli
from dense.core import host_memory

GLIBC = sys.platform.startswith("linux")


def mmapped_bytes_after_malloc(set_thresholds: bool) -> int:
    """In a fresh interpreter: bytes glibc serves by mmap after one 64 MiB malloc (mallinfo2.hblkhd)."""
    code = textwrap.dedent(f"""
        import ctypes, importlib.util, os
        for name in {host_memory.USER_SETTINGS!r}:
            os.environ.pop(name, None)
        # the module alone, not the dense package (whose torch import would allocate first)
        spec = importlib.util.spec_from_file_location("host_memory", {host_memory.__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if {set_thresholds}:
            assert module.keep_large_allocations()
        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        libc.malloc.restype = ctypes.c_void_p
        block = libc.malloc(64 * 2**20)
        print(libc.mallinfo2().hblkhd)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc exists on Linux only; elsewhere the call is a no-op")
def test_a_large_block_comes_from_the_heap_once_the_thresholds_are_raised():
    assert mmapped_bytes_after_malloc(set_thresholds=False) >= 64 * 2**20  # glibc's default: mapped
    assert mmapped_bytes_after_malloc(set_thresholds=True) < 64 * 2**20  # now from the heap


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert host_memory.keep_large_allocations() is False


def test_the_entry_scripts_set_it_before_running(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_large_allocations", lambda: calls.append("allocator"))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli.main(
        lambda: calls.append("hydra main"), str(cli.Path(cli.__file__).resolve().parents[1] / "train.py")
    )
    assert calls == ["allocator", "hydra main"]
