"""``niah``: needle in a haystack, RULER-style, scored by generation and by candidate ranking.

A prompt is a header, a haystack with needles in it, a question and the start of the answer::

    Magic numbers are hidden in the text below. Remember them for a question after the text.
    ...haystack...
    One magic number for quiet-harbor is: 4821937.
    ...haystack...
    What is the magic number for quiet-harbor?
    One magic number for quiet-harbor is:

The answer starts exactly like the needle, so a model that can copy from its context (an
induction head) can answer without following instructions. Haystacks: ``text`` (held-out
documents of the corpus, from a random offset) and ``noise`` (RULER's five sentences, one a
line, repeated). Needles go at the haystack line start nearest their depth (at their token
position when the tokenizer has no line-ending token; ``samples.jsonl`` gives the depth each
went to), at a grid of depths (0 = right after the header, 1 = right before the question) for a
grid of context lengths (the whole prompt, question and answer start included, is ``eval_ctx``
tokens). Variants, as in RULER:

- ``single``: one needle;
- ``multikey``: the needle plus ``distractors`` needles of other keys;
- ``multivalue``: ``values`` needles of the same key; the answer lists all of them;
- ``multiquery``: ``queries`` needles of different keys, all asked for at once.

The first (asked-for) needle sits at the cell's depth, the others at random depths.

Two scorings, so that small models that cannot yet generate are still measured:

- ``gen_match``: greedy generation (``prefill`` + ``decode_step``) after the answer start;
  the fraction of expected values found in the generated text (RULER's string_match_all; for
  one value, whether it was generated), each as written or as the tokenizer decodes it;
- ``cand_acc`` and ``value_logprob``: for each expected (key, value), the answer start for that
  key is followed by each of ``candidates`` continuations: the value and distractors (values of
  other keys in the same haystack first, then random values of the same kind; never another
  correct value). ``cand_acc`` is 1 when the correct value has the highest log-probability
  (ties share the credit, so chance is 1/candidates); ``value_logprob`` is the correct value's
  mean log-probability per token.

Prompts are a deterministic function of (seed, variant, haystack, length, depth, sample
index), given the tokenizer, the held-out text and the options: each prompt's sample record
holds a digest of every token id the model read for it (``read_digest``: the prompt, its answer
starts and the ranked candidates), and two models' answers to a prompt pair (the recall claim)
only where the digests agree. Rows give each metric per (variant, haystack, eval_ctx, depth)
cell and pooled over depths (depth NA), with an interval over prompts (the rates a Wilson score
interval, see :func:`harness.api.stats.rate`; ``value_logprob`` a bootstrap one);
``samples.jsonl`` keeps every prompt's needles, expected values, generated text and candidate
log-probabilities.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.api import stats
from harness.api.decoding import greedy_decode
from harness.api.errors import ConfigError, check_choice
from harness.api.failures import FailureGuard, require_finite, require_host_memory
from harness.api.interface import clone_state
from harness.api.registry import register_task
from harness.api.results import make_row, status_rows
from harness.api.task import DataOptions, Task, check_positive, continue_state, option
from harness.data.packing import tokenize_documents

VARIANTS = ("single", "multikey", "multivalue", "multiquery")
HAYSTACKS = ("text", "noise")
VALUE_KINDS = ("number", "word", "uuid")
METRICS = ("gen_match", "cand_acc", "value_logprob")
RATES = ("gen_match", "cand_acc")
# Host memory a prompt takes per token before the model sees it: the haystack and prompt token
# lists (8-byte pointers each, with growth slack) and the int64 tensor made from them.
PROMPT_BYTES_PER_TOKEN = 48
DEPTH_SLACK = 0.05  # a fifth of the default depth grid's spacing

HEADER = "Magic {kinds} are hidden in the text below. Remember them for a question after the text.\n"
NEEDLE = "One magic {kind} for {key} is: {value}.\n"
QUESTION_ONE = "\nWhat is the magic {kind} for {key}?\n"
QUESTION_ALL = "\nWhat are all the magic {kinds} for {keys}?\n"
ANSWER_ONE = "One magic {kind} for {key} is:"
ANSWER_ALL = "The magic {kinds} for {keys} are:"
# RULER's noise, one sentence a line: a needle goes at a line start, and RULER's one long line
# (89 bytes) would leave a short prompt of byte tokens only two or three places to put it
NOISE_LINES = "The grass is green.\nThe sky is blue.\nThe sun is yellow.\nHere we go.\nThere and back again.\n"

ADJECTIVES = (
    "amber brave calm dusty eager faint gentle hollow icy jolly keen lucky misty noble odd pale quiet rapid "
    "silent tidy urban vivid warm young zesty bold crisp dark early fuzzy grand happy ivory jagged kind lazy "
    "merry narrow olive proud royal shy tall upper vast wild yellow bright cold deep fresh green hidden light "
    "mellow neat plain round sharp soft sweet thin wide"
).split()
NOUNS = (
    "anchor badger canyon dagger ember falcon garden harbor island jacket kettle lantern meadow needle orchard "
    "pepper quarry river saddle thimble umbrella valley walnut yarn zebra acorn beacon candle dolphin engine "
    "feather glacier hammer igloo jungle kitten ladder magnet nectar otter pebble quill rocket spindle tunnel "
    "violin window willow basket cactus drum forest goblet helmet lagoon mirror nickel oyster parrot ribbon"
).split()


KEY_POOL = len(ADJECTIVES) * len(NOUNS)  # keys are "adjective-noun"
VALUE_POOLS = {"number": 9_000_000, "word": len(NOUNS) ** 2, "uuid": 2**128}  # distinct values of each kind


def _plural(kind: str) -> str:
    return kind + "s"


def pick(words: list[str], rng: np.random.Generator) -> str:
    """``rng.choice(words)``, the same draw, without turning the list into an array at every call
    (most of a prompt's draw, which the check before a sweep repeats for every length it tries)."""
    return words[int(rng.integers(len(words)))]


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


@dataclass
class NIAHOptions(DataOptions):
    contexts: list[int] = option([512, 1024, 2048], "prompt lengths in tokens")
    depths: list[float] = option([0.0, 0.25, 0.5, 0.75, 1.0], "needle depths in [0, 1]")
    variants: list[str] = option(list(VARIANTS), f"variants: {', '.join(VARIANTS)}")
    haystacks: list[str] = option(list(HAYSTACKS), f"haystacks: {', '.join(HAYSTACKS)}")
    samples: int = option(4, "prompts per (variant, haystack, length, depth) cell")
    value_kind: str = option("number", f"kind of value: {', '.join(VALUE_KINDS)}")
    distractors: int = option(3, "multikey: needles of other keys")
    values: int = option(4, "multivalue: values of the asked key")
    queries: int = option(4, "multiquery: keys asked at once")
    candidates: int = option(10, "candidates ranked per expected value, the correct one included")
    generate: bool = option(True, "score greedy generation")
    rank: bool = option(True, "score candidate log-probabilities")
    max_new_tokens: int = option(0, "generation length (0: the expected answer's length + 8)")
    resamples: int = option(2000, "bootstrap resamples for value_logprob's confidence intervals")

    def __post_init__(self) -> None:
        check_positive("contexts", self.contexts)
        if not self.depths:  # else every cell pools zero prompts: NaN rows that read as a diverged model
            raise ConfigError("option 'depths' must hold at least one depth in [0, 1]")
        for name, choices in (("variants", VARIANTS), ("haystacks", HAYSTACKS)):
            if not getattr(self, name):
                raise ConfigError(f"option {name!r} must name at least one of {', '.join(choices)}")
        for d in self.depths:
            if not 0.0 <= d <= 1.0:
                raise ConfigError(f"option 'depths' must lie in [0, 1], got {d!r}")
        for v in self.variants:
            check_choice("NIAH variant", v, VARIANTS)
        for h in self.haystacks:
            check_choice("NIAH haystack", h, HAYSTACKS)
        check_choice("NIAH value kind", self.value_kind, VALUE_KINDS)
        check_positive("samples", [self.samples])
        check_positive("distractors", [self.distractors], allow_zero=True)
        check_positive("values", [self.values])
        check_positive("queries", [self.queries])
        check_positive("resamples", [self.resamples])
        check_positive("max_new_tokens", [self.max_new_tokens], allow_zero=True)
        if self.candidates < 2:
            raise ConfigError(f"option 'candidates' must be at least 2 (the value and a distractor), got {self.candidates}")
        if not (self.generate or self.rank):
            raise ConfigError("at least one of 'generate' and 'rank' must be true")
        self.check_pools()
        self.contexts = sorted(set(self.contexts))
        self.depths = sorted(set(self.depths))
        # a cell named twice would be measured twice and its rows would clash
        self.variants = list(dict.fromkeys(self.variants))
        self.haystacks = list(dict.fromkeys(self.haystacks))

    def check_pools(self) -> None:
        """Keys and values are drawn distinct from finite pools: asking for more than a pool holds
        would draw forever."""
        keys = {"single": 1, "multikey": 1 + self.distractors, "multivalue": 1, "multiquery": self.queries}
        values = {"single": 1, "multikey": 1 + self.distractors, "multivalue": self.values, "multiquery": self.queries}
        asked_values = {"multivalue": self.values}  # the asked key's own values, beside which candidates are drawn
        need_keys = max(keys[v] for v in self.variants)
        need_values = max(max(values[v], asked_values.get(v, 1) + (self.candidates - 1 if self.rank else 0))
                          for v in self.variants)
        if need_keys > KEY_POOL:
            raise ConfigError(f"NIAH draws distinct keys from {KEY_POOL}; the options ask for {need_keys} per prompt "
                              "(distractors + 1 or queries): lower them")
        pool = VALUE_POOLS[self.value_kind]
        if need_values > pool:
            raise ConfigError(f"NIAH value_kind {self.value_kind!r} has {pool} distinct values; the options ask for "
                              f"{need_values} per prompt (values, queries, distractors + 1, or candidates beside the "
                              f"asked values): lower them or use value_kind 'number' or 'uuid'")


@dataclass
class Needle:
    key: str
    value: str
    depth: float
    position: int = -1  # token offset of the needle in the prompt
    placed: float = math.nan  # the depth it went to: the haystack's share before it


@dataclass
class Prompt:
    prompt_id: str
    variant: str
    haystack: str
    eval_ctx: int
    depth: float
    needles: list[Needle]
    asked: list[str]  # keys the question asks for, in order
    shared: list[int] = field(default_factory=list)  # header + haystack + question
    answer: list[int] = field(default_factory=list)  # answer start of the generation prompt

    def expected(self) -> list[tuple[str, str]]:
        """(key, value) pairs the answer should contain, in question order."""
        return [(n.key, n.value) for k in self.asked for n in self.needles if n.key == k]


class PromptBuilder:
    """Builds NIAH prompts of exact token lengths from a tokenizer and a text haystack."""

    def __init__(self, tokenizer, haystack_text_ids: torch.Tensor, options: NIAHOptions, seed: int):
        self.tok = tokenizer
        self.opts = options
        self.seed = seed
        self.text_ids = haystack_text_ids.tolist()
        self.noise_ids = tokenizer.encode(NOISE_LINES)
        self.newline = {t for t in set(self.text_ids) | set(self.noise_ids) if tokenizer.decode([t]).endswith("\n")}
        line_end = tokenizer.encode("\n")
        self.line_end = line_end[0] if len(line_end) == 1 else None

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))

    def _value(self, rng: np.random.Generator) -> str:
        kind = self.opts.value_kind
        if kind == "number":
            return str(int(rng.integers(1_000_000, 10_000_000)))
        if kind == "word":
            return pick(NOUNS, rng) + "-" + pick(NOUNS, rng)
        h = rng.integers(0, 256, 16).astype(np.uint8).tobytes().hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _keys(self, rng: np.random.Generator, n: int) -> list[str]:
        keys: list[str] = []
        while len(keys) < n:
            key = f"{pick(ADJECTIVES, rng)}-{pick(NOUNS, rng)}"
            if key not in keys:
                keys.append(key)
        return keys

    def random_values(self, rng: np.random.Generator, n: int, exclude: set[str]) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            v = self._value(rng)
            if v not in exclude and v not in out:
                out.append(v)
        return out

    def needles(self, variant: str, depth: float, rng: np.random.Generator) -> tuple[list[Needle], list[str]]:
        o = self.opts
        if variant == "single":
            keys, per_key, asked = self._keys(rng, 1), 1, 1
        elif variant == "multikey":
            keys, per_key, asked = self._keys(rng, 1 + o.distractors), 1, 1
        elif variant == "multivalue":
            keys, per_key, asked = self._keys(rng, 1), o.values, 1
        else:
            keys, per_key, asked = self._keys(rng, o.queries), 1, o.queries
        values = self.random_values(rng, len(keys) * per_key, set())
        needles = [Needle(k, values[i * per_key + j], depth if i == 0 and j == 0 else float(rng.random()))
                   for i, k in enumerate(keys) for j in range(per_key)]
        return needles, keys[:asked]

    def texts(self, needles: list[Needle], asked: list[str]) -> tuple[str, list[str], str, str]:
        kind, kinds = self.opts.value_kind, _plural(self.opts.value_kind)
        header = HEADER.format(kinds=kinds)
        needle_texts = [NEEDLE.format(kind=kind, key=n.key, value=n.value) for n in needles]
        if len(asked) == 1 and sum(n.key == asked[0] for n in needles) == 1:
            question = QUESTION_ONE.format(kind=kind, key=asked[0])
            answer = ANSWER_ONE.format(kind=kind, key=asked[0])
        else:
            keys = join_keys(asked)
            question = QUESTION_ALL.format(kinds=kinds, keys=keys)
            answer = ANSWER_ALL.format(kinds=kinds, keys=keys)
        return header, needle_texts, question, answer

    def found(self, values: list[str], text: str) -> list[bool]:
        """Whether each value is in the generated ``text``, as written or as the tokenizer gives it
        back: one that does not decode text as it was (the `tokenizers` quickstart's Whitespace
        pre-tokenizer decodes '4821937' as '4 8 2 1 9 3 7') changes a copied value so too."""
        text = text.lower()
        decoded = [self.tok.decode(self.encode(v)).strip().lower() for v in values]
        return [v.lower() in text or bool(d) and d in text for v, d in zip(values, decoded)]

    def probe_answer(self, key: str) -> list[int]:
        return self.encode(ANSWER_ONE.format(kind=self.opts.value_kind, key=key))

    def draw(self, variant: str, haystack: str, length: int, depth: float,
             index: int) -> tuple[np.random.Generator, list[Needle], list[str], list[list[int]], list[list[int]]]:
        """Everything of a prompt but its haystack: (its generator, needles, asked keys, the ids
        of its header, question and answer start, each needle's ids)."""
        rng = np.random.default_rng([self.seed, VARIANTS.index(variant), HAYSTACKS.index(haystack), length,
                                     int(round(depth * 10_000)), index])
        needles, asked = self.needles(variant, depth, rng)
        header, needle_texts, question, answer = self.texts(needles, asked)
        return rng, needles, asked, [self.encode(t) for t in (header, question, answer)], list(map(self.encode, needle_texts))

    def prompts(self) -> list[tuple[str, str, float, int]]:
        """(variant, haystack, depth, sample index) of every prompt of the options at one length."""
        o = self.opts
        return list(itertools.product(o.variants, o.haystacks, o.depths, range(o.samples)))

    def need(self, length: int) -> tuple[int, str]:
        """(the most tokens a prompt of ``length`` of the options takes before its haystack, the
        variant of that prompt)."""
        return max((self.fixed_tokens(v, h, length, d, i), v) for v, h, d, i in self.prompts())

    def fixed_tokens(self, variant: str, haystack: str, length: int, depth: float, index: int) -> int:
        """The tokens of a prompt that are not its haystack."""
        *_, fixed, needles = self.draw(variant, haystack, length, depth, index)
        return sum(map(len, fixed + needles))

    def build(self, variant: str, haystack: str, length: int, depth: float, index: int) -> Prompt:
        rng, needles, asked, (header_ids, question_ids, answer_ids), needle_ids = self.draw(variant, haystack, length,
                                                                                             depth, index)
        budget = length - sum(map(len, [header_ids, question_ids, answer_ids, *needle_ids]))
        if budget < 0:
            raise PromptTooLong(f"{length} tokens is too short for a {variant} prompt: it needs "
                                f"{length - budget} tokens without any haystack")
        hay = self._haystack(haystack, budget, rng)
        if hay and hay[-1] not in self.newline and self.line_end is not None:
            hay[-1] = self.line_end  # end on a whole line: a needle at depth 1 starts its own line
        # needles start a line; a tokenizer with no line-ending token (a Whitespace pre-tokenizer
        # drops "\n") gives the haystack no lines, and then every token boundary is one
        starts = [0] + [i + 1 for i, t in enumerate(hay) if t in self.newline or not self.newline]
        if starts[-1] != len(hay):
            starts.append(len(hay))
        starts = np.array(starts)
        # each needle goes to the line start nearest its depth: the start of the line that holds
        # the depth would place every needle early, by half a line on average
        cut = [int(starts[np.argmin(np.abs(starts - n.depth * len(hay)))]) for n in needles]
        order = sorted(range(len(needles)), key=lambda i: (cut[i], i))
        ids = list(header_ids)
        prev = 0
        for i in order:
            ids += hay[prev:cut[i]]
            needles[i].position = len(ids)
            needles[i].placed = cut[i] / len(hay) if hay else needles[i].depth
            ids += needle_ids[i]
            prev = cut[i]
        ids += hay[prev:]
        ids += question_ids
        prompt_id = f"{variant}/{haystack}/{length}/{depth:g}/{index}"
        prompt = Prompt(prompt_id, variant, haystack, length, depth, needles, asked, ids, answer_ids)
        assert len(prompt.shared) + len(prompt.answer) == length
        return prompt

    def _haystack(self, kind: str, budget: int, rng: np.random.Generator) -> list[int]:
        """``budget`` tokens: the noise line repeated, or held-out text from a random offset
        (wrapping around to the start of the text if it runs out)."""
        source = self.noise_ids if kind == "noise" else self.text_ids
        pos = 0 if kind == "noise" else int(rng.integers(0, len(source)))
        out: list[int] = []
        while len(out) < budget:
            out += source[pos : pos + budget - len(out)]
            pos = 0
        return out


