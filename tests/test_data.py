"""harness.data: tokenizers, corpora, splits, packing, batches, report."""
from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest
import torch

from harness import data
from harness.api.errors import ConfigError, LcbenchError
from harness.data import Document


# -- tokenizers ---------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip():
    tok = data.load_tokenizer()
    assert isinstance(tok, data.ByteTokenizer) and isinstance(tok, data.Tokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("byte", 256, None)
    text = "plain ascii, café, 日本語, emoji 🙂\n\ttabs"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.encode_tensor(text).tolist() == ids
    assert tok.decode(ids[:-1] + [0xC3]).endswith("\ufffd")  # a cut character decodes, replaced
    assert tok.decode([104, 300, 105]) == "h\ufffdi"  # ids past 255 too


def _write_tokenizer_json(path, special=("<|endoftext|>",)):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(["hello world, the quick brown fox"] * 20, trainer=trainer)
    tk.save(str(path))
    return tk


def test_hf_tokenizer_from_tokenizer_json(tmp_path, monkeypatch):
    file = tmp_path / "tokenizer.json"
    reference = _write_tokenizer_json(file)
    tok = data.load_tokenizer(str(file))
    assert isinstance(tok, data.HFTokenizer) and isinstance(tok, data.Tokenizer)
    assert tok.eos_id == reference.token_to_id("<|endoftext|>")
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True)
    text = "hello world — non-ASCII too: café"
    ids = tok.encode(text)
    assert len(ids) < len(text.encode("utf-8"))  # merges happened
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "fox"]) == [ids, tok.encode("fox")]
    docs = [Document("a", text), Document("b", "the fox")]
    assert [t.tolist() for t in data.tokenize_documents(docs, tok)] == [ids, tok.encode("the fox")]
    # A folder with tokenizer.json loads with `tokenizers` when `transformers` is missing.
    monkeypatch.setitem(sys.modules, "transformers", None)
    folder_tok = data.load_tokenizer(str(tmp_path))
    assert folder_tok.encode(text) == ids and folder_tok.eos_id == tok.eos_id


def test_hf_tokenizer_folder_uses_transformers(tmp_path, monkeypatch):
    calls = []

    class FakeAuto:
        eos_token_id = 2

        @classmethod
        def from_pretrained(cls, path, **kwargs):
            calls.append((path, kwargs))
            return cls()

        def __len__(self):
            return 10

        def encode(self, text, add_special_tokens=True):
            # with special tokens only to learn the start token it adds (1, like Llama's <s>)
            return [1] * add_special_tokens + [ord(c) % 10 for c in text]

        def decode(self, ids, **kwargs):
            return "".join(map(str, ids))

    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(AutoTokenizer=FakeAuto))
    tok = data.load_tokenizer(str(tmp_path))
    # offline, and no model code run for a tokenizer (an lcbench export's config.json names some)
    assert calls == [(str(tmp_path.resolve()), {"local_files_only": True, "trust_remote_code": False})]
    assert (tok.vocab_size, tok.eos_id, tok.encode("ab"), tok.decode([1, 2])) == (10, 2, [7, 8], "12")
    assert tok.bos_id == 1


def test_unknown_tokenizer_path_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        data.load_tokenizer(str(tmp_path / "tokeniser.json"))
    msg = str(err.value)
    assert "tokeniser.json" in msg and "byte" in msg and "tokenizer.json" in msg  # lists what is there



def test_a_tokenizer_folder_without_tokenizer_files_says_so_and_where_they_are(tmp_path):
    # a checkpoint folder, or the folder above the tokenizer's, failed inside transformers with a
    # six-line message that said to install sentencepiece or tiktoken
    pytest.importorskip("transformers")
    from harness.adapters.hf_tokenizer import export_tokenizer

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"arch": "swa"}')
    (run / "model.safetensors").write_bytes(b"\0")
    export_tokenizer("byte", tmp_path / "tokenizer")
    for folder, hint in ((run, ""), (tmp_path, f". Did you mean {str(tmp_path / 'tokenizer')!r}?")):
        with pytest.raises(ConfigError) as err:
            data.load_tokenizer(str(folder))
        msg = str(err.value)
        assert "\n" not in msg and "sentencepiece" not in msg
        assert msg.startswith(f"tokenizer folder {str(folder)!r} holds no tokenizer files (tokenizer.json, "
                              "tokenizer_config.json, tokenizer.model, vocab.json, ...); it holds: ")
        assert msg.endswith(hint) and ("model.safetensors" in msg if folder == run else "tokenizer/" in msg)

