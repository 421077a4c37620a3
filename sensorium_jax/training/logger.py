"""Metric logging: one JSON line per record (``metrics.jsonl``) and TensorBoard event files.

Only process 0 writes. The JSON lines are what the plots and reports read back.
"""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(name, float(value), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
