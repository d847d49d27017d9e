"""Where metrics go: ``metrics.jsonl`` and TensorBoard event files in the workdir
(process 0 only), and one readable line per epoch on the console."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax


class MetricWriter:
    """Appends ``{"step", "split", ...}`` records to ``<workdir>/metrics.jsonl``
    and scalars to TensorBoard (when tensorboardX is installed)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            print("tensorboardX is not installed: metrics go to metrics.jsonl only.")

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
