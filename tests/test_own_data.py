"""A researcher's own corpus and tokenizer, from local paths: what README's "point --corpus at your
own text ... and --tokenizer at a local Hugging Face tokenizer" promises, end to end."""
from __future__ import annotations

import json

import pytest
import torch

from harness import data
from harness.api.errors import ConfigError
from harness.api.interface import LCModel, ModelConfig
from harness.api.task import DataOptions
from harness.data import Document
from harness.data.corpora import CorpusWarning
from harness.data.heldout import heldout_documents, training_documents
from harness.runs.evaluate import resolve_model, run_eval
from harness.train import checkpoint
from harness.train.trainer import TrainConfig, prepare_data, train
from tests.conftest import small_config

tokenizers = pytest.importorskip("tokenizers")

WORDS = "the quick brown fox jumps over a lazy dog while seven magic numbers hide in quiet harbor text".split()
DIGITS = "0123456789"


def _texts(seed: int, n: int = 40) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(WORDS), (n, 30), generator=g).tolist()
    return [" ".join(WORDS[i] for i in row) + f" {DIGITS[seed % 10]}{DIGITS}.\n" for row in pick]


def write_bpe(path, seed: int = 0, vocab_size: int = 300, whitespace: bool = False):
    """A BPE tokenizer.json trained here on our own text. ``whitespace``: the `tokenizers`
    quickstart's (a Whitespace pre-tokenizer, which drops spaces and newlines; no decoder)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if whitespace:
        tk = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "[CLS]", "[SEP]"])
    else:
        tk = tokenizers.Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_texts(seed), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tk.save(str(path))
    return tk


def write_corpus(folder, n: int = 6, words: int = 600, seed: int = 100) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        body = " ".join(WORDS[j] for j in torch.randint(len(WORDS), (words,), generator=g).tolist())
        (folder / f"book{i}.txt").write_text(f"Book {i}, café Zürich.\n{body}\n", encoding="utf-8")
    return str(folder)


# -- a tokenizer rewritten at the same path -------------------------------------------------------


def test_a_tokenizer_rewritten_at_the_same_path_is_not_served_from_the_token_cache(tmp_path):
    # the cache was keyed by the tokenizer's path: a retrained tokenizer.json got the old ids back
    # (ids past its vocabulary, or silently other tokens)
    file = tmp_path / "tokenizer.json"
    doc = Document("d", "the quick brown fox jumps 0123456789.\n")
    write_bpe(file, seed=0)
    first = data.tokenize_documents([doc], data.load_tokenizer(str(file)))[0].tolist()
    write_bpe(file, seed=3, whitespace=True)
    tok = data.load_tokenizer(str(file))
    assert tok.encode(doc.text) != first  # another tokenizer now
    assert data.tokenize_documents([doc], tok)[0].tolist() == tok.encode(doc.text)


def test_resume_with_a_tokenizer_whose_file_changed_is_refused(tmp_path):
    # only the corpus's content was checked: the rest of the run trained on other token ids
    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file, seed=0)
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, val_fraction=0.5,
                      corpus=write_corpus(tmp_path / "books"), tokenizer=str(file))
    model_config = small_config("swa", vocab_size=512)
    train(model_config, cfg, out_dir=tmp_path / "c", progress=False)
    resumed = TrainConfig(**{**cfg.to_dict(), "steps": 2})
    saved = file.read_bytes()
    write_bpe(file, seed=3)
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer .* other tokens than when the checkpoint"):
        train(model_config, resumed, out_dir=tmp_path / "c", resume=True, progress=False)
    file.write_bytes(saved)  # restored: it resumes
    assert train(model_config, resumed, out_dir=tmp_path / "c", resume=True, progress=False).step == 2


def test_a_sweep_whose_tokenizer_file_changed_trains_a_new_model(tmp_path):
    # a model's identity held the tokenizer's path only: the sweep kept the checkpoint trained
    # with the old tokenizer and scored it with the new one
    from harness.runs import sweep

    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file, seed=0)
    spec = sweep.SweepSpec.from_dict({
        "name": "own", "train": {"steps": 1, "corpus": write_corpus(tmp_path / "books"), "tokenizer": str(file)},
        "models": [{"arch": "swa"}, {"arch": "swa", "untrained": True, "name": "random"}],
        "tasks": [{"task": "loss_scaling", "options": {"tokenizer": str(file)}}]})
    before = sweep.plan(spec)
    config, folder = before[0].model.model_config(), before[0].model.checkpoint_dir(tmp_path)
    write_bpe(file, seed=3)
    after = sweep.plan(spec)
    assert after[0].model.model_config() == config  # the same vocabulary size
    assert after[0].key != before[0].key and after[0].model.checkpoint_dir(tmp_path) != folder
    assert after[1].key != before[1].key  # a task's own tokenizer too


def test_a_tokenizer_json_files_fingerprint_covers_the_config_beside_it(tmp_path):
    """A tokenizer.json file takes its end token from the tokenizer_config.json beside it, so an
    edited config packs documents with another separator; the fingerprint ignored it, so caches
    and sweep keys reused the other separator's ids."""
    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file)
    config = file.with_name("tokenizer_config.json")
    alone = data.tokenizer_fingerprint(file)
    config.write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    with_config = data.tokenizer_fingerprint(file)
    config.write_text(json.dumps({"eos_token": "</s>"}))
    assert len({alone, with_config, data.tokenizer_fingerprint(file)}) == 3
    assert data.load_tokenizer(str(file)).name.endswith(data.tokenizer_fingerprint(file))


