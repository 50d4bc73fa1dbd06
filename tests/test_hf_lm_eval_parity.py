"""lm-eval's own hf model on an exported checkpoint scores what ``lcbench lm-eval`` scores on the
original: a local multiple-choice task, a local rolling task and RULER niah_single_1, offline.

Needs the ``lm-eval`` extra (lm-eval with RULER's packages, transformers, and accelerate, which lm-eval's
hf model needs: without it this test fails rather than skips).
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval")
pytest.importorskip("wonderwords")

from harness.adapters.hf_export import export_hf  # noqa: E402
from harness.api import results  # noqa: E402
from harness.adapters.lm_eval import offline_nltk, quiet_git_hash, run_lm_eval, task_manager  # noqa: E402
from tests.test_lm_eval import RULER_DIR, local_tasks, trained  # noqa: E402,F401  (fixtures)


def hf_scores(folder, tasks: list[str], include: str, limit: int | None = None, **meta) -> dict:
    """lm-eval's hf model on ``folder``, as its command line builds it (model args reach tasks as metadata)."""
    from lm_eval import simple_evaluate

    model_args = {"pretrained": str(folder), "trust_remote_code": True}
    with quiet_git_hash(), offline_nltk():  # as run_lm_eval runs lm-eval: nothing downloaded
        res = simple_evaluate(model="hf", model_args=model_args, device="cpu", tasks=tasks,
                              task_manager=task_manager(tasks, [str(include)], {**model_args, **meta}), limit=limit,
                              log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=0, bootstrap_iters=1000, verbosity="WARNING")
    return res


@pytest.fixture(scope="module")
def hf_folder(trained, tmp_path_factory):
    return export_hf(trained, tmp_path_factory.mktemp("hf") / "tiny-fa-hf")


def test_multiple_choice_and_rolling_scores_equal_lm_eval_hf(trained, hf_folder, local_tasks, tmp_path):
    tasks = ["lcbench_test_mc", "lcbench_test_ppl"]
    ours = run_lm_eval(trained, tasks, include_path=local_tasks, out_dir=tmp_path / "ours")
    res = hf_scores(hf_folder, tasks, local_tasks)
    value = {(r.task.removeprefix("lm_eval:"), r.metric): r.value for r in ours.itertuples()}
    compared = set()
    for task in tasks:
        for key, v in res["results"][task].items():
            name, _, filt = key.partition(",")
            if filt == "none" and not name.endswith("_stderr") and isinstance(v, float):
                assert value[task, name] == pytest.approx(v, rel=1e-6), (task, name)
                compared.add(name)
    assert compared == {"acc", "word_perplexity", "bits_per_byte"}
    assert 0 < value["lcbench_test_ppl", "bits_per_byte"] < 8
    # every request's log-likelihood, not only the aggregates
    ours_samples = samples_by_doc(results.read_jsonl(tmp_path / "ours" / results.SAMPLES_JSONL))
    theirs_samples = samples_by_doc(s | {"task": t} for t in tasks for s in res["samples"][t])
    assert ours_samples.keys() == theirs_samples.keys() and len(ours_samples) == 6 + 3
    for key, resps in ours_samples.items():
        assert resps == pytest.approx(theirs_samples[key], rel=1e-6), key


def samples_by_doc(samples) -> dict:
    """(task, doc) -> the log-likelihoods of its requests."""
    out = {}
    for s in samples:
        resps = [r[0] if isinstance(r, (list, tuple)) else r for r in s["filtered_resps"]]
        out[s["task"].removeprefix("lm_eval:"), s["doc_id"]] = [float(r[0] if isinstance(r, (list, tuple)) else r)
                                                               for r in resps]
    return out


def test_ruler_niah_single_1_equals_lm_eval_hf(trained, hf_folder, tmp_path):
    ours = run_lm_eval(trained, ["niah_single_1"], limit=2, max_seq_lengths=[512], include_path=RULER_DIR,
                       out_dir=tmp_path / "ours")
    res = hf_scores(hf_folder, ["niah_single_1"], RULER_DIR, limit=2, max_seq_lengths=[512])
    (score,) = ours[ours.metric == "score"].value.tolist()
    assert score == pytest.approx(res["results"]["niah_single_1"]["512,none"])
    # the same prompts and the same generated text, sample by sample
    ours_resps = {s["doc_id"]: s["filtered_resps"] for s in results.read_jsonl(tmp_path / "ours" / results.SAMPLES_JSONL)}
    theirs_resps = {s["doc_id"]: s["filtered_resps"] for s in res["samples"]["niah_single_1"]}
    assert len(ours_resps) == 2 and ours_resps == theirs_resps
