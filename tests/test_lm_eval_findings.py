"""What a new user ran into with ``lcbench lm-eval`` and lm-eval's own command line (issue 20):
a Llama-style tokenizer's BOS, model args that collide with lm-eval's options, the cuda:0 default,
"fatal: not a git repository", the README's command, the CLI's options, checkpoint tokenizers.

Needs the ``lm-eval`` extra; skipped without it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from harness.adapters.hf_export import export_hf  # noqa: E402
from harness.adapters.hf_tokenizer import byte_level_tokenizer  # noqa: E402
from harness.adapters.lm_eval import LcbenchLM, quiet_git_hash  # noqa: E402
from harness.api.task import DataOptions  # noqa: E402
from harness.data.heldout import checkpoint_tokenizer, heldout_documents  # noqa: E402
from harness.runs.evaluate import resolve_model  # noqa: E402
from harness.train import checkpoint  # noqa: E402
from tests.conftest import small_model  # noqa: E402
from tests.test_hf_lm_eval_parity import hf_scores, samples_by_doc  # noqa: E402
from tests.test_lm_eval import local_tasks  # noqa: E402,F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def llama_style_tokenizer(folder: Path, **options) -> Path:
    """Bytes plus <s> (256) and </s> (257); like Llama's, it puts <s> before every text it encodes."""
    from tokenizers import processors

    tok = byte_level_tokenizer()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", **options)
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    """(checkpoint, its tokenizer folder, its export) of a small model over the Llama-style tokenizer."""
    root = tmp_path_factory.mktemp("bos")
    tok = llama_style_tokenizer(root / "tok")
    ckpt = checkpoint.save_checkpoint(root / "ckpt", small_model("full_attention", seed=2, vocab_size=258))
    return ckpt, tok, export_hf(ckpt, root / "hf", tokenizer=str(tok))


def test_a_tokenizer_that_adds_bos_scores_as_lm_eval_hf(bos_model, local_tasks, tmp_path):
    """lm-eval's hf model puts <s> before every context and starts rolling documents from it;
    lcbench encoded without it and started from </s>, so the numbers differed."""
    from harness.adapters.lm_eval import run_lm_eval
    from harness.api import results

    ckpt, tok, folder = bos_model
    lm = LcbenchLM(checkpoint=str(ckpt), tokenizer=str(tok), device="cpu")
    assert (lm.tok.bos_id, lm.prefix_token_id, lm.add_bos) == (256, 256, True)
    assert lm.tok_encode("ab") == [256, 97, 98]
    # a text that starts with <s> gets no second one, as in lm-eval's hf model; asked for, it does
    assert lm.tok_encode("<s>ab") == [256, 97, 98]
    assert lm.tok_encode("<s>ab", add_special_tokens=True) == [256, 256, 97, 98]
    plain = LcbenchLM(checkpoint=str(ckpt), tokenizer=str(tok), device="cpu", add_bos_token="false", prefix_token=257)
    assert (plain.tok_encode("ab"), plain.prefix_token_id) == ([97, 98], 257)

    tasks = ["lcbench_test_mc", "lcbench_test_ppl"]
    run_lm_eval(ckpt, tasks, tokenizer=str(tok), include_path=local_tasks, out_dir=tmp_path / "ours")
    ours = samples_by_doc(results.read_jsonl(tmp_path / "ours" / results.SAMPLES_JSONL))
    res = hf_scores(folder, tasks, local_tasks)
    theirs = samples_by_doc(s | {"task": t} for t in tasks for s in res["samples"][t])
    assert ours.keys() == theirs.keys() and len(ours) == 9
    for key, resps in ours.items():
        assert resps == pytest.approx(theirs[key], rel=1e-6), key


def test_a_model_lcbench_trained_reads_texts_as_it_trained_without_bos(bos_model, tmp_path):
    """``lcbench train`` packs documents without a start token, each after the end token; the
    adapter put <s> (an embedding it never trained) before every text it scored."""
    _, tok, _ = bos_model
    ckpt = checkpoint.save_checkpoint(tmp_path / "trained", small_model("full_attention", seed=2, vocab_size=258),
                                      trainer_state={"train_config": {"tokenizer": str(tok), "seq_len": 64}})
    lm = LcbenchLM(checkpoint=str(ckpt), device="cpu")
    assert (lm.tok.bos_id, lm.add_bos, lm.prefix_token_id) == (256, False, 257)
    assert lm.tok_encode("ab") == [97, 98]
    asked = LcbenchLM(checkpoint=str(ckpt), device="cpu", add_bos_token="true", prefix_token=256)
    assert (asked.tok_encode("ab"), asked.prefix_token_id) == ([256, 97, 98], 256)


