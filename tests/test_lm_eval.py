"""lm-evaluation-harness on our models: the tokenizer folder, the three request types checked
against the model's own outputs, and real lm-eval runs offline (a RULER NIAH task, local
loglikelihood tasks, lm-eval's command line).

Needs the ``lm-eval`` extra (lm-eval with RULER's packages, transformers); skipped without it.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

# Nothing may be downloaded: set before lm-eval imports `datasets` / `huggingface_hub`.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("wonderwords")

import torch  # noqa: E402
from lm_eval import utils as lm_utils  # noqa: E402

from harness.adapters.hf_tokenizer import export_tokenizer  # noqa: E402
from harness.adapters.lm_eval import LcbenchLM, main, run_lm_eval  # noqa: E402
from harness.api import results  # noqa: E402
from harness.data.tokenizers import ByteTokenizer  # noqa: E402
from harness.train import TrainConfig, checkpoint, train  # noqa: E402
from tests.conftest import small_config, small_model  # noqa: E402

RULER_DIR = Path(__import__("lm_eval").__file__).parent / "tasks" / "ruler"


def requests(*args):
    return [SimpleNamespace(args=a) for a in args]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A full-attention model trained for 40 steps on the embedded corpus (about 10 s)."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny-fa"
    config = small_config("full_attention", n_layers=2)
    train(config, TrainConfig(steps=40, batch_size=8, seq_len=128, eval_every=0), out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory) -> Path:
    """lm-eval task YAMLs over JSONL files written here: nothing comes from the hub."""
    root = tmp_path_factory.mktemp("tasks")
    mc = [  # Python-looking continuation first, bytes the corpus never has second
        ("import o", ["s", "\x07"]), ("def __init__(self", [")", "\x1b"]), ("    return sel", ["f", "\x02"]),
        ("class Foo(object", [")", "\x7f"]), ("for i in ra", ["nge(", "\x10\x11("]), ("# This is a comm", ["ent", "\x03\x04\x05"]),
    ]
    (root / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": 0}) + "\n" for q, c in mc))
    docs = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "class A:\n    pass\n"]
    (root / "ppl.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    common = "test_split: test\nmetadata:\n  version: 1.0\n"
    (root / "mc.yaml").write_text(
        f"task: lcbench_test_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n" + common
    )
    (root / "ppl.yaml").write_text(
        f"task: lcbench_test_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'ppl.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n" + common
    )
    (root / "broken.yaml").write_text(
        f"task: lcbench_test_broken\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'missing.jsonl'}\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\n" + common
    )
    return root


# ---------------------------------------------------------------------------------------------
# The tokenizer folder


def test_byte_tokenizer_folder_encodes_and_decodes_like_bytes(tmp_path):
    from transformers import AutoTokenizer

    folder = export_tokenizer("byte", tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(str(folder))
    rng = random.Random(0)
    texts = ["", " leading and  double spaces ", "tabs\tand\nnewlines\r\n", "wörld 日本 \x00 😀"]
    texts += ["".join(chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0xD000), rng.randrange(0x10000, 0x10400)]))
                      for _ in range(rng.randrange(1, 40))) for _ in range(100)]
    for text in texts:
        ids = hf(text).input_ids
        assert ids == ByteTokenizer().encode(text), repr(text)
        assert hf.decode(ids) == text
    assert len(hf) == 256
    assert export_tokenizer("byte", folder) == folder  # an existing export is reused


# ---------------------------------------------------------------------------------------------
# The three requests against the model's own outputs


def reference_logprob(model, ids: list[int], n: int) -> float:
    with torch.no_grad():
        return -model.token_losses(torch.tensor([ids]))[0, -n:].sum().item()


def reference_greedy(model, ids: list[int], steps: int) -> list[int]:
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(token)
            ids.append(token)
    return out


def saved(tmp_path: Path, arch: str) -> Path:
    model = small_model(arch, seed=1)
    return checkpoint.save_checkpoint(tmp_path / arch, model)


def test_requests_reproduce_model_outputs_on_every_architecture(arch, tmp_path):
    lm = LcbenchLM(checkpoint=str(saved(tmp_path, arch)), device="cpu")
    model, tok = lm.model, ByteTokenizer()
    pairs = [("def f(x):", " return x"), ("import", " os"), ("a", "bcdefghijklmnopqrstuvwxyz" * 3), ("", "hello")]
    got = lm.loglikelihood(requests(*pairs), disable_tqdm=True)
    for (ctx, cont), (ll, _) in zip(pairs, got):
        ids = tok.encode(ctx) if ctx else [lm.prefix_token_id]
        assert ll == pytest.approx(reference_logprob(model, ids + tok.encode(cont), len(tok.encode(cont))), abs=1e-4)
    text = "a document that is scored as a whole, from the prefix token on"
    (rolled,) = lm.loglikelihood_rolling(requests((text,)), disable_tqdm=True)
    assert rolled == pytest.approx(reference_logprob(model, [lm.prefix_token_id] + tok.encode(text), len(text)), abs=1e-4)
    (generated,) = lm.generate_until(requests(("def main(", {"until": [], "max_gen_toks": 12})), disable_tqdm=True)
    # "\n", the byte tokenizer's end-of-text token (its BOS/EOS in a Hugging Face export), ends a generation
    assert generated == tok.decode(reference_greedy(model, tok.encode("def main("), 12)).split("\n")[0]


def test_batching_windows_and_stop_strings(trained):
    lm1 = LcbenchLM(checkpoint=str(trained), device="cpu", batch_size=1)
    lm4 = LcbenchLM(checkpoint=str(trained), device="cpu", batch_size=4)
    pairs = [("x" * n, " = 1\n") for n in (1, 7, 30, 3, 12)] + [("import", " sys")]
    single, batched = lm1.loglikelihood(requests(*pairs), True), lm4.loglikelihood(requests(*pairs), True)
    for (a, ga), (b, gb) in zip(single, batched):  # right padding never leaks into the scores
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    # rolling windows of max_length tokens: each window is scored on exactly its own tokens
    text = "def add(a, b):\n    return a + b\n" * 3
    ids = list(text.encode())
    windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(ids, 10, 32, 1))
    expected = sum(reference_logprob(lm1.model, ctx + cont, len(cont)) for ctx, cont in windows)
    windowed = LcbenchLM(checkpoint=str(trained), device="cpu", max_length=32).loglikelihood_rolling(requests((text,)), True)
    assert windowed[0] == pytest.approx(expected, abs=1e-3)
    assert lm1.loglikelihood_rolling(requests((text,)), True)[0] == pytest.approx(
        reference_logprob(lm1.model, [10] + ids, len(ids)), abs=1e-3)
    # a stop string cuts the text before it, and greedy decoding stops there
    free = lm1.generate_until(requests(("class A:\n", {"until": [], "max_gen_toks": 40})), True)[0]
    stop = free[5:7]
    cut = lm1.generate_until(requests(("class A:\n", {"until": [stop], "max_gen_toks": 40})), True)[0]
    assert cut == free[: free.index(stop)]


def test_bad_settings_fail_clearly(trained):
    from harness.api.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint="):
        LcbenchLM()
    with pytest.raises(ConfigError, match="max_length"):
        LcbenchLM(checkpoint=str(trained), max_length="zero")


@pytest.mark.parametrize("value", ["abc", -1, 256, "300"])
def test_a_prefix_token_outside_the_vocabulary_is_one_clear_error(value):
    """prefix_token=300 on a 256-token model reached the embedding: a bare IndexError (a device
    assert on CUDA) at the first empty context; prefix_token=abc a bare ValueError."""
    from harness.api.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"prefix_token={value!r} must be a token id from 0 to 255"):
        LcbenchLM(checkpoint="full_attention:tiny", device="cpu", prefix_token=value)
    assert LcbenchLM(checkpoint="full_attention:tiny", device="cpu", prefix_token="255").prefix_token_id == 255


def test_a_start_token_is_added_for_models_lcbench_did_not_train_and_not_for_ones_it_did(trained, monkeypatch):
    """A tokenizer with a start token (BPE, Llama's <s>): lm-eval's hf model puts it before every
    text, and so does the adapter for an imported or untrained model; a model lcbench trained
    never saw it (its documents are packed bare, each after the end token), so it reads none and
    an empty context starts from the end token (the mutation audit: with the byte tokenizer,
    which has no start token, adding it for every model changed nothing the tests saw)."""
    import harness.adapters.lm_eval as adapter

    class WithStart(ByteTokenizer):
        bos_id = 7

    monkeypatch.setattr(adapter, "model_tokenizer", lambda *args: WithStart())
    untrained, own = LcbenchLM(checkpoint="swa:tiny", device="cpu"), LcbenchLM(checkpoint=str(trained), device="cpu")
    assert (untrained.add_bos, untrained.prefix_token_id) == (True, 7)
    assert (own.add_bos, own.prefix_token_id) == (False, own.eot_token_id)


def test_a_continuation_read_in_pieces_is_greedy_only_if_every_piece_is():
    """A batch read in pieces of ``chunk`` tokens: a continuation whose first token is not the
    model's argmax but whose later tokens (in a later piece) are must not count as greedy (the
    mutation audit: keeping only the last piece's verdict survived every test)."""
    lm = LcbenchLM(checkpoint="full_attention:tiny", device="cpu", chunk=8)
    context = lm.tok_encode("hello w")  # 7 byte tokens: the continuation's first target is read in piece one

    def greedy_after(tokens: list[int], n: int) -> list[int]:
        for _ in range(n):
            tokens = tokens + [int(lm.model(torch.tensor([tokens]))[0, -1].argmax())]
        return tokens

    with torch.no_grad():
        best = greedy_after(context, 1)[-1]
        first = (best + 1) % lm.model.config.vocab_size  # not the argmax
        off_then_greedy = greedy_after(context + [first], 5)[len(context):]
        greedy = greedy_after(context, 6)[len(context):]
    answers = lm._loglikelihood_tokens([(None, context, off_then_greedy), (None, context, greedy)])
    assert [is_greedy for _, is_greedy in answers] == [False, True]


def test_a_context_cut_to_max_length_is_warned_about():
    """A context longer than max_length was cut from the left and scored, or generated from,
    without a word (lm-eval's hf model warns when it cuts a generation's context)."""
    import warnings

    lm = LcbenchLM(checkpoint="full_attention:tiny", device="cpu", max_length=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what fits is not warned about
        lm.loglikelihood(requests(("abc", "de")), True)
        # nor what fits exactly: max_length inputs predict the max_length tokens after the first
        # (the mutation audit: warning about, or refusing, this one survived every test)
        lm.loglikelihood(requests(("a", "bcdefghi")), True)
        lm.generate_until(requests(("abc", {"until": [], "max_gen_toks": 2})), True)
    with pytest.warns(UserWarning, match=r"1 of 2 loglikelihood requests do not fit max_length=8: the longest has 21 tokens"):
        lm.loglikelihood(requests(("a" * 20, "b"), ("abc", "de")), True)
    with pytest.warns(UserWarning, match=r"1 of 1 generate_until requests do not fit max_length=8: the longest has 20 tokens"):
        lm.generate_until(requests(("a" * 20, {"until": [], "max_gen_toks": 2})), True)


def test_a_generation_keeps_the_last_context_tokens_that_leave_room_for_its_new_ones():
    """With max_length 8 and 3 new tokens, a 20-byte context is cut to its last 5 tokens (the
    mutation audit: cutting it to 8 left no room, cutting from the right read the wrong end)."""
    lm = LcbenchLM(checkpoint="swa:tiny", device="cpu", max_length=8)
    given = []
    lm.greedy_generate = lambda ids, max_new, stop: given.append(list(ids)) or ""
    context = "abcdefghijklmnopqrst"
    with pytest.warns(UserWarning, match="do not fit max_length=8"):
        lm.generate_until(requests((context, {"until": [], "max_gen_toks": 3})), True)
    assert given == [lm.tok_encode(context)[-5:]]


def test_a_generation_from_an_empty_context_starts_from_the_prefix_token():
    """As a log-likelihood's empty context: the model reads the prefix token, not nothing (the
    mutation audit: dropping the prefix survived every test)."""
    lm = LcbenchLM(checkpoint="swa:tiny", device="cpu")
    given = []
    lm.greedy_generate = lambda ids, max_new, stop: given.append(list(ids)) or ""
    lm.generate_until(requests(("", {"until": [], "max_gen_toks": 3})), True)
    assert given == [[lm.prefix_token_id]]


def test_a_generation_ends_before_the_first_stop_string_in_it(monkeypatch):
    """Two stop strings that one token completes ("b" and "ab"): the text ends before the one that
    starts first, as lm-eval's hf model cuts it (the mutation audit: cutting at the other one
    survived every test, which used one stop string)."""
    import harness.adapters.lm_eval as adapter

    lm = LcbenchLM(checkpoint="swa:tiny", device="cpu")
    monkeypatch.setattr(adapter, "greedy_decode", lambda *args, **kwargs: list(b"xab"))
    assert lm.greedy_generate(lm.tok_encode("def"), 8, ["b", "ab"]) == "x"
    assert lm.greedy_generate(lm.tok_encode("def"), 8, ["ab", "b"]) == "x"


def test_max_new_tokens_caps_a_generation_as_max_gen_toks_does():
    """A task's or --gen_kwargs' max_new_tokens (transformers' name, which lm-eval's hf model
    takes as max_gen_toks) was ignored: lcbench generated up to its own 256 tokens."""
    lm = LcbenchLM(checkpoint="swa:tiny", device="cpu")
    asked = []  # the number of new tokens each generation may make, as the decoder is given it
    lm.greedy_generate = lambda ids, max_new, stop: asked.append(max_new) or ""
    lm.generate_until(requests(*[("def f(x):", {"until": [], key: 3})
                                 for key in ("max_gen_toks", "max_new_tokens", "max_tokens")], ("a", {})), True)
    assert asked == [3, 3, 3, 256]


def test_a_context_of_spaces_alone_reads_from_the_prefix_token(tmp_path):
    """lm-eval moves a context's trailing spaces into the continuation, so a context of spaces
    alone (" ", "\\n") reached the model as no tokens: a bare RuntimeError from gather. It is an
    empty context: read from the prefix token, as lm-eval reads one."""
    lm = LcbenchLM(checkpoint=str(saved(tmp_path, "swa")), device="cpu", batch_size=2)
    got = lm.loglikelihood(requests((" ", "ab"), ("\n\n", "c"), ("import", " os")), True)
    for (ll, _), ids, n in zip(got, ([10, 32, 97, 98], [10, 10, 10, 99], list(b"import os")), (3, 3, 3)):
        assert ll == pytest.approx(reference_logprob(lm.model, ids, n), abs=1e-4)



def test_long_sequences_are_read_in_pieces_and_score_as_whole(arch, tmp_path):
    """A rolling document (one window without max_length) or a long context went through one
    forward pass: logits for every position (16K tokens at a 32K vocabulary: 4 GB more memory than
    reading it in pieces; 128K tokens of Llama 3's vocabulary do not fit an H200). Sequences longer
    than ``chunk`` are now read through forward_chunk, as loss_scaling reads long windows."""
    path = str(saved(tmp_path, arch))
    whole, pieces = (LcbenchLM(checkpoint=path, device="cpu", batch_size=2, chunk=c) for c in (0, 24))
    widths = []  # of every read of the model: none longer than a piece
    for method in ("forward", "forward_chunk"):
        real = getattr(pieces.model, method)
        setattr(pieces.model, method,
                lambda tokens, *state, real=real: widths.append(tokens.size(1)) or real(tokens, *state))
    pairs = [("def f(x):\n" * 6, " return x\n" * 5), ("import os", " sys"), ("a" * 30, "b")]
    text = "a document of many more tokens than one piece holds, scored in a single window\n" * 2
    for lm in (whole, pieces):
        lm.scores = lm.loglikelihood(requests(*pairs), True), lm.loglikelihood_rolling(requests((text,)), True)
    assert widths and max(widths) <= 24
    (lls, rolled), (lls_whole, rolled_whole) = pieces.scores, whole.scores
    for (ll, greedy), (ll_whole, greedy_whole) in zip(lls, lls_whole):
        assert ll == pytest.approx(ll_whole, abs=1e-4) and greedy == greedy_whole
    assert rolled[0] == pytest.approx(rolled_whole[0], abs=1e-3)
    assert rolled[0] == pytest.approx(reference_logprob(whole.model, [10] + list(text.encode()), len(text)), abs=1e-3)


def test_a_misspelt_model_arg_is_named_with_the_arg_meant():
    """lm-eval hands every --model_args entry to the model, and task settings may ride along, so
    unknown ones are a warning, not an error; but `max_lenght=64` was ignored with a warning that
    did not say which arg was meant, and every context ran uncapped."""
    with pytest.warns(UserWarning, match=r"ignores args \['max_lenght', 'tokenizer_backend'\] \(they still "
                                         r"reach tasks as metadata\); did you mean 'max_length' for 'max_lenght'\?$"):
        LcbenchLM(checkpoint="full_attention:tiny", device="cpu", max_lenght=64, tokenizer_backend="huggingface")


# ---------------------------------------------------------------------------------------------
# Real lm-eval runs, offline


def test_ruler_niah_end_to_end(trained, tmp_path):
    out = tmp_path / "ruler"
    # RULER's own folder as include path: the task is found without indexing all of lm-eval's tasks
    table = run_lm_eval(trained, ["niah_single_1"], limit=2, max_seq_lengths=[512, 768], out_dir=out,
                        include_path=RULER_DIR)
    scores = table[table.metric == "score"].sort_values("eval_ctx")
    assert scores.eval_ctx.tolist() == [512, 768]
    assert scores.n.tolist() == [2, 2]  # the limit applies to each length
    assert (scores.status == "ok").all() and scores.value.between(0, 1).all()
    assert set(table.task) == {"lm_eval:niah_single_1"} and set(table.arch) == {"full_attention"}
    assert table.train_ctx.tolist() == [128] * len(table) and table.model.iloc[0] == "tiny-fa"
    reread = results.read_table(out)
    assert len(reread) == len(table)
    samples = results.read_jsonl(out / results.SAMPLES_JSONL)
    assert sorted(s["eval_ctx"] for s in samples) == [512, 512, 768, 768]
    assert all(isinstance(s["filtered_resps"][0], str) for s in samples)
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "run.json").is_file()


def test_ruler_downloads_no_nltk_resource_and_says_how_to_install_it(trained, monkeypatch):
    """Loading RULER's prepare_niah called ``nltk.download("punkt_tab")`` whenever punkt_tab was
    missing, so a run (and this suite) fetched it from the network, or printed nltk's error where
    there is none, even for niah_single_1, which never splits sentences."""
    import nltk
    from nltk import downloader

    # lm-eval loads YAML `!function` files by path but caches them in sys.modules under these names,
    # and niah_utils imports prepare_niah by name: without them RULER's modules load afresh
    for name in ("lm_eval.tasks.ruler.prepare_niah", "lm_eval.tasks.ruler.niah_utils",
                 "lm_eval.tasks.ruler.common_utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    fetched = []

    def download(*args, **kwargs):
        fetched.append(args)
        return True

    # every way in: the module's name, its alias, and the class (``nltk.download`` was bound at import)
    monkeypatch.setattr(nltk, "download", download)
    monkeypatch.setattr(downloader, "download", download)
    monkeypatch.setattr(downloader.Downloader, "download", download)
    real_find = nltk.data.find

    def find(resource, *args, **kwargs):  # punkt_tab missing on any machine
        if "punkt" in str(resource):
            raise LookupError(f"Resource {resource!r} not found (the test hides it)")
        return real_find(resource, *args, **kwargs)

    monkeypatch.setattr(nltk.data, "find", find)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = run_lm_eval(trained, ["niah_single_1"], limit=1, max_seq_lengths=[512], include_path=RULER_DIR)
    assert fetched == []
    told = [str(w.message) for w in caught if "punkt_tab" in str(w.message)]
    assert len(told) == 1, told  # once
    assert re.search(r"download 'punkt_tab'.*downloads nothing at run time.*RULER's essay haystacks"
                     r".*`python -m nltk\.downloader punkt_tab`", told[0]), told[0]
    assert "lm_eval.tasks.ruler.prepare_niah" in sys.modules  # it really loaded again
    scores = table[table.metric == "score"]
    assert scores.status.tolist() == ["ok"] and scores.value.between(0, 1).all()
    assert nltk.download is download  # given back after the run


def test_a_task_missing_an_nltk_resource_fails_with_the_command_that_installs_it(tmp_path, monkeypatch):
    """An essay task then failed inside nltk with its advice to download from Python (row message
    cut at 500 characters of nltk's banner) instead of lcbench's install command."""
    import lm_eval
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # no nltk data on any machine

    def split_sentences(**kwargs):  # what nltk's sent_tokenize looks up as RULER's essay haystack is built
        return nltk.data.find("tokenizers/punkt_tab/english/")

    monkeypatch.setattr(lm_eval, "simple_evaluate", split_sentences)
    table = run_lm_eval("full_attention:tiny", ["niah_single_2"], limit=1, max_seq_lengths=[256],
                        include_path=RULER_DIR, device="cpu")
    (row,) = table[table.metric == "score"].itertuples()
    assert row.status == "error"
    assert row.message.startswith("LookupError: nltk resource 'punkt_tab' is not installed: lcbench downloads nothing")
    assert "`python -m nltk.downloader punkt_tab`" in row.message


def test_lm_evals_own_command_line_downloads_no_nltk_resource_either(monkeypatch):
    """``python -m harness.adapters.lm_eval`` runs lm-eval's command line; a task module it loads
    that calls ``nltk.download`` must fetch nothing there as well, and say how to install it."""
    import lm_eval.__main__
    import nltk

    fetched, seen = [], []

    def download(*args, **kwargs):
        fetched.append(args)
        return True

    def cli_evaluate():  # as a RULER module loads under lm-eval's command line
        seen.append(list(sys.argv[1:]))
        return nltk.download("punkt_tab")

    monkeypatch.setattr(nltk, "download", download)
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", cli_evaluate)
    monkeypatch.setattr(sys, "argv", ["lcbench-lm-eval"])
    with pytest.warns(UserWarning, match=r"download 'punkt_tab'.*`python -m nltk\.downloader punkt_tab`"):
        main(["--model", "lcbench", "--tasks", "niah_single_1"])
    assert seen == [["--model", "lcbench", "--tasks", "niah_single_1"]]
    assert fetched == []
    assert nltk.download is download  # given back after the run


def test_a_task_that_fails_at_the_first_length_still_runs_at_the_others(tmp_path, monkeypatch):
    """--lengths 768,512 where 768 ran out of memory: 512 never ran (only tasks that gave per-length
    metrics at the first length went on), so the table lacked it without a row saying so."""
    import lm_eval

    real, calls = lm_eval.simple_evaluate, []

    def oom_first(**kwargs):
        calls.append(kwargs["task_manager"].metadata["max_seq_lengths"])
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", oom_first)
    table = run_lm_eval("full_attention:tiny", ["niah_single_1"], limit=1, max_seq_lengths=[768, 512],
                        include_path=RULER_DIR, device="cpu")
    assert calls == [[768], [512]]
    status = {r.eval_ctx: r.status for r in table[table.metric == "score"].itertuples()}
    assert status == {768: "oom", 512: "ok"}


def test_loglikelihood_tasks_end_to_end(trained, local_tasks, tmp_path):
    table = run_lm_eval(trained, "lcbench_test_mc,lcbench_test_ppl,lcbench_test_broken", include_path=local_tasks,
                        out_dir=tmp_path / "ll")
    value = {(r.task.removeprefix("lm_eval:"), r.metric): r for r in table.itertuples()}
    acc = value["lcbench_test_mc", "acc"]
    assert acc.n == 6 and acc.value >= 5 / 6  # 40 steps on Python source tell code from control bytes
    assert acc.ci_low <= acc.value <= acc.ci_high  # value ± 1.96 stderr (0 when every answer is right)
    # bits per byte from lm-eval equals the model's own mean loss over the documents (from "\n")
    lm = LcbenchLM(checkpoint=str(trained), device="cpu")
    docs = [json.loads(line)["text"] for line in (local_tasks / "ppl.jsonl").read_text().splitlines()]
    nll = sum(-reference_logprob(lm.model, [10] + list(d.encode()), len(d.encode())) for d in docs)
    bpb = value["lcbench_test_ppl", "bits_per_byte"]
    assert bpb.value == pytest.approx(nll / sum(len(d.encode()) for d in docs) / math.log(2), rel=1e-4)
    assert 0 < bpb.value < 8
    broken = value["lcbench_test_broken", "score"]
    assert broken.status == "error" and "missing.jsonl" in broken.message


def test_a_misspelt_task_is_bad_input_naming_the_close_match(local_tasks, tmp_path, monkeypatch):
    """--tasks lcbench_test_mx became an error row (KeyError "Spec ... is not a registered
    task/group/tag name") after the model loaded: work that failed, exit 1, no suggestion. And the
    byte tokenizer's export to a temporary folder (a run without an output folder) was left behind."""
    import gc
    import tempfile

    from harness.api.errors import ConfigError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown lm-eval task 'lcbench_test_mx'; did you mean 'lcbench_test_mc'\?"):
        run_lm_eval("full_attention:tiny", ["lcbench_test_mc", "lcbench_test_mx"], include_path=local_tasks,
                    device="cpu")
    gc.collect()
    assert not list(tmp_path.glob("lcbench-tok-*"))


def test_a_missing_checkpoint_leaves_no_run_folder(local_tasks, tmp_path):
    """`lcbench lm-eval runs/swa-tny ...` made its run folder runs/lm_eval/swa-tny before the model
    was looked for: the failed run left it empty, and the next error's listing of runs/ showed it."""
    from harness.api.errors import CheckpointError

    out = tmp_path / "runs" / "lm_eval" / "swa-tny"
    with pytest.raises(CheckpointError, match=r"'.*swa-tny' does not exist"):
        run_lm_eval(str(tmp_path / "swa-tny"), ["lcbench_test_mc"], include_path=local_tasks, out_dir=out,
                    device="cpu")
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_that_cannot_be_written_is_refused_before_lm_eval_runs(local_tasks, tmp_path, monkeypatch):
    """The run folder is still checked once the model has loaded: one below a file is bad input
    naming it, before any task is evaluated (not an OSError from the writes at the end)."""
    import lm_eval

    from harness.api.errors import ConfigError

    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: pytest.fail("evaluated"))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"run folder .*notes\.txt"):
        run_lm_eval("full_attention:tiny", ["lcbench_test_mc"], include_path=local_tasks,
                    out_dir=tmp_path / "notes.txt" / "run", device="cpu")


