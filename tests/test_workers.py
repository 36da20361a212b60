"""Decoding workers (core.device.worker_processes) start from a fork server, so they never inherit a lock that
another thread of the parent held at the moment of a fork; and a stuck worker ends a scoring run with a
one-line error (apps.scoring.videos.decoded_batches) instead of a silent wait."""
from __future__ import annotations

import threading
import time

import pytest
from adafocus.apps.scoring.videos import decoded_batches
from adafocus.core.device import worker_processes
from torch.utils.data import DataLoader, Dataset

HELD_BY_ANOTHER_THREAD = threading.Lock()


class NeedsTheLock(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> int:
        with HELD_BY_ANOTHER_THREAD:
            return index


class NeverDecodes(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        time.sleep(3600)
        return {}


def test_workers_do_not_inherit_a_lock_the_parent_holds():
    """A plain fork would copy the lock as held and the worker would wait for it forever (the loader's timeout
    turns that into an error here); a worker from the fork server imports this module afresh."""
    release = threading.Event()
    holder = threading.Thread(target=lambda: (HELD_BY_ANOTHER_THREAD.acquire(), release.wait(),
                                               HELD_BY_ANOTHER_THREAD.release()))
    holder.start()
    try:
        while not HELD_BY_ANOTHER_THREAD.locked():
            time.sleep(0.01)
        loader = DataLoader(NeedsTheLock(), batch_size=None, timeout=60, **worker_processes(2, NeedsTheLock))
        assert list(loader) == [0, 1, 2]
    finally:
        release.set()
        holder.join()


def test_no_workers_decode_in_the_calling_process():
    assert worker_processes(0, NeedsTheLock) == {"num_workers": 0}
    assert worker_processes(2, NeedsTheLock)["multiprocessing_context"].get_start_method() == "forkserver"


def test_a_stuck_worker_ends_scoring_with_one_line():
    with pytest.raises(ValueError, match=r"^no file decoded in 2 s: a decoding worker is stuck; the rows written"):
        list(decoded_batches(NeverDecodes(), batch_size=2, workers=1, stalled_s=2))