# -- corpora --------------------------------------------------------------------------------------


def test_embedded_corpus():
    docs = data.embedded_corpus()
    assert docs == data.load_corpus() == data.load_corpus("stdlib")
    assert docs is not data.embedded_corpus()  # callers get their own list
    names = [d.name for d in docs]
    assert names == sorted(names) and len(set(names)) == len(names) and len(docs) >= 20
    assert {"asyncio", "email", "json"} <= set(names) and "test" not in names
    assert not any("site-packages" in n for n in names)
    asyncio_doc = next(d for d in docs if d.name == "asyncio")
    assert asyncio_doc.text.startswith("# file: asyncio/__init__.py\n")
    headers = [line for line in asyncio_doc.text.splitlines() if line.startswith("# file: ")]
    assert headers == sorted(headers) and all(h.endswith(".py") for h in headers)
    lengths = [ids.numel() for ids in data.tokenize_documents(docs, data.ByteTokenizer())]
    assert sum(n >= 32768 for n in lengths) >= 10
    assert sum(n >= 131072 for n in lengths) >= 5


def test_the_end_token_a_tokenizer_config_names_wins_over_the_usual_names(tmp_path):
    """A chat tokenizer that also holds <|endoftext|> but ends documents with <|im_end|> (the
    mutation audit: trying the usual names first survived every test)."""
    file = tmp_path / "tokenizer.json"
    reference = _write_tokenizer_json(file, special=("<|endoftext|>", "<|im_end|>"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    assert data.load_tokenizer(str(file)).eos_id == reference.token_to_id("<|im_end|>")


def test_loaders(tmp_path):
    (tmp_path / "one.txt").write_text("héllo\nworld\n", encoding="utf-8")
    assert data.load_corpus(str(tmp_path / "one.txt")) == [Document("one.txt", "héllo\nworld\n")]
    # a file whose name holds the field mark is read as it is (the mutation audit)
    (tmp_path / "notes#1.txt").write_text("hash")
    assert data.load_corpus(str(tmp_path / "notes#1.txt")) == [Document("notes#1.txt", "hash")]

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("bee")
    (folder / "sub" / "a.py").write_text("print(1)")
    (folder / "a.txt").write_text("ay")
    (folder / "blob.bin").write_bytes(b"\x00\x01binary")
    (folder / ".hidden").write_text("skip me")
    (folder / "empty.txt").write_text("")
    assert data.load_corpus(str(folder)) == [
        Document("a.txt", "ay"),
        Document("b.md", "bee"),
        Document("sub/a.py", "print(1)"),
    ]

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second ✓"}) + "\n")
    assert data.load_corpus(str(jsonl), text_field="body") == [
        Document("c.jsonl:1", "first"),
        Document("c.jsonl:3", "second ✓"),
    ]

    parquet = tmp_path / "d.parquet"
    pd.DataFrame({"content": ["x y", None, "z"], "id": [1, 2, 3]}).to_parquet(parquet)
    assert data.load_corpus(str(parquet), text_field="content") == [
        Document("d.parquet:0", "x y"),
        Document("d.parquet:2", "z"),
    ]
    with pytest.raises(ConfigError, match=r"'text'.*content, id"):
        data.load_corpus(str(parquet))
    with pytest.raises(ConfigError, match="'id' is not a string but int"):
        data.load_corpus(str(parquet), text_field="id")


def test_a_jsonl_record_with_half_a_surrogate_pair_reads_as_a_replacement_character(tmp_path):
    # JSON may escape half of a UTF-16 surrogate pair ("\ud83d", an emoji cut in two by a scraper);
    # Python reads it as a lone surrogate, which no UTF-8 tokenizer encodes: `data-report` and
    # `train` died with a UnicodeEncodeError traceback that named neither the file nor the line
    from harness.data.corpora import CorpusWarning

    jsonl = tmp_path / "scraped.jsonl"
    jsonl.write_text('{"text": "half \\ud83d an emoji"}\n{"text": "whole \\ud83d\\ude00 one"}\n')
    with pytest.warns(CorpusWarning, match=r"1 of 2 document\(s\) hold 1 character\(s\) that were not valid UTF-8"):
        docs = data.load_corpus(str(jsonl))
    assert [d.text for d in docs] == ["half \ufffd an emoji", "whole \U0001f600 one"]
    assert data.tokenize_documents(docs, data.ByteTokenizer())[0].tolist() == list("half \ufffd an emoji".encode())

def test_corpus_errors(tmp_path):
    (tmp_path / "books.jsonl").write_text(json.dumps({"content": "x", "title": "t"}) + "\n")
    with pytest.raises(LcbenchError) as err:
        data.load_corpus(str(tmp_path / "bookz.jsonl"))
    assert "bookz.jsonl" in str(err.value) and "books.jsonl" in str(err.value)
    with pytest.raises(ConfigError) as err:
        data.load_corpus(str(tmp_path / "books.jsonl"))
    msg = str(err.value)
    assert "'text'" in msg and "line 1" in msg and "content, title" in msg
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ConfigError, match="unsupported extension"):
        data.load_corpus(str(tmp_path / "x.csv"))


@pytest.mark.parametrize("load, typo, name", [(data.load_corpus, "stdlb", "stdlib"),
                                               (data.load_corpus, "Stdlib", "stdlib"),
                                               (data.load_tokenizer, "bytes", "byte")])
def test_a_misspelt_source_name_suggests_it(tmp_path, monkeypatch, load, typo, name):
    # a misspelt name was read as a path: no suggestion, or a file of the folder ('sub' for 'stdlb')
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match=f"Did you mean {name!r}\\?$"):
        load(typo)



