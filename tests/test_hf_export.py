"""``lcbench export-hf``: every architecture as a Hugging Face folder that transformers loads
(trust_remote_code) with lcbench's own logits, greedy and sampled generation through lcbench's
prefill/decode state; and lm-eval's own hf model on the export scoring as ``lcbench lm-eval``
does on the original checkpoint (multiple choice, rolling, RULER niah_single_1), offline.

Needs the ``lm-eval`` extra (transformers, lm-eval, accelerate); skipped without it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

from harness.adapters.hf_export import MODELING_FILE, export_hf  # noqa: E402
from harness.api.decoding import greedy_decode  # noqa: E402
from harness.train import checkpoint  # noqa: E402
from tests.conftest import ARCHS, small_model  # noqa: E402


def load_export(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    """(lcbench model, its export loaded by transformers) for each architecture."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    model = small_model(request.param, seed=3)
    with torch.no_grad():  # norm gains and biases away from 1/0, so a tensor left at its initial value shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    ckpt = checkpoint.save_checkpoint(root / "ckpt", model)
    return model, load_export(export_hf(ckpt, root / "hf"))


def prompt(T: int = 37, B: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(T))


def test_the_folder_holds_what_transformers_needs(tmp_path):
    folder = export_hf(checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa")), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_lcbench.LcbenchForCausalLM"
    assert config["lcbench"]["arch"] == "swa" and config["model_type"] == "lcbench"
    assert (folder / MODELING_FILE).is_file() and (folder / "model.safetensors").is_file()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    # the byte tokenizer's BOS and EOS are "\n", lcbench's prefix token; text is encoded as bytes, nothing added
    assert (tok.bos_token_id, tok.eos_token_id) == (10, 10) == (config["bos_token_id"], config["eos_token_id"])
    assert tok("héllo\nworld").input_ids == list("héllo\nworld".encode())


def test_logits_equal_lcbench_own(exported):
    model, hf = exported
    tokens = prompt(B=2)
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert theirs.dtype == torch.float32
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)  # the same module on the same weights
    loss = hf(tokens, labels=tokens).loss
    torch.testing.assert_close(loss, model.token_losses(tokens).mean())