def test_generated_text_reads_as_lm_eval_hf_decodes_it(bos_model, tmp_path, monkeypatch):
    """lm-eval's hf model answers with ``tokenizer.decode(ids, skip_special_tokens=True)``: special
    tokens dropped, and the tokenizer's clean_up_tokenization_spaces as transformers applies it
    (transformers 5 ignores it for BPE tokenizers, Llama 3's included). lcbench kept the special
    tokens and never cleaned up, so its answers could read differently and score apart."""
    from types import SimpleNamespace

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import harness.adapters.lm_eval as adapter

    ckpt, _, _ = bos_model
    folder = llama_style_tokenizer(tmp_path / "tok", clean_up_tokenization_spaces=True)
    lm = LcbenchLM(checkpoint=str(ckpt), tokenizer=str(folder), device="cpu")
    generated = [*lm.tok.encode("4 , 2"), 256, *lm.tok.encode(" is it ?"), 257]
    theirs = HFLM.tok_decode(SimpleNamespace(tokenizer=transformers.AutoTokenizer.from_pretrained(folder)),
                             generated)
    assert lm.tok_decode(generated) == theirs and theirs.startswith("4") and "<s>" not in theirs
    assert lm.tok_decode([257], skip_special_tokens=False) == "</s>"  # the end-of-text stop string
    # and so the answer generate_until returns, whatever the model: its ids fixed here
    monkeypatch.setattr(adapter, "greedy_decode", lambda *args, **kwargs: generated)
    request = Instance("generate_until", None, ("The answer:", {"until": ["\n"], "max_gen_toks": 4}), 0)
    assert lm.generate_until([request], disable_tqdm=True) == [theirs]
    plain = LcbenchLM(checkpoint=str(ckpt), tokenizer=str(llama_style_tokenizer(tmp_path / "plain")), device="cpu")
    assert plain.tok_decode(generated) == "4 , 2 is it ?"


def test_model_args_win_over_lm_eval_options_and_cuda0_is_no_warning(tmp_path):
    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa"))
    lm_options = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}  # what lm-eval's CLI always passes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lm-eval's default cuda:0 on a CPU machine: no warning
        lm = LcbenchLM.create_from_arg_string(f"checkpoint={ckpt},batch_size=4", lm_options)
    assert lm.batch_size == 4
    if not torch.cuda.is_available():
        assert lm.device.type == "cpu"
        with pytest.warns(UserWarning, match="CUDA is not available"):  # asked for by the user: said so
            LcbenchLM.create_from_arg_string(f"checkpoint={ckpt},device=cuda", lm_options)


def test_outside_git_nothing_prints_fatal(tmp_path, monkeypatch, capfd):
    from lm_eval import evaluator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    if shutil.which("git"):  # the control: lm-eval's own lookup prints it here
        evaluator.get_git_commit_hash()
        assert "fatal: not a git repository" in capfd.readouterr().err
    with quiet_git_hash():
        assert evaluator.get_git_commit_hash() == "unknown"
    assert "fatal" not in capfd.readouterr().err


def test_readme_lm_eval_command_gives_ruler_a_tokenizer():
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("python -m harness.adapters.lm_eval"))
    match = re.search(r"tokenizer=(\S+)", line)
    assert match, line
    assert f"lcbench export-hf runs/swa-tiny {match.group(1)}" in readme  # the folder it names is made above it


def test_lm_eval_command_takes_max_length_bos_and_prefix(tmp_path, local_tasks):
    from harness.cli import main

    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("gated_deltanet"))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["lm-eval", str(ckpt), "--tasks", "lcbench_test_ppl", "--include-path",
                                       str(local_tasks), "--out", str(out), "--max-length", "16", "--no-add-bos",
                                       "--prefix-token", "32"])
    assert result.exit_code == 0, result.output
    options = json.loads((out / "run.json").read_text())["options"]
    assert (options["max_length"], options["add_bos_token"], options["prefix_token"]) == (16, False, 32)


def test_tasks_pick_up_an_exported_or_imported_checkpoint_tokenizer(tmp_path):
    tok = llama_style_tokenizer(tmp_path / "tok")
    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("mamba2", vocab_size=258))
    folder = export_hf(ckpt, tmp_path / "hf", tokenizer=str(tok))
    model, info = resolve_model(str(folder), device="cpu")  # an export is a checkpoint too
    reference, _ = resolve_model(str(ckpt), device="cpu")
    tokens = torch.randint(0, 258, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))
    assert checkpoint_tokenizer(info) == str(folder)
    tokenizer, docs = heldout_documents(DataOptions(), info, model)
    assert tokenizer.bos_id == 256 and tokenizer.vocab_size == 258 and docs
    # an imported checkpoint keeps its source's tokenizer in tokenizer/
    (ckpt / "tokenizer").mkdir()
    for f in tok.iterdir():
        (ckpt / "tokenizer" / f.name).write_bytes(f.read_bytes())
    _, info = resolve_model(str(ckpt), device="cpu")
    assert checkpoint_tokenizer(info) == str(ckpt / "tokenizer")
    # a source with only tokenizer.json: found too (it was read as bytes)
    for f in (ckpt / "tokenizer").iterdir():
        if f.name != "tokenizer.json":
            f.unlink()
    assert checkpoint_tokenizer(info) == str(ckpt / "tokenizer")
    assert heldout_documents(DataOptions(), info, model)[0].vocab_size == 258