def test_a_hub_name_is_not_taken_for_a_hidden_file(tmp_path, monkeypatch):
    # `--tokenizer gpt2` in a git checkout ended "Did you mean '.git'?"
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".cache").mkdir()
    with pytest.raises(ConfigError, match=r"hub names are not downloaded\)\. '\.' holds: \.cache/, \.git/$"):
        data.load_tokenizer("gpt2")
    with pytest.raises(ConfigError, match=r"Did you mean '\.git'\?$"):  # a hidden name asked for: it is meant
        data.load_corpus(".gti")

def test_datasets_folder(tmp_path):
    try:
        import datasets
    except ImportError:
        (tmp_path / "dataset_info.json").write_text("{}")
        (tmp_path / "state.json").write_text("{}")
        with pytest.raises(ConfigError, match="'datasets' package"):
            data.load_corpus(str(tmp_path))
        return
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    assert data.load_corpus(str(tmp_path / "ds")) == [Document("0", "a"), Document("1", "b")]


# -- splits, packing, batches ------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_by_name():
    docs = [Document(f"doc{i}", "x" * i) for i in range(50)]
    train, val = data.split_documents(docs, 0.2, seed=1)
    assert (train, val) == data.split_documents(docs, 0.2, seed=1)
    assert {d.name for d in train}.isdisjoint(d.name for d in val)
    assert sorted(train + val, key=docs.index) == docs and 0 < len(val) < 50
    # A document's side depends on its name and the seed, not on the other documents.
    assert data.split_documents(docs[:25], 0.2, seed=1)[1] == [d for d in val if d in docs[:25]]
    assert data.split_documents(docs, 0.2, seed=2) != (train, val)
    two = docs[:2]
    for fraction in (0.001, 0.999):
        t, v = data.split_documents(two, fraction)
        assert len(t) == len(v) == 1
    # of many documents, however few land on a side by their hash, one (not always the first) moves there
    assert [len(side) for side in data.split_documents(docs, 1e-9)] == [49, 1]
    assert [len(side) for side in data.split_documents(docs, 1 - 1e-9)] == [1, 49]
    assert data.split_documents(docs, 0.0) == (docs, [])
    with pytest.raises(ConfigError):
        data.split_documents(docs, 1.0)