# -- a tokenizer folder ------------------------------------------------------------------------------


def test_a_folder_with_a_tokenizer_json_finds_its_end_token_as_the_file_does(tmp_path):
    # through transformers (a folder) the end token was None, through `tokenizers` (the file) it
    # was <|endoftext|>: the same tokenizer packed documents with or without separators
    pytest.importorskip("transformers")
    write_bpe(tmp_path / "tokenizer.json")
    as_file, as_folder = data.load_tokenizer(str(tmp_path / "tokenizer.json")), data.load_tokenizer(str(tmp_path))
    assert as_file.eos_id is not None
    assert (as_folder.eos_id, as_folder.vocab_size) == (as_file.eos_id, as_file.vocab_size)


# -- records whose text is in another field ----------------------------------------------------------


def test_records_with_their_text_in_another_field_are_named_after_the_corpus_path(tmp_path):
    # load_corpus's text_field reached no command, spec or task option: a JSONL or Parquet corpus
    # without a "text" field could not be used, and the error suggested a field nothing could pass
    file = tmp_path / "notes.jsonl"
    texts = [f"note {i}: the quick brown fox " * 20 for i in range(4)]
    file.write_text("".join(json.dumps({"id": i, "content": t}) + "\n" for i, t in enumerate(texts)))
    with pytest.raises(ConfigError, match=f"Did you mean text field 'content'\\? Name it after the corpus: "
                                          f"'{file}#content'"):
        data.load_corpus(str(file))
    assert [d.text for d in data.load_corpus(f"{file}#content")] == texts
    assert data.corpus_fingerprint(f"{file}#content") != data.corpus_fingerprint(f"{file}#id")
    assert data.corpus_fingerprint(str(file)) == data.corpus_fingerprint(str(file))  # no field: as before
    prepared = prepare_data(TrainConfig(corpus=f"{file}#content", seq_len=32, val_fraction=0.5))
    assert prepared.train.numel() + prepared.val.numel() > 0
    with pytest.raises(ConfigError, match="text field 'nope' not found .* fields there: id, content"):
        data.load_corpus(f"{file}#nope")
    (tmp_path / "book.txt").write_text("plain text")
    with pytest.raises(ConfigError, match="'book.txt' is a text file: a text field .*'content'.* records"):
        data.load_corpus(f"{tmp_path / 'book.txt'}#content")
    # a folder of text files took the field and ignored it (a single text file is refused, above)
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text("plain text")
    with pytest.raises(ConfigError, match="folder .*books' holds no .jsonl or .parquet records: a text field "
                                          r"\('content'\)"):
        data.load_corpus(f"{books}#content")
    (books / "b.jsonl").write_text('{"content": "a record"}\n')
    assert [d.text for d in data.load_corpus(f"{books}#content")] == ["plain text", "a record"]


