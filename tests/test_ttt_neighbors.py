"""ttt_neighbors and harness.data.retrieval: no-op settings change nothing, planted clusters are
retrieved, neighbour fine-tuning beats random fine-tuning, the cache and the figure."""
from __future__ import annotations

import dataclasses
import importlib.util
import random
import string

import numpy as np
import pandas as pd
import pytest
import torch

from harness.api.errors import BackendUnavailableError, ConfigError
from harness.data import retrieval
from harness.data.corpora import load_corpus
from harness.data.packing import split_documents, tokenize_documents
from harness.data.tokenizers import ByteTokenizer
from harness.report import plots
from harness.runs.evaluate import resolve_model, run_task
import tasks.ttt_neighbors as ttt  # registers the task
from tests.conftest import small_model

CLUSTERS = 4
CONTEXT = 32


@pytest.fixture(scope="module")
def clustered_corpus(tmp_path_factory) -> str:
    """Documents from 4 disjoint 6-letter alphabets (random words); the cluster is the name prefix."""
    root = tmp_path_factory.mktemp("clusters")
    rng = random.Random(0)
    for c in range(CLUSTERS):
        letters = string.ascii_lowercase[6 * c : 6 * c + 6]
        vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(12)]
        for d in range(6):
            (root / f"c{c}_{d}.txt").write_text(" ".join(rng.choice(vocabulary) for _ in range(120)))
    return str(root)


def run(model, corpus, tmp_path, **options):
    model, info = resolve_model(model, device="cpu", dtype="float32")
    options = {"corpus": corpus, "val_fraction": 0.25, "context": CONTEXT, "test_windows": 8, "train_windows": 0,
               "k": 4, "steps": 2, "batch_size": 4, "resamples": 200, "cache_dir": str(tmp_path / "cache"), **options}
    table, samples, _ = run_task("ttt_neighbors", model, info, options, device=torch.device("cpu"),
                                 dtype=torch.float32, progress=False)
    return table, samples


def value(table: pd.DataFrame, metric: str, variant: str | None = None) -> pd.Series:
    same_variant = table["variant"].isna() if variant is None else table["variant"] == variant
    rows = table[(table["metric"] == metric) & same_variant]
    assert len(rows) == 1, (metric, variant, table)
    return rows.iloc[0]


@pytest.mark.parametrize("setting", [{"k": 0}, {"lr": 0.0}, {"steps": 0}])
def test_no_op_settings_leave_the_loss_unchanged(setting, clustered_corpus, tmp_path):
    table, samples = run(small_model("full_attention"), clustered_corpus, tmp_path, **setting)
    for variant in ("neighbors", "random"):
        assert value(table, "loss_after", variant)["value"] == value(table, "loss_before")["value"]
        assert value(table, "gain", variant)["value"] == 0.0
    assert all(s["loss"]["after_neighbors"] == s["loss"]["before"] for s in samples)


def test_every_architecture(arch, clustered_corpus, tmp_path):
    """Fine-tuning runs for every registered architecture; ttt_e2e also gets its in-context gain,
    and lr 0 (the steps run, the weights must not move) changes nothing."""
    table, _ = run(small_model(arch), clustered_corpus, tmp_path, test_windows=2, lr=0.0, steps=1)
    assert (table["status"] == "ok").all()
    assert value(table, "gain", "neighbors")["value"] == 0.0
    has_inner = ttt.without_inner_updates(small_model(arch)) is not None
    assert ("in_context" in set(table["variant"].dropna())) == has_inner
    assert has_inner == (arch == "ttt_e2e")


def test_inner_lr_zero_changes_ttt_e2e_only(clustered_corpus, tmp_path):
    table, _ = run(small_model("ttt_e2e"), clustered_corpus, tmp_path, test_windows=2, k=0)
    before, no_inner = value(table, "loss_before")["value"], value(table, "loss_no_inner")["value"]
    assert no_inner != before  # a 32-token window crosses the 16-token mini-batches: updates happen
    assert value(table, "gain", "in_context")["value"] == pytest.approx(no_inner - before)


@pytest.mark.parametrize("embedder", ["hidden", "logprobs", "bytes"])
def test_neighbours_come_from_the_test_window_cluster(embedder, clustered_corpus, tmp_path):
    _, samples = run(small_model("full_attention"), clustered_corpus, tmp_path, embedder=embedder, steps=0)
    assert samples
    for s in samples:
        cluster = s["doc"].split("_")[0]
        assert [doc.split("_")[0] for doc, _ in s["neighbor_windows"]] == [cluster] * 4, s
        assert s["similarity"] == sorted(s["similarity"], reverse=True)


@pytest.mark.slow
def test_neighbour_fine_tuning_beats_random(clustered_corpus, tmp_path):
    table, _ = run(small_model("full_attention"), clustered_corpus, tmp_path, k=8, steps=4, lr=3e-3, batch_size=8)
    assert value(table, "gain", "neighbors")["value"] > 0
    assert value(table, "gain_over_random")["ci_low"] > 0