def test_pack_sequences():
    docs = [torch.arange(5), torch.arange(10, 13), torch.arange(20, 24)]
    packed = data.pack_sequences(docs, 4)
    assert packed.dtype == torch.int64 and packed.shape == (3, 4)  # 12 tokens: nothing dropped
    assert packed.flatten().tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 20, 21, 22, 23]
    packed = data.pack_sequences(docs, 5, separator=99)  # 15 tokens with separators
    assert packed.flatten().tolist() == [0, 1, 2, 3, 4, 99, 10, 11, 12, 99, 20, 21, 22, 23, 99]
    assert data.pack_sequences(docs, 7).shape == (1, 7)  # ragged tail dropped
    with pytest.raises(ConfigError, match="fewer than one sequence"):
        data.pack_sequences(docs, 13)
    assert [t.numel() for t in data.long_documents(docs, 4)] == [5, 4]


def test_sample_batch_is_a_function_of_seed_and_step():
    packed = torch.arange(10 * 3).view(10, 3)
    batch = data.sample_batch(packed, 4, step=7, seed=0)
    assert batch.shape == (4, 3) and batch.dtype == packed.dtype
    assert torch.equal(batch, data.sample_batch(packed.clone(), 4, step=7, seed=0))
    assert not torch.equal(batch, data.sample_batch(packed, 4, step=7, seed=1))
    # Steps 0-4 of batch 2 cover one epoch: every row exactly once.
    epoch = torch.cat([data.sample_batch(packed, 2, step=s, seed=3) for s in range(5)])
    assert sorted(epoch[:, 0].tolist()) == list(range(0, 30, 3))
    # the next epoch visits them again in another order (each epoch draws its own permutation)
    following = torch.cat([data.sample_batch(packed, 2, step=s, seed=3) for s in range(5, 10)])
    assert sorted(following[:, 0].tolist()) == list(range(0, 30, 3)) and not torch.equal(following, epoch)
    # Batches may straddle epochs; a "resumed" call order gives the same batches.
    forward = [data.sample_batch(packed, 4, s, 5) for s in range(6)]
    assert all(torch.equal(forward[s], data.sample_batch(packed, 4, s, 5)) for s in reversed(range(6)))


# -- report ---------------------------------------------------------------------------------------------


def test_corpus_report_counts():
    docs = [Document(f"d{i}", "a" * n) for i, n in enumerate([10, 100, 5000, 20000, 70000])]
    report = data.corpus_report(docs, data.ByteTokenizer(), val_fraction=0.2, seed=0, source="unit")
    assert (report.documents, report.tokens) == (5, 95110)
    assert report.docs_at_least == {4096: 3, 16384: 2, 65536: 1, 131072: 0}
    edge = data.corpus_report([Document("at", "a" * 4096), Document("below", "b" * 4095)], data.ByteTokenizer(),
                              thresholds=(4096,))
    assert edge.docs_at_least == {4096: 1}  # at least: a document of exactly 4096 tokens counts (the mutation audit)
    assert (report.longest_doc, report.longest_tokens, report.median_tokens) == ("d4", 70000, 5000.0)
    train, val = data.split_documents(docs, 0.2, 0)
    assert (report.train_documents, report.val_documents) == (len(train), len(val))
    assert report.val_tokens == sum(len(d.text) for d in val)
    assert report.val_docs_at_least == {t: sum(len(d.text) >= t for d in val) for t in report.docs_at_least}
    assert json.loads(json.dumps(report.to_dict()))["tokens"] == 95110
    text = str(report)
    assert "unit" in text and "95,110" in text and "128K" in text and "byte" in text
    stdlib = data.corpus_report(data.embedded_corpus(), data.ByteTokenizer())
    assert stdlib.source.startswith("stdlib (Python ") and stdlib.docs_at_least[131072] >= 5


def test_a_document_listed_twice_is_counted_once_in_the_token_cache():
    # each put added the tokens again: the budget looked spent and evicted other documents early
    from harness.data import packing

    doc = Document("twice.txt", "a document listed twice " * 10)
    before = packing._token_cache_size - sum(t.numel() for t in packing._TOKEN_CACHE.values())
    packing._TOKEN_CACHE.pop((data.ByteTokenizer().name, doc), None)
    packing.tokenize_documents([doc, doc], data.ByteTokenizer())
    after = packing._token_cache_size - sum(t.numel() for t in packing._TOKEN_CACHE.values())
    assert after == before == 0
