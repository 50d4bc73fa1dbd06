"""The five claims judged together (:func:`judge`), and their verdicts with the evidence behind
them as Markdown (:func:`render_markdown`: ``claims.md``)."""
from __future__ import annotations

import numpy as np

from harness.report.claims.context import context_claim, position_claim
from harness.report.claims.evidence import Claim, per_seed_text
from harness.report.claims.latency import constant_latency_claim, speed_claim
from harness.report.claims.recall import recall_claim
from harness.report.claims.rundata import RunData


def judge(run: RunData) -> list[Claim]:
    return [context_claim(run), position_claim(run), recall_claim(run), speed_claim(run), constant_latency_claim(run)]


def render_markdown(claims: list[Claim], note: str = "") -> str:
    """The verdicts as Markdown, after ``note`` (e.g. :meth:`RunData.judged_note`)."""
    lines = [note + "| claim | verdict | why |", "|---|---|---|"]
    lines += [f"| {c.statement} | **{c.verdict}** | {c.why} |" for c in claims]
    one_seed = [f"`{c.name}`" for c in claims if any(len(e.get("per_seed", ())) == 1 for e in c.evidence)]
    if one_seed:
        names = ", ".join(one_seed[:-1]) + " and " + one_seed[-1] if len(one_seed) > 1 else one_seed[0]
        lines += ["", (f"The intervals of {names} cover the documents, test sequences and prompts that these models "
                      "(one training seed) were scored on, not seed-to-seed variance.")]
    for c in claims:
        if c.evidence:
            lines += ["", f"`{c.name}`:", "", "| comparison | value | 95% interval | n |", "|---|---|---|---|"]
            for e in c.evidence:
                ci = "" if not np.isfinite(e["ci_low"]) else f"[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
                ci += " (spread: too few repeats for 95%)" if ci and e.get("spread") else ""
                value = f"{e['value']:+.4f}" if np.isfinite(e["value"]) else "-"  # e.g. an out-of-memory cell
                value += f" ({per_seed_text(e)})" if len(e.get("per_seed", ())) > 1 else ""
                lines.append(f"| {e['comparison']} | {value} | {ci} | {e['n']} |")
    return "\n".join(lines) + "\n"
