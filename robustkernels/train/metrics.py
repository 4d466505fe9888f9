"""Top-k accuracy and the per-epoch log file (JSONL or CSV)."""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["topk_correct", "EpochLog"]


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...]) -> list[Tensor]:
    """Number of rows whose label is among the ``k`` largest logits, for each ``k`` (a 0-d tensor each).

    ``k`` larger than the number of classes counts every row.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [N, kmax]
    hit = top == target.unsqueeze(1)
    return [hit[:, : min(k, kmax)].any(dim=1).sum().to(torch.float64) for k in ks]


class EpochLog:
    """One record per epoch, kept in :attr:`history` and appended to ``log.jsonl`` or ``log.csv``.

    The file is rewritten from :attr:`history` on every write, so a resumed run's log holds
    exactly the epochs of the uninterrupted run.
    """

    def __init__(self, output_dir: str, fmt: str = "jsonl", enabled: bool = True) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"log_format must be 'jsonl' or 'csv', got {fmt!r}")
        self.path = os.path.join(output_dir, f"log.{fmt}")
        self.fmt = fmt
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if self.fmt == "jsonl":
                for rec in self.history:
                    f.write(json.dumps(rec) + "\n")
            else:
                keys = list(dict.fromkeys(k for rec in self.history for k in rec))
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.history)
        os.replace(tmp, self.path)