# -- NIAH with a BPE tokenizer -------------------------------------------------------------------------


class InductionOracle(LCModel):
    """Predicts the token that followed the longest earlier match of what it read last: it copies a
    needle's value after the answer start, whatever the tokenizer."""

    def __init__(self, vocab_size: int):
        super().__init__(ModelConfig(arch="induction", vocab_size=vocab_size))

    def _logits(self, seq: list[int]) -> torch.Tensor:
        logits = torch.full((1, self.config.vocab_size), -30.0)
        for k in range(min(16, len(seq) - 1), 0, -1):
            match = next((p for p in range(len(seq) - 1, k - 1, -1) if seq[p - k : p] == seq[-k:]), None)
            if match is not None:
                logits[0, seq[match]] = 0.0
                break
        return logits

    def prefill(self, tokens):
        seq = tokens[0].tolist()
        return self._logits(seq), {"seq": seq}

    def decode_step(self, state, token):
        seq = state["seq"] + [int(token[0])]
        return self._logits(seq), {"seq": seq}


@pytest.mark.parametrize("whitespace", [False, True], ids=["byte_level", "whitespace"])
def test_niah_generation_is_matched_through_the_tokenizer(tmp_path, whitespace):
    # a tokenizer that does not give text back as it was (the `tokenizers` quickstart's drops spaces:
    # '4821937' decodes as '4 8 2 1 9 3 7') scored gen_match 0 for a model that copied every value
    file = tmp_path / "tok" / "tokenizer.json"
    tok = write_bpe(file, whitespace=whitespace)
    options = {"corpus": write_corpus(tmp_path / "books"), "tokenizer": str(file), "val_fraction": 0.5,
               "contexts": "400", "depths": "0,1", "samples": 2, "variants": "single,multikey",
               "haystacks": "text", "rank": False}
    table = run_eval("niah", InductionOracle(tok.get_vocab_size()), None, options, progress=False).table
    assert (table["status"] == "ok").all()
    assert (table.loc[table["metric"] == "gen_match", "value"] == 1.0).all()


# -- evaluating on a corpus of one's own -----------------------------------------------------------


def test_a_checkpoint_evaluated_on_another_corpus_reads_all_of_it_and_none_of_its_training_text(tmp_path):
    # a PG-19-like layout: trained on train/, evaluated on test/. The test books were split again by
    # the checkpoint's val_fraction, so most were silently dropped; and the folder above train/ was
    # split by its own names, so books the checkpoint trained on were scored as held-out
    books = tmp_path / "pg19"
    train_dir, test_dir = write_corpus(books / "train", n=4), write_corpus(books / "test", n=5, seed=200)
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, val_fraction=0.5,
                      corpus=train_dir)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False)
    info = resolve_model(str(tmp_path / "c"))[1]
    _, held = heldout_documents(DataOptions(corpus=test_dir), info)
    assert sorted(d.name for d in held) == sorted(d.name for d in data.load_corpus(test_dir))
    trained_on = {d.text for d in data.split_documents(data.load_corpus(train_dir), 0.5, 0)[0]}
    assert trained_on
    with pytest.warns(CorpusWarning, match=f"{len(trained_on)} of the 9 documents of corpus .*pg19' are text the "
                                           r"checkpoint trained on \(e.g. 'train/book"):
        _, held = heldout_documents(DataOptions(corpus=str(books)), info)
    assert len(held) == 9 - len(trained_on) and not {d.text for d in held} & trained_on
    # a split asked for explicitly is still that split; test-time training's neighbours come from
    # the checkpoint's own training text
    _, held = heldout_documents(DataOptions(corpus=test_dir, val_fraction=0.4), info)
    assert len(held) < 5
    _, held = heldout_documents(DataOptions(corpus=test_dir), info)
    pool = training_documents(DataOptions(corpus=test_dir), info, held)
    assert {d.text for d in pool} == trained_on
    # its training corpus moved away: the texts it trained on are still known (recorded digests),
    # where reading the training split again could only warn that it could not check
    import shutil

    shutil.copytree(train_dir, tmp_path / "copy")
    shutil.rmtree(train_dir)
    with pytest.warns(CorpusWarning, match=f"{len(trained_on)} of the 4 documents of corpus .*copy' are text the "
                                           "checkpoint trained on"):
        _, held = heldout_documents(DataOptions(corpus=str(tmp_path / "copy")), info)
    assert len(held) == 4 - len(trained_on) and not {d.text for d in held} & trained_on