def test_embedding_the_windows_shows_a_bar(clustered_corpus, tmp_path, capsys):
    """`lcbench eval ttt_neighbors` printed nothing for minutes while it embedded its 4096 training
    windows: a CPU user could not tell it from a hang. The bar counts them, and only with progress on."""
    model, info = resolve_model(small_model("full_attention"), device="cpu", dtype="float32")
    options = {"corpus": clustered_corpus, "val_fraction": 0.25, "context": CONTEXT, "test_windows": 2,
               "train_windows": 0, "k": 2, "steps": 1, "batch_size": 2, "resamples": 20, "cache_dir": "off"}
    for progress in (False, True):
        run_task("ttt_neighbors", model, info, options, device=torch.device("cpu"), dtype=torch.float32,
                 progress=progress)
        assert ("embed (hidden)" in capsys.readouterr().err) is progress


def test_embedding_cache(tmp_path):
    model = small_model("full_attention")
    windows = torch.randint(0, 256, (5, 16))
    calls = []
    counting = retrieval.Embedder("hidden", lambda m, t: calls.append(len(t)) or retrieval._hidden(m, t))
    first = retrieval.embed_windows(model, windows, counting, batch_size=2, cache_dir=tmp_path)
    again = retrieval.embed_windows(model, windows, counting, batch_size=2, cache_dir=tmp_path)
    assert calls == [2, 2, 1] and torch.equal(first, again)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    other = small_model("full_attention", seed=1)
    bag = retrieval.get_embedder("bytes", model)
    assert retrieval.cache_key(model, windows, counting) != retrieval.cache_key(other, windows, counting)
    assert retrieval.cache_key(model, windows, bag) == retrieval.cache_key(other, windows, bag)  # ignores the model
    assert retrieval.cache_key(model, windows, bag) != retrieval.cache_key(model, windows[:, :8], bag)
    # other windows of the same shape (another document, split or tokenizer) are other embeddings
    assert retrieval.cache_key(model, windows, counting) != retrieval.cache_key(model, (windows + 1) % 256, counting)


def test_model_embedders_average_every_position():
    """``hidden`` and ``logprobs`` are mean-pooled over a window's positions (the mutation audit:
    pooling the last position alone survived every test)."""
    model, windows = small_model("swa"), torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, logits = model.hidden_states(windows)[0], model(windows)
        expected = {"hidden": sum(hidden[:, t] for t in range(10)) / 10,
                    "logprobs": sum(torch.log_softmax(logits[:, t], -1) for t in range(10)) / 10}
        for name, want in expected.items():
            torch.testing.assert_close(retrieval.get_embedder(name, model).embed(model, windows), want)


def test_bag_of_tokens_cache_is_kept_apart_by_vocabulary_size(tmp_path):
    # the bag's width is the model's vocab_size: a cached bag of another width came back stale,
    # and nearest() then failed on a shape mismatch against fresh embeddings
    windows = torch.randint(0, 256, (3, 16))
    small, large = small_model("full_attention"), small_model("full_attention", vocab_size=300)
    bag = retrieval.get_embedder("bytes", small)
    assert retrieval.embed_windows(small, windows, bag, cache_dir=tmp_path).shape == (3, 256)
    assert retrieval.embed_windows(large, windows, bag, cache_dir=tmp_path).shape == (3, 300)


def test_exact_nearest_neighbours():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    sims, idx = retrieval.nearest(torch.tensor([[3.0, 0.1]]), keys, 2)
    assert idx.tolist() == [[0, 2]]
    assert sims[0, 0] == pytest.approx(3.0 / np.hypot(3.0, 0.1))
    with pytest.raises(ConfigError, match="k=4"):
        retrieval.nearest(keys, keys, 4)
    assert retrieval.nearest(keys, keys, 3)[1][:, 0].tolist() == [0, 1, 2]  # every key may be asked for (the mutation audit)


def test_faiss_index():
    keys = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    if importlib.util.find_spec("faiss") is None:
        with pytest.raises(BackendUnavailableError, match="faiss"):
            retrieval.nearest(keys[:3], keys, 5, index="faiss")
    else:
        assert torch.equal(retrieval.nearest(keys[:3], keys, 5, index="faiss")[1],
                           retrieval.nearest(keys[:3], keys, 5)[1])


def test_tuned_parameters():
    model = small_model("ttt_e2e")
    last = model.blocks[-1]
    mlps = ttt.tuned_parameters(model, "last_mlps")
    assert {id(p) for p in mlps} == {id(p) for p in [*last.mlp.parameters(), *last.prime.parameters()]}
    assert len(ttt.tuned_parameters(model, "last_blocks", 2)) == len(list(model.blocks[-2:].parameters()))
    assert len(ttt.tuned_parameters(model, "all")) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="last_mlps"):
        ttt.TTTNeighborsOptions(tune="last_mlp")
    with pytest.raises(ConfigError, match="blocks"):
        ttt.tuned_parameters(model, "last_blocks", 99)


