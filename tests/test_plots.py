"""Paper figures and summary tables from a synthetic result table (every task, several
architectures, two sizes of one, a plugin architecture, OOM and error cells, intervals)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from harness.api import results, stats
from harness.report import plots, tables

# Few grid points: every figure is drawn twice (PNG, PDF) and drawing dominates the test's time.
LOSS_CTX = [1024, 4096, 16384]
NIAH_CTX = [1024, 4096]
DEPTHS = [0.0, 0.5, 1.0]
LAT_CTX = [1024, 4096, 16384, 32768]
# model -> (arch, params, memory horizon in tokens: how far back it still "sees")
MODELS = {
    "full_attention:small": ("full_attention", 125_000_000, math.inf),
    "swa:small": ("swa", 125_000_000, 1024),
    "mamba2:small": ("mamba2", 125_000_000, 3000),
    "gated_deltanet:small": ("gated_deltanet", 125_000_000, 5000),
    "ttt_e2e:tiny": ("ttt_e2e", 40_000_000, 8000),
    "ttt_e2e:small": ("ttt_e2e", 125_000_000, 20000),
    "my_arch:small": ("my_arch", 125_000_000, 2000),
}


def _position_loss(p: np.ndarray, horizon: float, params: int, bonus: float = 0.0) -> np.ndarray:
    size_penalty = 0.15 * (125e6 / params - 1)
    return 1.1 + 2.2 * np.minimum(p, horizon) ** -0.22 + size_penalty - bonus * np.log2(np.maximum(p / 1024, 1))


def synthetic_table() -> pd.DataFrame:
    rows = []
    for model, (arch, params, horizon) in MODELS.items():
        base = dict(run="synthetic", model=model, arch=arch, params=params, train_ctx=8192, device="cuda",
                    dtype="bfloat16", seed=0, backend="auto")
        fa = arch == "full_attention"
        # loss_scaling: overall and per log-spaced position bin; full attention OOMs at 16K
        for L in LOSS_CTX:
            where = dict(base, task="loss_scaling", eval_ctx=L)
            if fa and L == 16384:
                rows += results.status_rows(["loss"], "oom", "out of memory at 16384 tokens", **where)
                continue
            positions = np.arange(1, L)
            losses = _position_loss(positions, horizon, params, 0.006 * (arch == "ttt_e2e"))
            rows.append(results.make_row("loss", losses.mean(), ci_low=losses.mean() - 0.02,
                                         ci_high=losses.mean() + 0.02, n=8, n_tokens=8 * (L - 1), **where))
            edges = [1] + [2**k for k in range(1, int(math.log2(L)) + 1)]
            for lo, hi in zip(edges[:-1], edges[1:]):
                v = losses[lo - 1 : hi - 1].mean()
                rows.append(results.make_row("loss", v, pos_start=lo, pos_end=hi, ci_low=v - 0.03, ci_high=v + 0.03,
                                             n=8, **where))
        # niah: per depth and pooled; mamba2 errors on one multikey cell
        for variant in ("single", "multikey"):
            for L in NIAH_CTX:
                where = dict(base, task="niah", variant=variant, haystack="text", eval_ctx=L)
                if arch == "mamba2" and variant == "multikey" and L == 4096:
                    rows += results.status_rows(["gen_match", "cand_acc"], "error", "prompt too long", **where)
                    continue
                for metric, offset in (("gen_match", 0.0), ("cand_acc", 0.1)):
                    accs = []
                    for d in DEPTHS:
                        distance = (1 - d) * L
                        recall = 1.0 if distance < horizon else horizon / distance
                        acc = float(np.clip(offset + recall - 0.1 * (variant == "multikey"), 0, 1))
                        accs.append(acc)
                        rows.append(results.make_row(metric, acc, depth=d, ci_low=max(acc - 0.1, 0),
                                                     ci_high=min(acc + 0.1, 1), n=4, **where))
                    mean = float(np.mean(accs))
                    rows.append(results.make_row(metric, mean, ci_low=max(mean - 0.05, 0), ci_high=min(mean + 0.05, 1),
                                                 n=20, **where))
        # latency: full attention quadratic prefill, linear decode and state; OOM at 32K
        for T in LAT_CTX:
            where = dict(base, task="latency", eval_ctx=T, batch_size=1)
            if fa and T == 32768:
                rows += results.status_rows(tables.MEMORY + tables.TIMES, "oom", "CUDA out of memory", **where)
                continue
            scale = params / 125e6
            prefill = scale * (2e-6 * T + (4e-10 * T**2 if fa else 0) + (3e-7 * T if arch == "ttt_e2e" else 0))
            decode = scale * (8e-3 + (4e-7 * T if fa else 0) + (2e-3 if arch == "ttt_e2e" else 0))
            state = (36_864 * T if fa else 36_864 * 1024 if arch in ("swa", "ttt_e2e") else 4 * 2**20) * scale
            for metric, value in (("prefill_s", prefill), ("decode_s", decode)):
                rows.append(results.make_row(metric, value, ci_low=value * 0.97, ci_high=value * 1.04, n=5, **where))
            rows.append(results.make_row("state_bytes", state, n=1, **where))
            rows.append(results.make_row("prefill_peak_bytes", 250e6 * scale + 3 * state + 2e4 * T, n=1, **where))
            rows.append(results.make_row("decode_peak_bytes", 250e6 * scale + 1.1 * state, n=1, **where))
    return results.validate(rows)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_table()


def _stems(paths) -> set[str]:
    return {p.stem for p in paths}


# ---------------------------------------------------------------------------------------------
# Figures


def test_every_figure_is_written_as_png_and_pdf(table, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="harness.report.plots"):
        # One NIAH metric: the other draws the same code again, and drawing is the test's cost.
        paths = plots.make_figures(table, tmp_path, niah_metrics=["cand_acc"])
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    expected = {"loss_vs_context", "loss_gap", "loss_by_position", "loss_gap_by_position", "niah_heatmap_cand_acc_text",
                "niah_vs_context_cand_acc_text", "latency", "memory",
                *(f"pareto_{tables.context_label(L)}" for L in LOSS_CTX)}
    assert _stems(paths) == expected
    assert len(paths) == 2 * len(expected)
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "latency.pdf").read_bytes()[:5] == b"%PDF-"


def test_a_run_folder_gets_its_figures_in_figures(table, tmp_path):
    results.write_table(tmp_path, table[table["task"] == "loss_scaling"])
    paths = plots.make_figures(tmp_path, formats=("png",), only=["loss_vs_context"])
    assert paths == [tmp_path / "figures" / "loss_vs_context.png"]


def test_missing_data_skips_a_figure_with_a_reason(table, tmp_path, caplog):
    only_latency = table[table["task"] == "latency"]
    with caplog.at_level(logging.INFO, logger="harness.report.plots"):
        paths = plots.make_figures(only_latency, tmp_path, formats=("png",))
    assert _stems(paths) == {"latency", "memory"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    for name in ("loss_vs_context", "loss_gap", "loss_by_position", "loss_gap_by_position", "niah_heatmap",
                 "niah_vs_context", "pareto"):
        assert f"skipped figure {name}:" in messages
    assert "loss_scaling" in messages  # the reason says what to run


def test_a_rerun_removes_the_figures_it_no_longer_draws_and_keeps_others(table, tmp_path):
    latency = table[table["task"] == "latency"]
    plots.make_figures(latency, tmp_path, formats=("png", "pdf"))
    (tmp_path / "mine.png").write_bytes(b"a user's file")
    # the latency task is gone from the table: its figures would stay and look current
    paths = plots.make_figures(table[table["task"] == "loss_scaling"], tmp_path, formats=("png",),
                               only=["loss_vs_context", "latency"])
    assert _stems(paths) == {"loss_vs_context"}
    assert not (tmp_path / "latency.png").exists() and not (tmp_path / "latency.pdf").exists()
    assert (tmp_path / "memory.png").is_file()  # a figure this call did not draw is not its to remove
    assert (tmp_path / "mine.png").read_bytes() == b"a user's file"
    plots.make_figures(latency, tmp_path, formats=("png",), only=["memory"])
    assert not (tmp_path / "memory.pdf").exists() and (tmp_path / "memory.png").is_file()  # the old PDF, too


def test_without_full_attention_gap_is_skipped_and_latency_has_no_ratio_panel(table, tmp_path, caplog):
    no_fa = table[table["arch"] != "full_attention"]
    with caplog.at_level(logging.INFO, logger="harness.report.plots"):
        paths = plots.make_figures(no_fa, tmp_path, formats=("png",), only=["loss_gap", "latency"])
    assert _stems(paths) == {"latency"}
    assert "no full_attention model" in caplog.text


def test_a_metric_whose_every_cell_failed_is_skipped_but_tabled(table, tmp_path, caplog):
    failed = table[(table["task"] == "latency") & (table["status"] != "ok")]
    with caplog.at_level(logging.INFO, logger="harness.report.plots"):
        assert plots.make_figures(failed, tmp_path, formats=("png",)) == []
    assert "skipped figure latency: no measured" in caplog.text
    assert tables.summary_tables(failed)["prefill_ms"].loc[("full_attention:small", "full_attention"), 32768] == "OOM"


def test_a_model_whose_training_failed_is_named_under_the_loss_figures(table, tmp_path, monkeypatch):
    """A sweep cell whose training diverged leaves one cell_failed row: the model vanished from
    the loss figures without a word. A loss row without a context crashed the context axis."""
    drawn = {}
    monkeypatch.setattr(plots.make, "save_figure", lambda fig, stem, formats: drawn.setdefault(stem.name, fig) and [])
    loss = table[(table["task"] == "loss_scaling") & ~table["arch"].isin(["mamba2", "gated_deltanet"])]

    def failed(arch: str, metric: str) -> list[dict]:
        first = table[table["arch"] == arch].iloc[0]
        return results.status_rows([metric], "nan", "training diverged at step 3", task="loss_scaling", **{
            k: first[k] for k in ("run", "model", "arch", "params", "device", "dtype", "seed")})

    both = results.to_frame(failed("mamba2", results.CELL_FAILED) + failed("gated_deltanet", "loss"))
    plots.make_figures(pd.concat([loss, both], ignore_index=True), tmp_path, only=["loss_vs_context", "loss_gap"])
    for name in ("loss_vs_context", "loss_gap"):
        assert drawn[name]._supxlabel.get_text() == "Not shown: Mamba 2 (NaN); Gated DeltaNet (NaN)"
    drawn.clear()
    plots.make_figures(loss, tmp_path, only=["loss_vs_context"])
    assert drawn["loss_vs_context"]._supxlabel is None  # every model drawn: nothing to say


def test_pareto_does_not_score_a_model_on_the_variants_that_did_not_fail(table, tmp_path, monkeypatch):
    # mamba2's multikey cell at 4K errors: its NIAH point was the mean of 'single' alone, set beside
    # the others' mean over single and multikey (harder), and drawn as if complete
    drawn = {}
    monkeypatch.setattr(plots.make, "save_figure", lambda fig, stem, formats: drawn.setdefault(stem.name, fig) and [])
    niah_and_latency = table[table["task"].isin(["niah", "latency"])]
    plots.make_figures(niah_and_latency, tmp_path, only=["pareto"], niah_metrics=["gen_match"])
    assert set(drawn) == {"pareto_1K", "pareto_4K"}
    assert "Mamba 2 (error)" in drawn["pareto_4K"]._supxlabel.get_text()
    assert drawn["pareto_1K"]._supxlabel is None  # every variant measured: nothing left out


def test_empty_table_and_bad_names(tmp_path):
    assert plots.make_figures(results.to_frame([]), tmp_path) == []
    with pytest.raises(Exception, match="Did you mean 'latency'"):
        plots.make_figures(results.to_frame([]), tmp_path, only=["latncy"])
    with pytest.raises(Exception, match="valid: pdf, png, svg"):
        plots.make_figures(results.to_frame([]), tmp_path, formats=("jpg",))


def test_styles_are_fixed_per_architecture_and_stable_for_others(table):
    prep = tables.prepare(table)
    styles = plots.series_styles(prep)
    assert styles["full_attention:small"].color == plots.ARCH_STYLES["full_attention"][0]
    assert styles["ttt_e2e:tiny"].color == styles["ttt_e2e:small"].color
    assert styles["ttt_e2e:tiny"].linestyle != styles["ttt_e2e:small"].linestyle
    # one model per arch: the architecture's name; two sizes: the model's
    assert styles["mamba2:small"].label == "Mamba 2"
    assert {styles["ttt_e2e:tiny"].label, styles["ttt_e2e:small"].label} == {"ttt_e2e:tiny", "ttt_e2e:small"}
    assert plots.arch_style("my_arch") == plots.arch_style("my_arch")
    assert plots.arch_style("my_arch")[0] in plots.EXTRA_COLORS


def test_plugin_architectures_whose_names_hash_alike_get_different_styles(table):
    """Two plugin architectures could share a colour and marker (42 pairs), and a plugin's marker
    could be the X that marks a failed cell."""
    first: dict[tuple[str, str], str] = {}
    for i in range(100):
        name = f"plugin_{i}"
        if plots.arch_style(name) in first:
            pair = (first[plots.arch_style(name)], name)
            break
        first[plots.arch_style(name)] = name
    plugins = table[table["arch"] == "mamba2"].copy()
    both = pd.concat([table] + [plugins.assign(arch=a, model=a) for a in pair], ignore_index=True)
    styles = plots.series_styles(tables.prepare(both))
    assert (styles[pair[0]].color, styles[pair[0]].marker) != (styles[pair[1]].color, styles[pair[1]].marker)
    assert any((styles[a].color, styles[a].marker) == plots.arch_style(a) for a in pair)  # one keeps its own
    assert plots.FAIL_MARKER not in plots.EXTRA_MARKERS


def test_context_labels():
    assert [tables.context_label(n) for n in (256, 1024, 4096, 131072, 1536, 2**20)] == \
        ["256", "1K", "4K", "128K", "1.5K", "1M"]


# ---------------------------------------------------------------------------------------------
# Tables


def _hand_made() -> pd.DataFrame:
    rows = []
    for model, arch, loss, prefill in (("fa", "full_attention", (3.0, 2.9), (1.0, 4.0)),
                                       ("m2", "mamba2", (3.1, 2.8), (0.5, 1.0)),
                                       ("swa", "swa", (3.2, None), (0.25, None))):
        base = dict(run="r", model=model, arch=arch, params=100)
        for L, lv, pv in zip((1024, 4096), loss, prefill):
            if lv is None:
                rows += results.status_rows(["loss"], "oom", "out of memory", task="loss_scaling", eval_ctx=L, **base)
                rows += results.status_rows(["prefill_s"], "oom", "out of memory", task="latency", eval_ctx=L,
                                            batch_size=1, **base)
                continue
            rows.append(results.make_row("loss", lv, task="loss_scaling", eval_ctx=L, ci_low=lv - 0.01,
                                         ci_high=lv + 0.03, **base))
            rows.append(results.make_row("prefill_s", pv, task="latency", eval_ctx=L, batch_size=1, **base))
    return results.validate(rows)


def test_summary_tables_compute_gap_and_speedup():
    t = tables.summary_tables(_hand_made())
    assert set(t) == {"loss", "loss_gap", "prefill_ms", "prefill_speedup"}
    gap, speed = t["loss_gap"], t["prefill_speedup"]
    assert list(gap.index.names) == ["model", "arch"] and list(gap.columns) == [1024, 4096]
    assert list(gap.index.get_level_values("model")) == ["fa", "swa", "m2"]  # paper order
    assert gap.loc[("m2", "mamba2"), 1024] == pytest.approx(0.1)
    assert gap.loc[("m2", "mamba2"), 4096] == pytest.approx(-0.1)
    assert gap.loc[("fa", "full_attention"), 4096] == pytest.approx(0.0)
    assert speed.loc[("m2", "mamba2"), 1024] == pytest.approx(2.0)
    assert speed.loc[("m2", "mamba2"), 4096] == pytest.approx(4.0)
    assert speed.loc[("swa", "swa"), 1024] == pytest.approx(4.0)
    assert speed.loc[("swa", "swa"), 4096] == "OOM"
    assert t["loss"].loc[("swa", "swa"), 4096] == "OOM"
    assert t["loss"].attrs["ci_low"].loc[("fa", "full_attention"), 1024] == pytest.approx(2.99)
    assert t["loss"].attrs["ci_high"].loc[("fa", "full_attention"), 1024] == pytest.approx(3.03)


def test_summary_tables_of_the_synthetic_run(table):
    t = tables.summary_tables(table)
    assert set(t) == {"loss", "loss_gap", "niah_gen_match", "niah_cand_acc", "prefill_ms", "decode_ms",
                      "prefill_speedup", "decode_speedup", "prefill_peak_mib", "decode_peak_mib", "state_mib"}
    assert list(t["loss"].columns) == LOSS_CTX and len(t["loss"]) == len(MODELS)
    assert list(t["niah_cand_acc"].index.names) == ["model", "arch", "variant", "haystack"]
    assert t["niah_gen_match"].loc[("mamba2:small", "mamba2", "multikey", "text"), 4096] == "error"
    assert t["state_mib"].loc[("full_attention:small", "full_attention"), 1024] == pytest.approx(36)
    assert tables.niah_metric_names(tables.prepare(table)) == ["gen_match", "cand_acc"]
    with pytest.raises(Exception, match="Did you mean 'cand_acc'"):
        tables.niah_metric_names(tables.prepare(table), ["cand_ac"])


def test_several_series_of_one_model_and_references():
    rows = []
    for model, arch, params, backend, v in (("fa-big", "full_attention", 400, "sdpa", 2.0),
                                            ("fa-small", "full_attention", 100, "sdpa", 3.0),
                                            ("m2", "mamba2", 120, "torch", 3.3), ("m2", "mamba2", 120, "fla", 3.2)):
        rows.append(results.make_row("loss", v, run="r", model=model, arch=arch, params=params, backend=backend,
                                     task="loss_scaling", eval_ctx=1024))
    prep = tables.prepare(results.validate(rows))
    assert prep.order == ["fa-small [sdpa]", "fa-big [sdpa]", "m2 [fla]", "m2 [torch]"]
    assert prep.reference["m2 [fla]"] == "fa-small [sdpa]"  # the nearest size
    gap = tables.summary_tables(prep)["loss_gap"]
    assert gap.loc[("m2 [fla]", "mamba2"), 1024] == pytest.approx(0.2)


def test_other_tasks_get_a_table_each():
    rows = [results.make_row("score", 0.5 + i / 10, run="r", model=m, arch=a, task="lm_eval:ruler", eval_ctx=L)
            for i, (m, a) in enumerate((("fa", "full_attention"), ("m2", "mamba2"))) for L in (4096, 1024)]
    rows += [results.make_row("acc", 0.7, run="r", model="fa", arch="full_attention", task="lm_eval:hellaswag")]
    t = tables.summary_tables(results.validate(rows))
    assert set(t) == {"lm_eval_ruler_score", "lm_eval_hellaswag_acc"}
    assert list(t["lm_eval_ruler_score"].columns) == [1024, 4096]
    assert t["lm_eval_ruler_score"].loc[("m2", "mamba2"), 4096] == pytest.approx(0.6)
    assert t["lm_eval_hellaswag_acc"].loc[("fa", "full_attention"), "all"] == pytest.approx(0.7)
    assert "| fa | Full attention | 0.7000 |" in tables.render_markdown(t["lm_eval_hellaswag_acc"])
    # two scores whose names read alike as file names each keep a table (one overwrote the other)
    rows += [results.make_row("acc", 0.1, run="r", model="fa", arch="full_attention", task="lm_eval_hellaswag")]
    t = tables.summary_tables(results.validate(rows))
    assert sorted(t[k].loc[("fa", "full_attention"), "all"] for k in ("lm_eval_hellaswag_acc", "lm_eval_hellaswag_acc_2")) \
        == [pytest.approx(0.1), pytest.approx(0.7)]


def test_other_scores_keep_rows_without_a_variant_apart_from_a_variants_rows():
    # a variant column set in some rows only was no facet: 0.2 and 0.8 came out as their mean
    rows = [results.make_row("score", 0.2, run="r", model="fa", arch="full_attention", task="plug", eval_ctx=1024),
            results.make_row("score", 0.8, run="r", model="fa", arch="full_attention", task="plug", eval_ctx=1024,
                             variant="hard")]
    table = tables.summary_tables(results.validate(rows))["plug_score"]
    assert sorted(table[1024].tolist()) == [pytest.approx(0.2), pytest.approx(0.8)]


def test_other_scores_keep_position_bins_apart():
    # a plugin's per-position rows were no facet: the overall score and its bins came out as one mean
    base = dict(run="r", model="fa", arch="full_attention", task="plug", eval_ctx=1024)
    rows = [results.make_row("score", 0.5, **base),
            results.make_row("score", 0.1, pos_start=1, pos_end=512, **base),
            results.make_row("score", 0.3, pos_start=512, pos_end=1024, **base)]
    table = tables.summary_tables(results.validate(rows))["plug_score"]
    assert list(table.index.names) == ["model", "arch", "pos_start", "pos_end"]
    assert sorted(table[1024].tolist()) == [pytest.approx(0.1), pytest.approx(0.3), pytest.approx(0.5)]


@pytest.mark.parametrize("values, fmt", [
    ([0.7598, 0.0072, 0.0], ".4f"),  # columns line up on the largest value's 4 significant digits
    ([2.312, -0.5], ".3f"),
    ([1234.5, 3.0], ".1f"),  # at least one decimal
    ([3e-9, 1e-9], ".6f"),  # at most six
    ([float("nan"), 0.0], ".3f"),  # nothing to go by
])
def test_other_scores_share_one_fixed_point_format(values, fmt):
    assert tables.shared_decimals(pd.Series(values)) == fmt


def test_rendering_markdown_latex_csv(tmp_path):
    t = tables.summary_tables(_hand_made())
    md = tables.render_markdown(t["loss"])
    assert md.splitlines()[0] == "**Loss (nats/token) by evaluation context length**"
    assert "| model | arch | 1K | 4K |" in md
    assert "| fa | Full attention | 3.000 [2.990, 3.030] | 2.900 [2.890, 2.930] |" in md  # -0.01/+0.03
    assert "| OOM |" in md
    tex = tables.render_latex(t["loss_gap"])
    assert r"\toprule" in tex and r"full\_attention" not in tex and "Full attention" in tex
    assert "+0.100" in tex
    paths = tables.write_tables(t, tmp_path)
    assert len(paths) == 3 * len(t) and all(p.stat().st_size > 0 for p in paths)
    csv = pd.read_csv(tmp_path / "prefill_speedup.csv")
    assert list(csv.columns) == ["model", "arch", "1024", "4096"]
    assert "Prefill speed-up" in tables.format_tables(t)
    with pytest.raises(Exception, match="valid: csv, md, tex"):
        tables.write_tables(t, tmp_path, formats=("html",))
    # a rerun whose results no longer give a table removes the old one (it would look current)
    (tmp_path / "notes.md").write_text("mine")
    tables.write_tables({"loss": t["loss"]}, tmp_path, formats=("md",))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["loss.md", "notes.md"]


def test_heatmap_cells_print_shares_in_three_characters():
    """A zero printed as '.00'."""
    shares = (0.0, 0.004, 0.42, 0.05, 0.996, 1.0)
    assert [plots.niah._share_label(v) for v in shares] == ["0", "0", ".42", ".05", "1", "1"]


@pytest.mark.parametrize("repeats, says", [(5, True), (8, False)])
def test_timing_tables_say_when_their_intervals_are_spreads(repeats, says):
    """Over 5 repeats no interval of a median reaches 95% (the timings' range covers it 94% of the
    time): claims said so, tables printed "± h" as if it were a confidence interval."""
    times = np.linspace(0.010, 0.014, repeats)
    est = stats.bootstrap_median(times)
    rows = [results.make_row("prefill_s", est.value, ci_low=est.ci_low, ci_high=est.ci_high, n=repeats, run="r",
                             model="fa", arch="full_attention", task="latency", eval_ctx=1024, batch_size=1)]
    table = tables.summary_tables(results.validate(rows))["prefill_ms"]
    text, latex = tables.render_markdown(table), tables.render_latex(table)
    note = f"a bootstrap spread of the median over as few as {repeats} timings, not a 95% interval"
    assert (note in text) == says and (note.replace("%", r"\%") in latex) == says
    if says:
        assert "covers the median at most 94% of the time" in text


@pytest.mark.parametrize("better, quality", [("higher", (0.2, 0.5, 0.6, 0.4, 0.9)), ("lower", (3.0, 2.6, 2.5, 2.8, 2.0))])
def test_the_pareto_front_joins_the_points_no_cheaper_point_beats(better, quality):
    """Cost 1, 2, 2, 3, 4: the front runs through the first point, the better of the two at cost 2
    and the last; the one at cost 3 is beaten by a cheaper one, as is the worse at cost 2."""
    from matplotlib.figure import Figure

    series = list("abcde")
    ok = pd.DataFrame({"series": series, "value_c": [1.0, 2.0, 2.0, 3.0, 4.0], "value_q": quality,
                       **{c: math.nan for c in ("ci_low_c", "ci_high_c", "ci_low_q", "ci_high_q")}, "seeds_c": 1, "seeds_q": 1})
    ctx = plots.Context(None, {s: plots.Style("k", "o", "-", s, "k") for s in series}, [])
    ax = Figure().subplots()
    plots.pareto._pareto_panel(ax, ok, better, ctx)
    front = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(front) == 1
    assert list(front[0].get_xdata()) == [1.0, 2.0, 4.0]
    assert list(front[0].get_ydata()) == [quality[0], quality[2], quality[4]]
