"""``torch_threads(n)``: run a block with ``n`` torch threads (None: unchanged), restoring the count after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