def test_a_misspelt_task_fails_before_the_model_loads_or_lm_eval_indexes_its_tasks(monkeypatch):
    """--tasks hellaswg failed only after the model had loaded and lm-eval's TaskManager had parsed
    its ~14,000 task files (35 s on 2 busy cores, about 2 minutes seen): names are read from the
    files' text first."""
    import lm_eval.tasks

    import harness.adapters.lm_eval as adapter
    from harness.api.errors import ConfigError

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **kw: pytest.fail("lm-eval indexed its tasks"))
    monkeypatch.setattr(adapter, "LcbenchLM", lambda *a, **kw: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match=r"unknown lm-eval task 'hellaswg'; did you mean 'hellaswag'\?"):
        run_lm_eval("full_attention:tiny", "hellaswag,hellaswg", device="cpu")


def test_task_names_read_from_yaml_text_are_the_names_lm_eval_indexes(tmp_path, monkeypatch):
    """Every shape a name takes in lm-eval's own files: quoted keys, tags in an included file that
    is not a .yaml, flow and block lists, a group (whose inline tasks are no names to ask for)."""
    from lm_eval.tasks import TaskManager

    from harness.adapters import lm_eval_tasks

    files = {
        "quoted.yaml": '"task": "quoted_task"\n"tag": "quoted_tag"\n',
        "_base_yaml": "tag:\n  - base_tag_1\n  - base_tag_2  # a comment\noutput_type: generate_until\n",
        "sub/included.yaml": "include: ../_base_yaml\ntask: included_task\n",
        "flow.yaml": "task: flow_task\ntag: [flow_a, flow_b]\n",
        "group.yaml": "group: my_group\ntask:\n  - flow_task\n  - task: inline_task\n    dataset_path: x\n",
        "__pycache__/skipped.yaml": "task: skipped\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    index = set(TaskManager(include_path=str(tmp_path), include_defaults=False).all_tasks)
    assert index == {"quoted_task", "quoted_tag", "base_tag_1", "base_tag_2", "included_task", "flow_task", "flow_a",
                     "flow_b", "my_group"}
    assert lm_eval_tasks.task_names([tmp_path]) == index
    # the user's own folders first: when they hold every task, lm-eval's ~14,000 files are not read
    monkeypatch.setattr(lm_eval_tasks, "builtin_tasks_folder", lambda: pytest.fail("lm-eval's tasks were read"))
    assert lm_eval_tasks.known_task_names(["my_group", "flow_a"], [str(tmp_path)]) == index


@pytest.mark.slow
def test_every_name_lm_eval_indexes_is_found_in_its_yaml_text():
    """The quick check refuses no name lm-eval knows (its index parses every file: about 30 s)."""
    from lm_eval.tasks import TaskManager

    from harness.adapters.lm_eval_tasks import builtin_tasks_folder, task_names

    missing = set(TaskManager().all_tasks) - task_names([builtin_tasks_folder()])
    assert not missing, sorted(missing)[:20]


def test_an_empty_task_name_in_a_list_is_refused_as_other_list_options_refuse_it():
    """`tasks="a,,b"` ran a and b: the empty item was dropped without a word."""
    from harness.api.errors import ConfigError

    with pytest.raises(ConfigError, match=r"option 'tasks' has an empty item in 'hellaswag,,ruler'"):
        run_lm_eval("full_attention:tiny", "hellaswag,,ruler", device="cpu")


def test_lm_eval_command_line_finds_lcbench(trained, local_tasks, tmp_path, monkeypatch):
    """lm-eval's own command line (all its tasks indexed), with --model lcbench."""
    out = tmp_path / "cli"
    main(["--model", "lcbench", "--model_args", f"checkpoint={trained}", "--batch_size", "2", "--device", "cpu",
          "--tasks", "lcbench_test_mc", "--include_path", str(local_tasks), "--limit", "4",
          "--output_path", str(out)])
    (written,) = out.rglob("results_*.json")
    res = json.loads(written.read_text())["results"]["lcbench_test_mc"]
    assert 0.5 <= res["acc,none"] <= 1


def test_task_names_skip_comments_and_yml_files_and_follow_an_include_cycle_once(tmp_path, monkeypatch):
    """Seventh mutation audit: a value line's comment names nothing, a .yml file is no task file
    (as lm-eval's index has it), files that include each other are read once each; a task given
    as a YAML file's path is known without reading lm-eval's own tasks."""
    from lm_eval.tasks import TaskManager

    from harness.adapters import lm_eval_tasks

    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "commented.yaml").write_text("task: commented_task # not_a_task\n")
    (tmp_path / "own" / "other.yml").write_text("task: yml_task\n")
    index = set(TaskManager(include_path=str(tmp_path / "own"), include_defaults=False).all_tasks)
    assert index == {"commented_task"} and lm_eval_tasks.task_names([tmp_path / "own"]) == index
    (tmp_path / "cycle").mkdir()
    (tmp_path / "cycle" / "a.yaml").write_text("include: b.yaml\ntask: task_a\n")
    (tmp_path / "cycle" / "b.yaml").write_text("include: a.yaml\ntag: tag_b\n")
    assert lm_eval_tasks.task_names([tmp_path / "cycle"]) == {"task_a", "tag_b"}
    monkeypatch.setattr(lm_eval_tasks, "builtin_tasks_folder", lambda: pytest.fail("lm-eval's tasks were read"))
    path = str(tmp_path / "own" / "commented.yaml")
    known = lm_eval_tasks.known_task_names([path], [str(tmp_path / "own")])
    lm_eval_tasks.check_task_names([path], known)