class PromptTooLong(ConfigError):
    pass


def shortest_context(builders: Sequence[PromptBuilder]) -> int:
    """The shortest context that every prompt drawn at it fits, for each of ``builders`` (one per
    seed): prompts are drawn anew for each length and seed, so a length fits or not by its own
    draws, and a longer one may not fit where a shorter does. Lengths are tried from 1 up; the
    first prompt too long for one ends its try, and is tried first at the next (it is likely long)."""
    prompts = [(builder, prompt) for builder in builders for prompt in builder.prompts()]

    def too_long(k: int, length: int) -> bool:
        builder, (variant, haystack, depth, index) = prompts[k]
        return builder.fixed_tokens(variant, haystack, length, depth, index) > length

    length, first = 1, 0
    while True:  # ends: a prompt's fixed tokens are bounded (finite key and value pools)
        order = [first, *(k for k in range(len(prompts)) if k != first)]
        failed = next((k for k in order if too_long(k, length)), None)
        if failed is None:
            return length
        length, first = length + 1, failed


def depth_flag(depth: float, placed: list[float]) -> str:
    """A warning for a cell whose asked needles sit on average more than :data:`DEPTH_SLACK` from
    its depth: a short haystack has few line starts to put them at."""
    off = float(np.mean(np.abs(np.asarray(placed) - depth)))
    if off <= DEPTH_SLACK:
        return ""
    return f"depth: needles sit {off:.2f} from depth {depth:g} on average (few line starts at this length)"