# -- long steps show progress ----------------------------------------------------------------------


def test_tokenizing_a_corpus_shows_progress(tmp_path, monkeypatch):
    # a BPE tokenizes about 1 MB/s here: a PG-19-sized corpus kept `lcbench train` silent for hours
    from harness.data import packing

    bars = []

    class Bar:
        def __init__(self, total=None, disable=False, **kwargs):
            self.total, self.disable, self.n, self.kwargs = total, disable, 0, kwargs
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(packing, "tqdm", Bar)
    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file)
    corpus = write_corpus(tmp_path / "books")
    prepare_data(TrainConfig(corpus=corpus, tokenizer=str(file), seq_len=32, val_fraction=0.5), progress=True)
    chars = sum(len(d.text) for d in data.load_corpus(corpus))
    shown = [b for b in bars if not b.disable]
    assert sum(b.total for b in shown) == sum(b.n for b in shown) == chars
    assert all(b.kwargs.get("delay", 0) > 0 for b in shown)  # a corpus tokenized at once shows none


@pytest.mark.parametrize("kind", ["corpus", "tokenizer"])
def test_a_checkpoints_relative_data_path_read_from_elsewhere_says_whose_it_is(tmp_path, monkeypatch, kind):
    # `lcbench train --corpus books/` keeps the path as given; evaluated from another folder, the
    # error read "corpus 'books' does not exist", a corpus the user never gave to `lcbench eval`
    from harness.train.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "books")
    write_bpe(tmp_path / "tok" / "tokenizer.json")
    save_checkpoint(tmp_path / "ck", small_model_for_vocab(512), trainer_state={"train_config": {
        "seq_len": 32, "corpus": "books", "tokenizer": "tok/tokenizer.json", "val_fraction": 0.5, "seed": 0}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / kind).mkdir()  # not what the checkpoint means either
    monkeypatch.chdir(elsewhere)
    relative = {"corpus": "books", "tokenizer": "tok/tokenizer.json"}[kind]
    other = {"tokenizer": str(tmp_path / "tok" / "tokenizer.json")} if kind == "corpus" else {
        "corpus": str(tmp_path / "books")}
    with pytest.raises(ConfigError, match=f"the checkpoint's {kind}, '{relative}' \\(a relative path, "
                                          f"read from where it trained\\), cannot be read from .*elsewhere.*"
                                          f"give the task's '{kind}' option"):
        run_eval("loss_scaling", tmp_path / "ck", None, {"contexts": "16", **other}, progress=False)


def small_model_for_vocab(vocab_size: int):
    from harness.api.registry import build_model

    torch.manual_seed(0)
    return build_model(small_config("swa", vocab_size=vocab_size)).eval()


def test_evaluating_a_checkpoint_whose_tokenizer_file_changed_is_refused(tmp_path):
    # a tokenizer retrained at the same path read the held-out text into other ids than the model
    # learnt: the numbers came out, wrong
    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file, seed=0)
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, val_fraction=0.5,
                      corpus=write_corpus(tmp_path / "books"), tokenizer=str(file))
    train(small_config("swa", vocab_size=512), cfg, out_dir=tmp_path / "c", progress=False)
    options = {"contexts": "16", "tokens_per_context": 64}
    saved = file.read_bytes()
    write_bpe(file, seed=3)
    with pytest.raises(ConfigError, match="the checkpoint's tokenizer .*tokenizer.json' holds other files than when "
                                          "it trained"):
        run_eval("loss_scaling", tmp_path / "c", None, options, progress=False)
    file.write_bytes(saved)
    assert run_eval("loss_scaling", tmp_path / "c", None, options, progress=False).table["status"].eq("ok").all()