def test_lm_eval_refuses_a_checkpoint_whose_tokenizer_changed(tmp_path):
    """Tasks refused a checkpoint whose tokenizer files changed since it trained (other ids than the
    model learnt); the lm-eval adapter read the text with them and scored it."""
    from harness.api.errors import ConfigError
    from harness.train.trainer import TrainConfig, train
    from tests.conftest import small_config
    from tests.test_own_data import write_bpe, write_corpus

    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file, seed=0)
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, val_fraction=0.5,
                      corpus=write_corpus(tmp_path / "books"), tokenizer=str(file))
    train(small_config("swa", vocab_size=512), cfg, out_dir=tmp_path / "c", progress=False)
    saved = file.read_bytes()
    write_bpe(file, seed=3)
    with pytest.raises(ConfigError, match="the checkpoint's tokenizer .*tokenizer.json' holds other files than when "
                                          "it trained"):
        LcbenchLM(checkpoint=str(tmp_path / "c"), device="cpu")
    file.write_bytes(saved)
    assert LcbenchLM(checkpoint=str(tmp_path / "c"), device="cpu").tok_encode("a b") == \
        LcbenchLM(checkpoint=str(tmp_path / "c"), tokenizer=str(file), device="cpu").tok_encode("a b")


def test_a_task_whose_yaml_lm_eval_cannot_parse_is_named_with_its_file(tmp_path):
    """A task YAML with a syntax error said "unknown lm-eval task 'broken_yaml'; did you mean
    'openai_mmlu'?": lm-eval's index drops a file it cannot parse, and the name went with it."""
    from lm_eval.tasks import TaskManager

    from harness.adapters.lm_eval_tasks import check_task_names, known_task_names
    from harness.api.errors import ConfigError

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.yaml").write_text("task: broken_yaml\n  dataset_path: [json\n")
    (tmp_path / "good.yaml").write_text("task: good_task\ndataset_path: json\noutput_type: loglikelihood\n"
                                        "doc_to_text: !function utils.f\n")
    assert "broken_yaml" in known_task_names(["broken_yaml"], [tmp_path])  # the text names it: checked again below
    index = TaskManager(include_path=str(tmp_path), include_defaults=False).all_tasks
    assert "broken_yaml" not in index
    with pytest.raises(ConfigError, match=r"lm-eval task 'broken_yaml' is named in '.*sub/broken\.yaml', which lm-eval "
                                          r"could not read: mapping values are not allowed here.*line 2"):
        check_task_names(["broken_yaml"], index, [tmp_path])
    with pytest.raises(ConfigError, match=r"unknown lm-eval task 'good_tsk'; did you mean 'good_task'"):
        check_task_names(["good_tsk"], index, [tmp_path])


def test_the_default_run_folder_is_one_per_list_of_tasks(tmp_path, monkeypatch):
    """`lcbench lm-eval M --tasks a` then `--tasks b` both wrote runs/lm_eval/M: the second run
    replaced the first's table, raw results and samples (`lcbench eval` keeps runs/eval/TASK-MODEL)."""
    import harness.adapters.lm_eval as adapter
    from harness.api import results
    from harness.cli import main

    folders = []
    monkeypatch.setattr(adapter, "run_lm_eval", lambda model, tasks, out_dir, **kw: folders.append(out_dir)
                        or results.to_frame([]))
    monkeypatch.chdir(tmp_path)
    for tasks in ("my_mc", "my_ppl", "my_mc", "a,b", "dir/t.yaml", ",".join(f"task_number_{i}" for i in range(9))):
        assert CliRunner().invoke(main, ["lm-eval", "runs/swa-tiny", "--tasks", tasks]).exit_code == 0
    assert folders[:5] == ["runs/lm_eval/my_mc-swa-tiny", "runs/lm_eval/my_ppl-swa-tiny", "runs/lm_eval/my_mc-swa-tiny",
                           "runs/lm_eval/a+b-swa-tiny", "runs/lm_eval/dir_t.yaml-swa-tiny"]
    assert re.fullmatch(r"runs/lm_eval/task_number_0\+task_number_1\+task_number_2\+task_n-[0-9a-f]{8}-swa-tiny",
                        folders[5])