def read_digest(parts: Iterable[Sequence[int]]) -> str:
    """A short digest of the token ids a model read for a prompt, part by part: each part's length,
    then its ids (little-endian int64), so that the same ids cut into other parts digest apart."""
    digest = hashlib.sha256()
    for ids in parts:
        digest.update(np.asarray([len(ids), *ids], dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def tie_aware_top1(correct: float, others: list[float]) -> float:
    """1 if ``correct`` beats every other score, 1/(k+1) if it ties k of the best, else 0; NaN
    if any score is NaN (a comparison with NaN is always false, which would read as a win)."""
    if math.isnan(correct) or any(math.isnan(o) for o in others):
        return math.nan
    tol = 1e-6 * max(1.0, abs(correct))
    if any(o > correct + tol for o in others):
        return 0.0
    ties = sum(abs(o - correct) <= tol for o in others)
    return 1.0 / (ties + 1)


@register_task("niah")
class NIAH(Task):
    """Needle in a haystack (single, multi-key, multi-value, multi-query; text and noise)."""

    name = "niah"
    Options = NIAHOptions

    def run(self, model, options: NIAHOptions, ctx):
        tokenizer, docs = ctx.heldout(options, model)
        sep = torch.tensor(tokenizer.encode("\n\n"), dtype=torch.int64)
        parts = []
        for ids in tokenize_documents(docs, tokenizer, ctx.progress):
            parts += [ids, sep]
        builder = PromptBuilder(tokenizer, torch.cat(parts), options, ctx.seed)
        cells = [(v, h, L) for v in options.variants for h in options.haystacks for L in options.contexts]
        rows: list[dict[str, Any]] = []
        bar = ctx.bar(total=len(cells) * len(options.depths) * options.samples, desc="niah", unit="prompt")
        for variant, haystack, L in cells:
            where = dict(variant=variant, haystack=haystack, eval_ctx=L)
            metrics = self._metrics(options)
            bar.set_postfix(variant=variant, haystack=haystack, ctx=L)
            scores: dict[float, list[dict[str, float]]] = {}
            placed: dict[float, list[float]] = {}  # the depth each cell's asked needle went to
            # One cell running out of memory must not lose the others.
            try:
                with FailureGuard(metrics, ctx.device, where=f"at {L} tokens", only_oom=True, **where) as guard:
                    require_host_memory(L * PROMPT_BYTES_PER_TOKEN, f"a {L}-token prompt (its token lists alone)")
                    for d in options.depths:
                        scores[d], placed[d] = [], []
                        for i in range(options.samples):
                            prompt = builder.build(variant, haystack, L, d, i)
                            scores[d].append(self._score(model, prompt, builder, options, ctx))
                            placed[d].append(prompt.needles[0].placed)
                            bar.update(1)
            except PromptTooLong as exc:
                rows += status_rows(metrics, "error", str(exc), **where)
                continue
            if guard.failed:
                rows += guard.rows
                continue
            for metric in metrics:
                for d, sample_scores in scores.items():
                    rows.append(self._row(metric, [s[metric] for s in sample_scores], options, ctx, depth=d,
                                          flag=depth_flag(d, placed[d]), **where))
                pooled = [s[metric] for sample_scores in scores.values() for s in sample_scores]
                rows.append(self._row(metric, pooled, options, ctx, **where))
        bar.close()
        return rows

    def check_context(self, options: NIAHOptions, tokenizer, seeds: Sequence[int]) -> list[str]:
        """A context shorter than a prompt's header, needles, question and answer start for one of
        ``seeds`` (which the run would give error rows for, after the model trained), with the
        shortest context that fits them all."""
        builders = [PromptBuilder(tokenizer, torch.zeros(0, dtype=torch.int64), options, seed) for seed in seeds]
        problems = []
        fits = None  # the same for every context: searched once, where one is too short
        for length in options.contexts:
            need, variant = max(builder.need(length) for builder in builders)
            if need <= length:
                continue
            fits = fits or shortest_context(builders)
            problems.append(f"niah context {length} is too short: a {variant} prompt takes {need} tokens before any "
                            f"haystack (header, needles, question, answer start); the shortest context that fits every "
                            f"prompt drawn at it is {fits} (prompts are drawn anew for each length and seed; "
                            f"{_seeds(seeds)})")
        return problems

    @staticmethod
    def _metrics(options: NIAHOptions) -> list[str]:
        return [m for m in METRICS if (m == "gen_match" and options.generate) or (m != "gen_match" and options.rank)]

    @staticmethod
    def _row(metric: str, values: list[float], options: NIAHOptions, ctx, flag: str = "", **where) -> dict[str, Any]:
        if metric in RATES:  # a few prompts, each scored in [0, 1]: a bootstrap claims certainty when all agree
            est = stats.rate(values)
        else:
            seed = [ctx.seed, zlib.crc32(repr(sorted(where.items())).encode()), METRICS.index(metric)]
            est = stats.bootstrap_mean(values, options.resamples, seed=seed)
        return make_row(metric, **est.as_columns(), flag=flag, **where)

    def _score(self, model, prompt: Prompt, builder: PromptBuilder, options: NIAHOptions, ctx) -> dict[str, float]:
        device = ctx.device
        shared = torch.tensor([prompt.shared], dtype=torch.int64, device=device)
        _, state = model.prefill(shared)
        expected = prompt.expected()
        record: dict[str, Any] = {
            "kind": "prompt", "prompt_id": prompt.prompt_id, "variant": prompt.variant, "haystack": prompt.haystack,
            "eval_ctx": prompt.eval_ctx, "depth": prompt.depth,
            "needles": [{"key": n.key, "value": n.value, "depth": n.depth, "placed": round(n.placed, 4),
                         "position": n.position} for n in prompt.needles],
            "asked": prompt.asked, "expected": [v for _, v in expected],
            "question_and_answer": builder.tok.decode(prompt.shared[-64:] + prompt.answer)[-200:],
        }
        scores: dict[str, float] = {}
        read = [prompt.shared, prompt.answer]  # every token id fed to the model, except its own generation
        answer_states: dict[tuple[int, ...], tuple[torch.Tensor, Any]] = {}

        def after(answer: list[int]) -> tuple[torch.Tensor, Any]:
            """(logits for the token after ``answer``, state) with ``answer`` fed after the shared part."""
            key = tuple(answer)
            if key not in answer_states:
                logits, s = continue_state(model, clone_state(state), torch.tensor([answer], device=device))
                require_finite(logits, f"{model.config.arch}'s logits at {prompt.eval_ctx} tokens")
                answer_states[key] = (logits[:, -1], s)
            return answer_states[key]

        if options.generate:
            logits, s = after(prompt.answer)
            s = clone_state(s)
            expected_text = " " + ", ".join(v for _, v in expected) + "."
            budget = options.max_new_tokens or len(builder.encode(expected_text)) + 8
            # the answer ends with its line: stop after a newline that follows some text
            generated = greedy_decode(model, logits, s, budget, stop=lambda ids: ids[-1] in builder.newline
                                      and bool(builder.tok.decode(ids).strip()))
            text = builder.tok.decode(generated)
            found = builder.found([v for _, v in expected], text)
            scores["gen_match"] = sum(found) / len(found)
            record.update(generated=text, gen_found=found, gen_match=scores["gen_match"])
        if options.rank:
            rng = np.random.default_rng([ctx.seed, zlib.crc32(prompt.prompt_id.encode())])
            probes, accs, logprobs = [], [], []
            for key, value in expected:
                correct = {v for k, v in expected if k == key} | {n.value for n in prompt.needles if n.key == key}
                others = [n.value for n in prompt.needles if n.key != key and n.value not in correct]
                others = list(dict.fromkeys(others))[: options.candidates - 1]
                others += builder.random_values(rng, options.candidates - 1 - len(others), correct | set(others))
                candidates = [value] + others
                probe, continuations = builder.probe_answer(key), [builder.encode(" " + c) for c in candidates]
                read += [probe, *continuations]
                logits, s = after(probe)
                scored = [self._logprob(model, logits, s, ids, device) for ids in continuations]
                lp = [total for total, _ in scored]
                acc = tie_aware_top1(lp[0], lp[1:])
                rank = sum(x > lp[0] for x in lp[1:])
                accs.append(acc)
                logprobs.append(scored[0][0] / scored[0][1])
                probes.append({"key": key, "value": value, "candidates": candidates, "logprobs": lp,
                               "rank": rank, "acc": acc})
            scores["cand_acc"] = float(np.mean(accs))
            scores["value_logprob"] = float(np.mean(logprobs))
            record.update(probes=probes, cand_acc=scores["cand_acc"], value_logprob=scores["value_logprob"])
        ctx.record(**record, read_digest=read_digest(read))
        return scores

    @staticmethod
    def _logprob(model, logits: torch.Tensor, state: Any, ids: list[int], device) -> tuple[float, int]:
        """(total log-probability of ``ids`` after a state whose next-token logits are ``logits``, len)."""
        total = torch.log_softmax(logits.float(), -1)[0, ids[0]].item()
        if len(ids) > 1:
            more, _ = continue_state(model, clone_state(state), torch.tensor([ids[:-1]], device=device))
            targets = torch.tensor(ids[1:], device=more.device)
            total += torch.log_softmax(more[0].float(), -1).gather(-1, targets[:, None]).sum().item()
        return total, len(ids)