def test_copies_of_a_document_fall_on_one_side_of_the_split():
    # a code tree holds the same LICENSE or __init__.py in many folders, a book corpus the same book
    # twice: split by name, one copy trained and another was scored as held-out
    docs = [Document(f"pkg{i}/LICENSE", "the same licence text\n") for i in range(4)]
    docs += [Document(f"pkg{i}/main.py", f"print({i})\n") for i in range(8)]
    for seed in range(20):
        train_docs, val_docs = data.split_documents(docs, 0.3, seed)
        assert not {d.text for d in train_docs} & {d.text for d in val_docs}, seed
        assert train_docs and val_docs


def test_a_model_trained_in_python_is_evaluated_on_its_own_held_out_documents(tmp_path):
    # run_eval on result.model knew nothing of its training: the split took seed 0 and val_fraction
    # 0.1, so a model trained with another seed was scored on documents it trained on
    corpus = write_corpus(tmp_path / "books", n=10, words=300)
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, seed=3, val_fraction=0.3,
                      corpus=corpus)
    result = train(small_config("swa"), cfg, progress=False)
    trained_on = {d.name for d in data.split_documents(data.load_corpus(corpus), 0.3, 3)[0]}
    documents = {d.name for d in data.load_corpus(corpus)}
    for given in ({"corpus": corpus}, {}):  # its own corpus, given or found
        samples = run_eval("loss_scaling", result.model, None, {"contexts": "16", "tokens_per_context": 640, **given},
                           progress=False).samples
        scored = {s["doc"] for s in samples if s["kind"] == "document"}
        assert scored and scored <= documents and not scored & trained_on, given


def test_a_model_smaller_than_its_tokenizer_is_refused_before_the_corpus_is_tokenized(tmp_path, monkeypatch):
    # the check came after tokenizing the whole corpus (hours for PG-19 with a BPE); the preset's
    # vocab_size of 256 is what a Python user gets who forgets to size it to the tokenizer
    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file)
    cfg = TrainConfig(steps=1, seq_len=32, corpus=write_corpus(tmp_path / "books"), tokenizer=str(file))
    monkeypatch.setattr(data, "tokenize_documents", lambda *a, **k: pytest.fail("tokenized before the check"))
    with pytest.raises(ConfigError, match=r"model vocab_size=256 is smaller than the tokenizer's 300 \(.*tokenizer"
                                          r"\.json'\): make vocab_size at least 300"):
        train(small_config("swa", vocab_size=256), cfg, progress=False)


