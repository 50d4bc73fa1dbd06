"""Step ``ttt_speed``: TTT-E2E's inner-loop speed measurements, from ``bench.gpu.ttt_speed`` (its
own module, ``run(out_dir, budget_s, dry_run) -> DataFrame``), imported only here and only when it
is there: without it the step records that it skipped."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from bench.gpu.clock import Clock
from bench.gpu.config import KitConfig
from bench.gpu.ledger import Ledger

MODULE = "bench.gpu.ttt_speed"
TABLE = "ttt_speed.csv"
MARGIN_S = 3.0  # to write its table after it returns


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    ledger.plan([MODULE])
    if importlib.util.find_spec(MODULE) is None:
        ledger.record(MODULE, "skipped", message=f"module absent: {MODULE}")
        return
    out = work / "ttt_speed"
    out.mkdir(parents=True, exist_ok=True)
    budget = max(0.0, clock.left() - MARGIN_S)
    table = ledger.run(MODULE, lambda: importlib.import_module(MODULE).run(out, budget, dry_run=cfg.dry_run))
    if table is not None:
        table.to_csv(out / TABLE, index=False)