def test_gain_vs_size_figure(tmp_path):
    rows = [dict(run="r", model=f"{arch}:{w}", arch=arch, params=p, task="ttt_neighbors", metric="gain",
                 variant=variant, value=g, ci_low=g - 0.01, ci_high=g + 0.01, status="ok")
            for arch in ("full_attention", "ttt_e2e") for w, p, g in ((64, 1e5, 0.3), (128, 4e5, 0.2))
            for variant in ("neighbors", "random", *(["in_context"] if arch == "ttt_e2e" else []))]
    paths = ttt.gain_vs_size_figure(pd.DataFrame(rows), tmp_path / "gain_vs_size")
    assert sorted(p.name for p in paths) == ["gain_vs_size.pdf", "gain_vs_size.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ConfigError, match="no ok 'gain' rows"):
        ttt.gain_vs_size_figure(pd.DataFrame(rows).assign(task="niah"), tmp_path / "x")
    # registered: lcbench plot draws it for a table with ttt_neighbors rows, and only then
    assert plots.make_figures(pd.DataFrame(rows), tmp_path / "plot", formats=("png",)) == [
        tmp_path / "plot" / "gain_vs_size.png"]
    loss_only = pd.DataFrame([dict(run="r", model="m", arch="swa", task="loss_scaling", metric="loss", value=1.0,
                                   eval_ctx=256, status="ok")])
    assert "gain_vs_size" not in {p.stem for p in plots.make_figures(loss_only, tmp_path / "none", formats=("png",))}


def test_gain_vs_size_draws_one_panel_per_context_and_seeds_at_their_mean():
    """Rows at two lengths were joined into one zig-zag line per (arch, variant), and two seeds at one
    size drew a vertical segment, each with its own interval."""
    rows = [dict(run="r", model=f"ttt_e2e:{p}", arch="ttt_e2e", params=p, task="ttt_neighbors", metric="gain",
                 variant="neighbors", eval_ctx=ctx, seed=seed, value=g + seed, ci_low=g - 0.01, ci_high=g + 0.01,
                 status="ok")
            for ctx, g0 in ((256, 0.1), (1024, 0.3)) for p, g in ((1e5, g0), (4e5, g0 + 0.1)) for seed in (0, 1)]
    fig = ttt._gain_vs_size(pd.DataFrame(rows))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["context 256", "context 1K"]
    for ax, g0 in zip(axes, (0.1, 0.3)):
        (line,) = ax.get_lines()[:1]
        assert list(line.get_xdata()) == [1e5, 4e5]
        assert list(line.get_ydata()) == pytest.approx([g0 + 0.5, g0 + 0.6])  # the mean of seeds 0 and 1


def test_candidates_are_the_checkpoint_training_documents_when_the_held_out_split_is_narrowed(
        clustered_corpus, tmp_path):
    """A smaller val_fraction than the checkpoint's holds out fewer documents; the rest of the
    checkpoint's validation split is still text it never trained on, not a training candidate."""
    model, info = resolve_model(small_model("full_attention"), device="cpu", dtype="float32")
    info = dataclasses.replace(info, train_config={"corpus": clustered_corpus, "val_fraction": 0.5, "split_seed": 0})
    trained_on = {d.name for d in split_documents(load_corpus(clustered_corpus), 0.5, 0)[0]}
    candidates = len(ttt.cut_windows(tokenize_documents([d for d in load_corpus(clustered_corpus)
                                                          if d.name in trained_on], ByteTokenizer()), CONTEXT, 0)[0])
    options = {"corpus": clustered_corpus, "val_fraction": 0.25, "context": CONTEXT, "test_windows": 4,
               "train_windows": 0, "k": candidates, "steps": 0, "embedder": "bytes", "cache_dir": "off",
               "resamples": 10}
    _, samples, _ = run_task("ttt_neighbors", model, info, options, device=torch.device("cpu"),
                             dtype=torch.float32, progress=False)
    assert samples and all(doc in trained_on for s in samples for doc, _ in s["neighbor_windows"])


def test_a_cache_dir_that_is_a_file_is_a_clear_error(clustered_corpus, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="embedding cache folder .* is a file"):
        run(small_model("full_attention"), clustered_corpus, tmp_path, cache_dir=str(blocker / "embeddings"))



def test_the_embedding_bar_counts_windows_not_batches(monkeypatch):
    from tqdm.auto import tqdm

    counted = []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            counted.append(kwargs["total"])
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            counted.append(n)
            return super().update(n)

    monkeypatch.setattr(retrieval, "tqdm", Recording)
    model = small_model("full_attention")
    retrieval.embed_windows(model, torch.randint(0, 256, (5, 16)), retrieval.get_embedder("hidden", model),
                            batch_size=2, cache_dir=None, progress=True)
    assert counted == [5, 2, 2, 1]  # the bar's total, then each batch's windows