def test_text_trained_on_stays_out_of_the_held_out_split_after_the_corpus_changed(tmp_path):
    """Records are named by line: a line inserted above moved every later record's name, so each
    was held out or not afresh, and text the checkpoint trained on was scored as held-out without
    a word. A checkpoint now records digests of the texts it trained on, and evaluation leaves
    them out, saying so; one without that record (older) is warned of."""
    import warnings

    from harness.train import checkpoint

    file = tmp_path / "notes.jsonl"
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(120)) + f" {i}" for i in range(40)]
    file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, val_fraction=0.3,
                      corpus=str(file))
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False)
    options = {"contexts": "16", "tokens_per_context": 64}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)  # unchanged: nothing to say
        run_eval("loss_scaling", tmp_path / "c", None, options, progress=False)
    _, info = resolve_model(str(tmp_path / "c"))
    before = heldout_documents(DataOptions(), info)[1]
    trained_on = {d.text for d in training_documents(DataOptions(), info, before)}
    assert len(info.trained_data["train_text_digests"]) == len(trained_on)

    file.write_text(json.dumps({"text": "a note put first"}) + "\n" + file.read_text())
    with pytest.warns(CorpusWarning, match=r"\d+ of the \d+ documents of the held-out split of the checkpoint's "
                                           r"corpus .*notes.jsonl', which holds other files than when it trained "
                                           r"\(fingerprint \w+ -> \w+\) are text the checkpoint trained on .*; they "
                                           r"are left out"):
        _, held = heldout_documents(DataOptions(), info)
    assert held and not trained_on & {d.text for d in held}

    # a checkpoint from before the record: the change is said, the held-out split is as drawn now
    state = json.loads((tmp_path / "c" / checkpoint.TRAINER_FILE).read_text())
    del state["train_text_digests"]
    (tmp_path / "c" / checkpoint.TRAINER_FILE).write_text(json.dumps(state))
    _, older = resolve_model(str(tmp_path / "c"))
    with pytest.warns(CorpusWarning, match=r"holds other files than when it trained .* may be text it trained on"):
        _, held = heldout_documents(DataOptions(), older)
    assert trained_on & {d.text for d in held}  # what it warns of


# -- what a corpus folder's fingerprint reads ------------------------------------------------------


def test_a_corpus_folders_git_metadata_and_bytecode_leave_its_fingerprint_alone(tmp_path):
    # the fingerprint hashed every file under the folder, also the ones loading skips: in a code
    # corpus that is a git checkout, `git status` (its index) or running the code (__pycache__)
    # made `train --resume` refuse "the corpus holds other text", and reran a sweep's cells
    corpus = tmp_path / "repo"
    write_corpus(corpus, n=4, words=200)
    before, docs = data.corpus_fingerprint(str(corpus)), data.load_corpus(str(corpus))
    digest = __import__("hashlib").sha256()
    data.hash_files(corpus, digest)
    assert before == digest.hexdigest()[:16]  # a folder with nothing skipped: the fingerprint it always had
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=32, eval_every=0, eval_batches=1, val_fraction=0.5,
                      corpus=str(corpus))
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False)
    for name, content in ((".git/index", b"DIRC\0"), (".DS_Store", b"\0\1"),
                          ("__pycache__/book0.cpython-312.pyc", b"\0"), ("sub/.book.txt.swp", b"b0nano")):
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(content)
    assert data.load_corpus(str(corpus)) == docs
    assert data.corpus_fingerprint(str(corpus)) == before
    resumed = TrainConfig(**{**cfg.to_dict(), "steps": 2})
    assert train(small_config("swa"), resumed, out_dir=tmp_path / "c", resume=True, progress=False).step == 2
    (corpus / "book0.txt").write_text("other text\n")  # what loading reads still counts
    assert data.corpus_fingerprint(str(corpus)) != before


def test_renaming_a_corpus_file_changes_its_fingerprint(tmp_path):
    """A file's name is its document's name, which decides the split: the same bytes under another
    name are another corpus (the mutation audit: hashing the bytes without the names survived)."""
    corpus = tmp_path / "books"
    write_corpus(corpus, n=3, words=50)
    before = data.corpus_fingerprint(str(corpus))
    (corpus / "book2.txt").rename(corpus / "book9.txt")  # still read last: the same bytes in the same order
    assert data.corpus_fingerprint(str(corpus)) != before