def test_greedy_generate_follows_lcbench_decoding(exported):
    """generate() runs on prefill + decode_step: TTT-E2E's prime MLPs keep learning across the
    mini-batch boundaries the 40 new tokens cross, exactly as in lcbench's own decoding."""
    model, hf = exported
    tokens = prompt()
    with torch.no_grad():
        logits, state = model.prefill(tokens)
        expected = greedy_decode(model, logits, state, 40)
        out = hf.generate(tokens, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out[0, : tokens.shape[1]].tolist() == tokens[0].tolist()
    assert out[0, tokens.shape[1] :].tolist() == expected


def test_sampling_draws_from_lcbench_next_token_distribution(exported):
    model, hf = exported
    tokens = prompt(21)
    torch.manual_seed(7)
    with torch.no_grad():
        out = hf.generate(tokens, max_new_tokens=12, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                          eos_token_id=None, pad_token_id=0)
    torch.manual_seed(7)  # the same draws by hand: softmax of lcbench's logits, one multinomial per token
    expected = []
    with torch.no_grad():
        logits, state = model.prefill(tokens)
        for _ in range(12):
            token = torch.multinomial(torch.softmax(logits.float(), -1), 1)[:, 0]
            expected.append(int(token[0]))
            logits, state = model.decode_step(state, token)
    assert out[0, tokens.shape[1] :].tolist() == expected


def test_padding_is_refused_and_the_export_loads_in_a_plain_process(tmp_path):
    from harness.api.errors import ConfigError

    folder = export_hf(checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("mamba2")), tmp_path / "hf")
    hf = load_export(folder)
    with pytest.raises(ConfigError, match="without padding"):
        hf(prompt(5, B=2), attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    script = ("import sys, torch, transformers; m = transformers.AutoModelForCausalLM.from_pretrained("
              "sys.argv[1], trust_remote_code=True); print(m(torch.tensor([[1, 2, 3]])).logits.shape)")
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("torch.Size([1, 3, 256])")


def test_a_tokenizer_json_file_keeps_its_start_and_end_tokens(tmp_path):
    """--tokenizer tok.json (a tokenizers file with <s>/</s>, whose ids lcbench reads): the export
    dropped both, then refused the tokenizer as having no end token."""
    from tokenizers import processors

    from harness.adapters.hf_tokenizer import byte_level_tokenizer
    from harness.data.tokenizers import load_tokenizer

    rust = byte_level_tokenizer()
    rust.add_special_tokens(["<s>", "</s>"])
    rust.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    rust.save(str(tmp_path / "tok.json"))
    ours = load_tokenizer(str(tmp_path / "tok.json"))
    assert (ours.bos_id, ours.eos_id) == (256, 257)
    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa", vocab_size=264))
    folder = export_hf(ckpt, tmp_path / "hf", tokenizer=str(tmp_path / "tok.json"))
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    assert (tok.bos_token_id, tok.eos_token_id) == (256, 257) == (config["bos_token_id"], config["eos_token_id"])
    assert tok("ab").input_ids == [256, *ours.encode("ab")]  # the start token once, as lcbench's tokenizer adds it
    # an export of another tokenizer into that folder replaces it; only the same one's is reused
    # (the mutation audit: reusing whatever export was there survived every test)
    from harness.adapters.hf_tokenizer import export_tokenizer

    export_tokenizer("byte", folder)
    assert len(transformers.AutoTokenizer.from_pretrained(str(folder))) == 256


def test_loading_an_exports_tokenizer_never_asks_to_run_its_model_code(tmp_path, monkeypatch):
    """The export's config.json names modeling_lcbench.py (auto_map), and AutoTokenizer reads the
    config: lcbench's own tokenizer loads (tokenizer=EXPORT as README shows, a re-export) stopped at
    "Do you wish to run the custom code? [y/N]", for 15 s on a terminal, to load a tokenizer."""
    from harness.data.tokenizers import load_tokenizer

    folder = export_hf(checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa")), tmp_path / "hf")
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "n")
    assert load_tokenizer(str(folder)).encode("ab") == [97, 98]
    export_hf(tmp_path / "ckpt", folder)  # again, over the earlier export and its config.json
    export_hf(folder, tmp_path / "hf2")  # the export as a checkpoint, with its tokenizer
    assert asked == []


def chat_tokenizer(folder: Path) -> Path:
    """A byte-level tokenizer folder with a chat template (its save writes chat_template.jinja)."""
    from harness.adapters.hf_tokenizer import _fast_tokenizer, byte_level_tokenizer

    fast = _fast_tokenizer(byte_level_tokenizer(), model_max_length=1024, bos_token="\n", eos_token="\n")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(str(folder))
    return folder


def test_an_export_over_an_earlier_one_replaces_its_files_and_keeps_the_users(tmp_path):
    """An export with a chat template, then one with the byte tokenizer into the same folder: the
    first one's chat_template.jinja stayed, and the byte tokenizer loaded with its chat template."""
    from harness.data.tokenizers import auto_tokenizer

    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa", vocab_size=264))
    folder = export_hf(ckpt, tmp_path / "hf", tokenizer=str(chat_tokenizer(tmp_path / "chat")))
    assert auto_tokenizer(folder).chat_template is not None
    (folder / "NOTES.md").write_text("mine")
    export_hf(ckpt, folder)
    assert auto_tokenizer(folder).chat_template is None and not (folder / "chat_template.jinja").exists()
    assert (folder / "NOTES.md").read_text() == "mine"  # a file no export wrote stays
    listed = json.loads((folder / "lcbench_export.json").read_text())["files"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*listed, "NOTES.md"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat", "ckpt", "hf"]  # no staging folder left


def test_an_export_never_replaces_a_file_that_no_export_wrote(tmp_path):
    from harness.api.errors import ConfigError

    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa", vocab_size=264))
    folder = export_hf(ckpt, tmp_path / "hf")
    (folder / "chat_template.jinja").write_text("mine")  # a name the next export writes
    with pytest.raises(ConfigError, match=r"would replace chat_template.jinja, which no earlier export there wrote"):
        export_hf(ckpt, folder, tokenizer=str(chat_tokenizer(tmp_path / "chat")))
    assert (folder / "chat_template.jinja").read_text() == "mine" and (folder / "model.safetensors").is_file()
    record = json.loads((folder / "lcbench_export.json").read_text())
    del record["files"]  # as lcbench wrote it before exports listed their files
    (folder / "lcbench_export.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"does not list the files it wrote"):
        export_hf(ckpt, folder)


def test_an_export_record_edited_to_name_outside_files_removes_none_of_them(tmp_path):
    """The next export removes the files the record lists: a record edited to list ``../x`` or an
    absolute path must not reach outside the export folder."""
    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa", vocab_size=264))
    folder = export_hf(ckpt, tmp_path / "hf")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    record_file = folder / "lcbench_export.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "files": [*record["files"], "../victim.txt", str(victim)]}))
    export_hf(ckpt, folder)
    assert victim.read_text() == "mine"


def test_an_export_killed_while_swapping_files_is_cleaned_up_by_the_next(tmp_path, monkeypatch):
    """Seventh mutation audit: while the files are swapped the record lists both exports' files,
    so the earlier one's chat_template.jinja goes with the next export after a kill; a staging
    folder a killed export left beside is cleared; a record whose files are no list is refused."""
    import harness.adapters.hf_export as hf_export
    from harness.api import staging
    from harness.api.errors import ConfigError

    ckpt = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa", vocab_size=264))
    folder = export_hf(ckpt, tmp_path / "hf", tokenizer=str(chat_tokenizer(tmp_path / "chat")))
    with monkeypatch.context() as patched:
        def killed(*_):
            raise KeyboardInterrupt
        patched.setattr(hf_export, "own_files", killed)
        with pytest.raises(KeyboardInterrupt):
            export_hf(ckpt, folder)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".hf.tmp-{int(gone.stdout)}@{staging._HOST}-abcd1234"  # as a killed export's staging folder
    stale.mkdir()
    (stale / "model.safetensors").write_text("half")
    export_hf(ckpt, folder)
    assert not (folder / "chat_template.jinja").exists() and not stale.exists()
    listed = json.loads((folder / "lcbench_export.json").read_text())["files"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(listed)
    (folder / "lcbench_export.json").write_text(json.dumps({"source": "x", "files": "config.json"}))
    with pytest.raises(ConfigError, match=r"does not list the files it wrote"):
        export_hf(ckpt, folder)
