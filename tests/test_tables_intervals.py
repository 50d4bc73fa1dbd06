"""The loss-gap and speed-up tables' intervals from a run's samples: paired by target window over
documents, and over timing repeats; without samples the tables print as they did."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.api import results, stats
from harness.cli import main
from harness.report import claims, tables

PAPER_SMALL = Path(__file__).resolve().parents[1] / "results" / "reference" / "paper_small"
DOCS = [f"doc{i}" for i in range(9)]
CONTEXTS = (256, 1024)


def _loss_run(gap: float = -0.04, seeds: tuple[int, ...] = (0,)) -> tuple[list[dict], list[dict]]:
    """(table rows, window samples) of full attention and TTT-E2E scored on the same windows:
    documents differ by far more than the gap (each loss's interval is wide), the gap per window
    is nearly constant (the paired one is narrow). Each training seed's models score the same
    documents (a fixed split), seed s's a little worse."""
    rng = np.random.default_rng(0)
    difficulty = dict(zip(DOCS, rng.normal(2.0, 0.3, len(DOCS))))
    rows, samples = [], []
    for seed in seeds:
        for model, shift in (("full_attention", 0.0), ("ttt_e2e", gap)):
            noise = np.random.default_rng((1 if shift else 2) + 10 * seed)
            for L in CONTEXTS:
                windows = [(doc, start, difficulty[doc] + shift + 0.01 * seed + noise.normal(0, 0.005))
                           for doc in DOCS for start in (0, 512)]
                est = stats.bootstrap_ratio([sum(w[2] for w in windows if w[0] == d) for d in DOCS], [2.0] * len(DOCS))
                rows.append(results.make_row("loss", est.value, ci_low=est.ci_low, ci_high=est.ci_high, n=len(DOCS),
                                             run="r", model=model, arch=model, task="loss_scaling", eval_ctx=L,
                                             seed=seed))
                samples += [{"run": "r", "model": model, "task": "loss_scaling", "seed": seed, "kind": "window",
                             "eval_ctx": L, "doc": doc, "start": start, "targets": "same", "scored_loss": loss}
                            for doc, start, loss in windows]
    return rows, samples


def _latency_run(repeats: int | dict[int, int], seeds: tuple[int, ...] = (0,)) -> tuple[list[dict], list[dict]]:
    """(table rows, timing samples): TTT-E2E's prefill twice as fast as full attention's, timed
    ``repeats`` times (or as many as it gives each context); seed s's timings (1 + 0.3 s) times
    slower (another process, another load)."""
    rng = np.random.default_rng(3)
    rows, samples = [], []
    for seed in seeds:
        for model, seconds in (("full_attention", 0.02), ("ttt_e2e", 0.01)):
            for L in CONTEXTS:
                n = repeats[L] if isinstance(repeats, dict) else repeats
                reps = list(seconds * (1 + 0.3 * seed) * L / 1024 * (1 + rng.normal(0, 0.02, n)))
                est = stats.bootstrap_median(reps)
                rows.append(results.make_row("prefill_s", est.value, ci_low=est.ci_low, ci_high=est.ci_high, n=n,
                                             run="r", model=model, arch=model, task="latency", eval_ctx=L,
                                             batch_size=1, seed=seed))
                samples.append({"run": "r", "model": model, "task": "latency", "seed": seed, "kind": "timing",
                                "phase": "prefill", "eval_ctx": L, "batch_size": 1, "seconds": reps})
    return rows, samples


def _cell(table, model: str, L: int) -> tuple[float, float, float]:
    key = (model, model)
    return table.loc[key, L], table.attrs["ci_low"].loc[key, L], table.attrs["ci_high"].loc[key, L]


def test_the_loss_gap_gets_a_paired_interval_that_resolves_what_the_losses_own_do_not():
    """The gap of two losses whose intervals over documents overlap, paired by window, lies below 0:
    the table printed it bare, as if nothing were known of it."""
    rows, samples = _loss_run()
    table = results.validate(rows)
    t = tables.summary_tables(table, samples=claims.RunData(table, samples))
    for L in CONTEXTS:
        _, full_low, full_high = _cell(t["loss"], "full_attention", L)
        _, ttt_low, ttt_high = _cell(t["loss"], "ttt_e2e", L)
        assert max(full_low, ttt_low) < min(full_high, ttt_high)  # the losses' own intervals overlap
        value, low, high = _cell(t["loss_gap"], "ttt_e2e", L)
        assert value == pytest.approx(-0.04, abs=0.005) and low < value < high < 0  # the paired one excludes 0
        assert np.isnan(_cell(t["loss_gap"], "full_attention", L)[1])  # the reference's own gap is exactly 0
    text = tables.render_markdown(t["loss_gap"])
    assert "a 95% bootstrap interval of the gap paired by target window over documents" in text
    assert "(each window's loss minus full attention's on it; documents resampled)" in text
    assert re.search(r"\| -0\.0\d\d (± 0\.00\d|\[-0\.0\d\d, -0\.0\d\d\]) \|", text)
    assert tables.summary_tables(table, samples=None)["loss_gap"].attrs["ci_low"].isna().all().all()


def test_a_gap_over_training_seeds_pairs_each_seed_s_windows_and_resamples_seeds_too():
    """Two seeds' models scored the same windows: each window pairs with its own seed's reference
    (the seed is part of the key), the interval resamples seeds as well as documents, and the
    footnote says the gap's interval is its own, not one over seeds."""
    rows, samples = _loss_run(seeds=(0, 1))
    table = results.validate(rows)
    gap = tables.summary_tables(table, samples=claims.RunData(table, samples))["loss_gap"]
    for L in CONTEXTS:
        value, low, high = _cell(gap, "ttt_e2e", L)
        est = claims.loss_gap(claims.RunData(table, samples), "ttt_e2e", "full_attention", L)
        assert (value, low, high) == pytest.approx((est.value, est.ci_low, est.ci_high)) and low < value < high < 0
        assert [s for s, _ in est.per_seed] == [0, 1]
    assert tables.footnotes(gap) == [
        "± and [low, high]: a 95% bootstrap interval of the gap paired by target window over documents (each window's "
        "loss minus full attention's on it; documents and training seeds resampled)",
        "A value over several training seeds (up to 2) is their mean"]


def test_a_gap_over_seeds_that_scored_different_windows_gets_its_interval():
    """Each seed reads its own held-out split: seed 1 scored one document fewer. The table's gap is
    the mean of the seeds' gaps; the samples gave the mean over all windows, another value, so the
    gap was printed bare, without a word. Each seed now weighs alike."""
    rows, samples = _loss_run(seeds=(0, 1))
    samples = [s for s in samples if not (s["seed"] == 1 and s["doc"] == DOCS[-1])]
    rows = [{**r, "value": float(np.mean([s["scored_loss"] for s in samples if (s["model"], s["eval_ctx"], s["seed"])
                                          == (r["model"], r["eval_ctx"], r["seed"])]))} for r in rows]
    table = results.validate(rows)
    run = claims.RunData(table, samples)
    gap = tables.summary_tables(table, samples=run)["loss_gap"]
    for L in CONTEXTS:
        value, low, high = _cell(gap, "ttt_e2e", L)
        est = claims.loss_gap(run, "ttt_e2e", "full_attention", L)
        assert value == pytest.approx(np.mean([v for _, v in est.per_seed]), rel=1e-9)
        assert (value, low, high) == pytest.approx((est.value, est.ci_low, est.ci_high)) and low < value < high < 0
    assert "documents and training seeds resampled" in tables.render_markdown(gap)


def test_models_named_otherwise_than_their_architecture_get_their_intervals():
    """The samples name models, not architectures: a run's models named ``fa-small`` and
    ``ttt-small`` are found by their names."""
    rows, samples = _loss_run()
    names = {"full_attention": "fa-small", "ttt_e2e": "ttt-small"}
    rows = [{**r, "model": names[r["model"]]} for r in rows]
    samples = [{**s, "model": names[s["model"]]} for s in samples]
    table = results.validate(rows)
    gap = tables.summary_tables(table, samples=claims.RunData(table, samples))["loss_gap"]
    for L in CONTEXTS:
        value, low, high = gap.loc[("ttt-small", "ttt_e2e"), L], *(gap.attrs[e].loc[("ttt-small", "ttt_e2e"), L]
                                                                   for e in ("ci_low", "ci_high"))
        assert low < value < high < 0


def test_a_gap_whose_windows_do_not_pair_stays_bare_and_the_footnote_counts_it():
    rows, samples = _loss_run()
    table = results.validate(rows)
    moved = [{**s, "start": s["start"] + 1} if s["model"] == "ttt_e2e" and s["eval_ctx"] == 1024 else s
             for s in samples]
    gap = tables.summary_tables(table, samples=claims.RunData(table, moved))["loss_gap"]
    assert _cell(gap, "ttt_e2e", 256)[1] < 0 and np.isnan(_cell(gap, "ttt_e2e", 1024)[1])
    assert "1 gap(s) without one: not scored on the same windows" in tables.render_markdown(gap)


@pytest.mark.parametrize("repeats, spread", [(3, True), (8, False), ({256: 8, 1024: 3}, True)])
def test_speedups_get_the_claims_interval_over_timing_repeats(repeats, spread):
    rows, samples = _latency_run(repeats)
    table = results.validate(rows)
    run = claims.RunData(table, samples)
    speed = tables.summary_tables(table, samples=run)["prefill_speedup"]
    for L in CONTEXTS:
        theirs, mine = run.timings("full_attention", "prefill", 1)[L], run.timings("ttt_e2e", "prefill", 1)[L]
        est = claims.speedup(theirs, mine, L)
        assert _cell(speed, "ttt_e2e", L) == pytest.approx((est.value, est.ci_low, est.ci_high))
        assert est.ci_low < est.value < est.ci_high
    text = tables.render_markdown(speed)
    fewest = min(repeats.values()) if isinstance(repeats, dict) else repeats
    assert ("a bootstrap spread of the ratio of medians (each model's timings resampled on their own) over as few "
            f"as {fewest} timings, not a 95% interval" in text) == spread
    assert ("a 95% bootstrap interval of the ratio of medians (each model's timings resampled on their own) over "
            "timing repeats" in text) == (not spread)


def _seed_medians(samples: list[dict], model: str, L: int) -> list[float]:
    return [float(np.median(s["seconds"])) for s in samples if s["model"] == model and s["eval_ctx"] == L]


@pytest.mark.parametrize("repeats, spread", [(8, False), (3, True)])
def test_a_speedup_over_seeds_gets_an_interval_of_the_value_shown(repeats, spread):
    """Over two seeds a speed-up is full attention's mean over seeds of each seed's median over the
    model's; the repeats pooled over seeds give another value, and the cell was left bare. Its
    interval resamples each seed's repeats and, the seeds disagreeing (seed 1 timed 1.3x slower),
    widens over them: it brackets the value shown. Where one seed alone was timed (1K here) the
    interval is the one-seed one, to the last digit; the footnote counts seeds and repeats."""
    rows, samples = _latency_run(repeats, seeds=(0, 1))
    rows = [r for r in rows if r["seed"] == 0 or r["eval_ctx"] == 256]
    samples = [s for s in samples if s["seed"] == 0 or s["eval_ctx"] == 256]
    table = results.validate(rows)
    run = claims.RunData(table, samples)
    speed = tables.summary_tables(table, samples=run)["prefill_speedup"]
    value, low, high = _cell(speed, "ttt_e2e", 256)
    assert value == pytest.approx(np.mean(_seed_medians(samples, "full_attention", 256))
                                  / np.mean(_seed_medians(samples, "ttt_e2e", 256)), rel=1e-12)
    pooled = [[t for s in samples if s["model"] == m and s["eval_ctx"] == 256 for t in s["seconds"]]
              for m in ("full_attention", "ttt_e2e")]
    assert abs(stats.bootstrap_median_ratio(*pooled).value - value) > 1e-6  # the premise: pooling gives another value
    assert low < value < high
    timed = [run.timings(m, "prefill", 1) for m in ("full_attention", "ttt_e2e")]
    assert [len(t[256]) for t in timed] == [2, 2] and [len(t[1024]) for t in timed] == [1, 1]
    est = claims.speedup(timed[0][256], timed[1][256], 256)
    assert (value, low, high) == pytest.approx((est.value, est.ci_low, est.ci_high))
    assert est.n == repeats and est.seeds == (2, 2)
    one = stats.bootstrap_median_ratio(timed[0][1024][0], timed[1][1024][0], claims.RESAMPLES, seed=[8, 1024])
    assert _cell(speed, "ttt_e2e", 1024) == pytest.approx((one.value, one.ci_low, one.ci_high))
    what = ("the ratio of the two models' means over training seeds (up to 2) of each seed's median (each seed's "
            "timings resampled on their own, widened to Student's t interval over the seeds' medians where a model "
            "has several)")
    interval = (f"a bootstrap spread of {what} over as few as 3 timings a seed, not a 95% interval (their range covers "
                "the median at most 75% of the time)" if spread
                else f"a 95% bootstrap interval of {what} over timing repeats")
    assert tables.footnotes(speed) == [f"± and [low, high]: {interval}", "A value over several training seeds (up to 2) "
                                       "is full attention's mean time over the model's"]


def _write_run(folder: Path, rows: list[dict], samples: list[dict]) -> None:
    results.write_table(folder, rows)
    (folder / "samples").mkdir()
    (folder / "samples" / "cell.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


def test_lcbench_table_reads_the_folders_samples(tmp_path):
    rows, samples = _loss_run()
    more_rows, more_samples = _latency_run(3)
    _write_run(tmp_path, rows + more_rows, samples + more_samples)
    out = CliRunner().invoke(main, ["table", str(tmp_path), "--no-save"])
    assert out.exit_code == 0, out.output
    assert "paired by target window over documents" in out.output
    assert "a bootstrap spread of the ratio of medians" in out.output


def test_lcbench_quick_s_tables_carry_the_intervals_lcbench_table_gives(tmp_path, capsys):
    """`lcbench quick` prints and writes its sweep's tables as `lcbench table` does: from the samples."""
    from harness import cli

    rows, samples = _loss_run()
    _write_run(tmp_path, rows, samples)
    cli._figures_and_tables(str(tmp_path))
    assert "paired by target window over documents" in capsys.readouterr().out
    written = "".join(p.read_text() for p in (tmp_path / "tables").glob("*.md"))
    assert "paired by target window over documents" in written


def _without_new_intervals(text: str) -> str:
    """The tables' text less the loss gap's and speed-ups' intervals and footnotes."""
    blocks = text.split("\n\n")
    out = []
    for i, block in enumerate(blocks):
        title = next((b for b in reversed(blocks[:i]) if b.startswith("**")), "")
        derived = "Loss gap to full attention" in title or "speed-up over full attention" in title
        if derived and ("bootstrap interval of the gap paired" in block or "spread of the ratio of medians" in block):
            continue
        out.append(re.sub(r" (± [\d.]+|\[[-\d.]+, [-\d.]+\])", "", block) if derived else block)
    return "\n\n".join(out)


def test_paper_small_prints_as_before_without_its_samples_and_only_gains_the_new_intervals_with_them(tmp_path):
    """The committed tables.md is `lcbench table` with the folder's samples; hiding them gives the
    tables as they were (byte for byte), which differ from it in the new intervals alone."""
    bare = tmp_path / "paper_small"
    shutil.copytree(PAPER_SMALL, bare, ignore=shutil.ignore_patterns("samples", "figures"))
    out = CliRunner().invoke(main, ["table", str(bare), "--no-save"])
    assert out.exit_code == 0, out.output
    committed = (PAPER_SMALL / "tables.md").read_text()
    assert "paired by target window over documents" in committed and "± and [low, high]: a bootstrap spread of the " \
        "ratio of medians" in committed
    assert "paired by target window" not in out.output and "ratio of medians" not in out.output
    assert out.output == _without_new_intervals(committed)
    assert out.output != committed


NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def test_paper_small_s_committed_tables_are_made_again_from_its_committed_samples():
    """The committed tables.md is `lcbench table` of the folder with its samples: its gap and
    speed-up intervals (and which cells have one) come out again from the files beside it, every
    number within one unit of its last printed digit (float sums may round otherwise on another CPU)."""
    out = CliRunner().invoke(main, ["table", str(PAPER_SMALL), "--no-save"])
    assert out.exit_code == 0, out.output
    committed = (PAPER_SMALL / "tables.md").read_text()
    assert NUMBER.sub("#", out.output) == NUMBER.sub("#", committed)
    for new, old in zip(NUMBER.findall(out.output), NUMBER.findall(committed), strict=True):
        last_digit = 10.0 ** -len(old.partition(".")[2])
        assert abs(float(new) - float(old)) <= last_digit * 1.0001, (new, old)


def test_speedups_timed_once_get_no_interval_and_no_footnote():
    """One timing a model gives a speed-up no interval: the cells stay bare and the table claims
    none (seventh mutation audit)."""
    rows, samples = _latency_run(1)
    table = results.validate(rows)
    speed = tables.summary_tables(table, samples=claims.RunData(table, samples))["prefill_speedup"]
    assert all(np.isnan(_cell(speed, "ttt_e2e", L)[1]) for L in CONTEXTS)
    assert speed.attrs["note"] == "" and not speed.attrs["own_interval"]


def test_a_model_timed_on_two_backends_gets_no_interval_from_its_pooled_timings():
    """The samples name the model, not its backend: its two series' timings pool, and even where
    the pooled median is each series' value, the interval over both is neither's (seventh audit)."""
    rows, samples = _latency_run(8)
    ttt = [r for r in rows if r["model"] == "ttt_e2e"]
    rows = [r for r in rows if r["model"] != "ttt_e2e"] + [{**r, "backend": b} for r in ttt for b in ("sdpa", "flex")]
    samples = samples + [s for s in samples if s["model"] == "ttt_e2e"]  # each backend timed alike
    table = results.validate(rows)
    speed = tables.summary_tables(table, samples=claims.RunData(table, samples))["prefill_speedup"]
    split = [("ttt_e2e [flex]", "ttt_e2e"), ("ttt_e2e [sdpa]", "ttt_e2e")]
    assert speed.loc[split].notna().all().all() and speed.attrs["ci_low"].loc[split].isna().all().all()
    assert speed.attrs["note"] == ""


def test_lcbench_quick_s_figures_draw_the_bands_lcbench_plot_draws(tmp_path, capsys):
    """Seventh mutation audit: the figures `lcbench quick` and a sweep draw get the samples' bands too."""
    from harness import cli

    rows, samples = _loss_run()
    _write_run(tmp_path, rows, samples)
    cli._figures_and_tables(str(tmp_path))
    drawn = (tmp_path / "figures" / "loss_gap.png").read_bytes()
    out = CliRunner().invoke(main, ["plot", str(tmp_path), "--only", "loss_gap", "--format", "png"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "figures" / "loss_gap.png").read_bytes() == drawn
