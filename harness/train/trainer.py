"""One trainer for every registered architecture.

AdamW with linear warm-up and cosine decay, gradient clipping and accumulation, bf16 autocast on
GPU, a fixed token budget, periodic validation loss and atomic checkpoints. A run resumes
bit-for-bit on CPU: batches are a pure function of (seed, step) and the optimizer state is saved.
Under torchrun the same loop runs data-parallel (FSDP2 or DDP, :mod:`harness.train.distributed`)
with the same global batch, rank 0 logging, and sharded checkpoints.
Models that need to know training progress (TTT-E2E's inner-lr warm-up) define
``on_train_step(step, total_steps)``, with a ``recipe`` argument if their schedule follows the
run's recipe (:mod:`harness.api.recipe`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from harness import data
from harness.api.device import parse_device
from harness.api.errors import ConfigError, DistributedError, UnknownNameError, check_choice
from harness.api.fieldtypes import as_annotated, check_fields, field_hints
from harness.api.interface import LCModel, ModelConfig
from harness.api.recipe import DEFAULT_RECIPE, RECIPES, warmup_length
from harness.api.registry import build_model, config_from_dict
from harness.api.staging import clear_stale, ensure_writable
from harness.train import checkpoint, sharded
from harness.train.distributed import Replicas, share_of, start


@dataclass
class TrainConfig:
    steps: int = 200
    tokens: int = 0  # token budget; when > 0 it sets steps = tokens // (batch_size * seq_len * grad_accum)
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    lr: float = 3e-3  # official TTT-E2E 125m pretraining recipe: 3e-3 peak, cosine to 1e-5
    min_lr: float = 1e-5
    warmup_frac: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    seed: int = 0
    eval_every: int = 50  # validation loss every N steps (0: only at the end)
    eval_batches: int = 4
    save_every: int = 0  # checkpoint every N steps when out_dir is given (0: only at the end)
    corpus: str | None = None  # None: the embedded standard-library corpus
    tokenizer: str | None = None  # None: bytes
    val_fraction: float = 0.1
    split_seed: int | None = None  # seed of the train/val document split; None: the training seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun each rank takes its LOCAL_RANK GPU)
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    recipe: str = DEFAULT_RECIPE  # lcbench | official: schedule, decay groups, warm-up rounding (harness.api.recipe)

    def __post_init__(self) -> None:
        check_fields(TrainConfig, self.to_dict(), "TrainConfig")
        hints = field_hints(TrainConfig)
        for f in dataclasses.fields(self):  # one form per setting: lr=1 is lr=1.0
            setattr(self, f.name, as_annotated(getattr(self, f.name), hints.get(f.name)))
        if self.seq_len < 2:
            raise ConfigError(f"TrainConfig.seq_len must be at least 2 (a token and its successor), got {self.seq_len}")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("tokens", "seed", "eval_every", "save_every", "split_seed", "weight_decay", "grad_clip"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_frac", "beta1", "beta2", "val_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        try:  # spelling only: a GPU is looked for when the run starts
            parse_device(self.device)
        except UnknownNameError as exc:
            raise ConfigError(str(exc)) from None
        check_choice("dtype", self.dtype, ("auto", "fp32", "bf16"))
        check_choice("recipe", self.recipe, RECIPES)
        if self.tokens and self.tokens < self.tokens_per_step:  # it trained one step, silently
            raise ConfigError(f"TrainConfig.tokens={self.tokens} is less than one step's "
                              f"{self.tokens_per_step} tokens (batch_size {self.batch_size} x seq_len {self.seq_len} "
                              f"x grad_accum {self.grad_accum}); give at least {self.tokens_per_step}, or steps")

    @property
    def data_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def total_steps(self) -> int:
        if self.tokens:
            return self.tokens // self.tokens_per_step
        return self.steps

    @property
    def warmup_steps(self) -> int:
        return warmup_length(self.recipe, self.warmup_frac, self.total_steps)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# An attribute of the model train() returns: its training settings and data fingerprints, as a
# checkpoint's trainer.json holds them, so that run_eval on the object reads its own held-out text.
TRAINED_ON_ATTR = "lcbench_trained_on"
# What a checkpoint's training state records of its data: evaluation reads them back.
TRAINED_DATA_KEYS = ("corpus_fingerprint", "tokenizer_fingerprint", "train_text_digests")


@dataclass
class TrainResult:
    model: LCModel
    step: int
    val_loss: float
    tokens_per_s: float  # over the training steps' time, without validation and checkpoint writes
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr (step counts from 0). The official recipe's
    warm-up is one step behind: optax's schedule reads the count of updates already made, 0 at the
    first, and warms up from init_lr 0."""
    total = cfg.total_steps
    warmup = cfg.warmup_steps
    if step < warmup:
        updates_made = step if cfg.recipe == "official" else step + 1
        return cfg.lr * updates_made / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def progress_hook(model: LCModel, recipe: str) -> Callable[[int, int], None] | None:
    """The model's ``on_train_step``, given the run's recipe if it takes one (TTT-E2E rounds its
    inner warm-up as the recipe does); a hook of ``(step, total_steps)`` alone is called as it is."""
    hook = getattr(model, "on_train_step", None)
    if hook is not None and "recipe" in inspect.signature(hook).parameters:
        return functools.partial(hook, recipe=recipe)
    return hook


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "bf16" or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def make_optimizer(model: LCModel, cfg: TrainConfig) -> torch.optim.AdamW:
    if cfg.recipe == "official":  # optax.adamw with mask=None decays every parameter
        trainable = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": trainable, "weight_decay": cfg.weight_decay}], lr=cfg.lr,
                                 betas=(cfg.beta1, cfg.beta2))
    # Decay matrices only; norms' gains and biases (vectors) are not decayed.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@dataclass
class TrainingData:
    train: torch.Tensor  # [N, seq_len] packed rows
    val: torch.Tensor
    vocab_size: int
    train_text_digests: tuple[str, ...] = ()  # data.text_digest of every training document


def check_vocab(model_vocab: int, tokenizer_vocab: int, tokenizer: str | None) -> None:
    """A model must have an embedding for every id its tokenizer (``tokenizer``: its spec) gives."""
    if model_vocab < tokenizer_vocab:
        raise ConfigError(f"model vocab_size={model_vocab} is smaller than the tokenizer's {tokenizer_vocab} "
                          f"({tokenizer or 'byte'!r}): make vocab_size at least {tokenizer_vocab} (lcbench train and "
                          "sweeps take it from the tokenizer unless it is set)")


def prepare_data(cfg: TrainConfig, progress: bool = False, model_vocab: int | None = None) -> TrainingData:
    """The packed training and validation rows of ``cfg``'s corpus; ``model_vocab``: checked against
    the tokenizer before the corpus is tokenized (a large one takes minutes)."""
    tokenizer = data.load_tokenizer(cfg.tokenizer)
    if model_vocab is not None:
        check_vocab(model_vocab, tokenizer.vocab_size, cfg.tokenizer)
    docs = data.load_corpus(cfg.corpus)
    train_docs, val_docs = data.split_documents(docs, cfg.val_fraction, cfg.data_split_seed)
    for side, side_docs in (("training", train_docs), ("validation", val_docs)):
        if not side_docs:  # packing would blame the sequence length for what the split did
            raise ConfigError(
                f"the train/val split of the corpus's {len(docs)} document(s) (val_fraction={cfg.val_fraction}) "
                f"leaves no {side} documents; it splits whole documents: use a val_fraction above 0 and a corpus "
                "of at least two distinct documents (copies of one text go to one side)")
    train = _pack("training", train_docs, tokenizer, cfg.seq_len, progress)
    val = _pack("validation", val_docs, tokenizer, cfg.seq_len, progress)
    return TrainingData(train, val, tokenizer.vocab_size, tuple(sorted({data.text_digest(d.text) for d in train_docs})))


def _pack(side: str, docs: list[data.Document], tokenizer: data.Tokenizer, seq_len: int,
          progress: bool) -> torch.Tensor:
    """Rows of ``docs`` laid end to end, each followed by the tokenizer's end token if it has one
    (bytes have none): a row crossing into the next document shows where it starts."""
    try:
        token_docs = data.tokenize_documents(docs, tokenizer, progress, desc=f"tokenize {side} split")
        return data.pack_sequences(token_docs, seq_len, separator=tokenizer.eos_id)
    except ConfigError as exc:  # name the side that is too short
        raise ConfigError(f"the {side} split ({len(docs)} documents): {exc}") from None


@torch.no_grad()
def validation_loss(model: LCModel, val: torch.Tensor, cfg: TrainConfig, device: torch.device,
                    replicas: Replicas | None = None) -> float:
    """Mean loss of the first ``eval_batches`` validation batches (each rank its share of each): the
    loss training minimises (``LCModel.training_loss``: TTT-E2E with ``bos_token_id`` leaves BOS
    targets out of it), so the two are comparable."""
    replicas = replicas or Replicas()
    was_training = model.training
    model.eval()
    rows = val[: cfg.eval_batches * cfg.batch_size]
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(rows), cfg.batch_size):
        share = share_of(replicas, rows[i : i + cfg.batch_size].to(device))
        with torch.autocast(device.type, dtype=autocast_dtype(cfg.dtype, device) or torch.float32,
                            enabled=autocast_dtype(cfg.dtype, device) is not None):
            total += model.training_loss(share.rows).double() * share.weight
    model.train(was_training)
    return replicas.sum(total).item() / len(rows)


def training_step(model: LCModel, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor], grad_clip: float,
                  amp_dtype: torch.dtype | None, replicas: Replicas | None = None,
                  loss_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """One optimizer step: forward, next-token loss and backward over each micro-batch (gradients
    accumulate; across ranks they synchronise on the last only), gradient clipping (none when
    ``grad_clip`` is 0), the update;
    the loss summed over micro-batches (averaged over ranks). The caller sets the learning rate
    and gives each rank its share of the batches; ``loss_of`` is what ``replicas.wrap`` returned.
    (The GPU kit's throughput measurement times exactly this.)"""
    replicas = replicas or Replicas()
    loss_of = loss_of or model.training_loss
    loss_sum = 0.0
    for micro, batch in enumerate(batches):
        with replicas.no_grad_sync(loss_of, skip=micro < len(batches) - 1):
            with torch.autocast(batch.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_of(batch) / len(batches)
            loss.backward()
        loss_sum += loss.item()
    loss_sum = replicas.mean(loss_sum)
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"the loss is {loss_sum}")
    try:  # no clipping at 0 (a max norm of 0 would zero every gradient); the norm is checked either way
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf,
                                       error_if_nonfinite=True)
    except RuntimeError as exc:  # a finite loss can still give inf/nan gradients: the step would poison the weights
        if "non-finite" not in str(exc):
            raise
        raise FloatingPointError("the gradient norm is not finite") from None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def train(
    model_config: ModelConfig,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    training_data: TrainingData | None = None,
    parallel: str = "auto",
) -> TrainResult:
    """Train a fresh model (or resume the checkpoint in ``out_dir``) for ``cfg.total_steps``.
    ``parallel``: none, fsdp or ddp (the last two under torchrun); auto picks fsdp there. The
    returned model carries what it trained on (``TRAINED_ON_ATTR``): ``run_eval`` on it evaluates
    its own held-out documents, as on its checkpoint."""
    if out_dir is not None:  # before any work: a bad folder would otherwise fail only at the first save
        check_out_dir(Path(out_dir), resume)
    elif resume:
        raise ConfigError("resuming needs the folder of the checkpoint to continue (--out); none was given")
    elif cfg.save_every:  # it trained to the end and saved nothing: a killed run had nothing to resume
        raise ConfigError(f"save_every={cfg.save_every} saves checkpoints into the output folder (--out); "
                          "none was given")
    replicas = start(parallel, cfg.device)
    device = replicas.device
    training_data = training_data or prepare_data(cfg, progress and replicas.is_main, model_config.vocab_size)
    check_vocab(model_config.vocab_size, training_data.vocab_size, cfg.tokenizer)
    torch.manual_seed(cfg.seed)
    model = build_model(model_config).to(device)
    loss_of = replicas.wrap(model)  # FSDP2 shards the parameters: the optimizer comes after
    optimizer = make_optimizer(model, cfg)
    start_step, history = 0, []
    fingerprints = data_fingerprints(cfg)
    if resume and out_dir is not None:
        start_step, history = _restore(out_dir, model, optimizer, cfg, replicas, fingerprints)
    if training_data.train_text_digests:  # evaluation keeps these texts out of the held-out documents
        fingerprints["train_text_digests"] = list(training_data.train_text_digests)
    amp_dtype = autocast_dtype(cfg.dtype, device)
    total = cfg.total_steps
    on_step = progress_hook(model, cfg.recipe)
    model.train()
    bar = tqdm(range(start_step, total), desc=f"train {model_config.arch}", disable=not (progress and replicas.is_main),
               unit="step")
    train_s, tokens_done, val_loss = 0.0, 0, float("nan")
    saved_step = start_step
    for step in bar:
        t0 = time.perf_counter()
        if on_step is not None:
            on_step(step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batches = [replicas.shard(data.sample_batch(training_data.train, cfg.batch_size, step * cfg.grad_accum + micro,
                                                    cfg.seed)).to(device) for micro in range(cfg.grad_accum)]
        try:
            loss_sum = training_step(model, optimizer, batches, cfg.grad_clip, amp_dtype, replicas, loss_of)
        except FloatingPointError as exc:
            raise FloatingPointError(f"training diverged: {exc} at step {step + 1} of {total} "
                                     f"(lr {lr_at(step, cfg):g}); try a lower --lr") from None
        except torch.distributed.DistError as exc:
            raise lost_rank_error(exc, replicas, step, out_dir, saved_step) from exc
        train_s += time.perf_counter() - t0
        tokens_done += cfg.tokens_per_step
        tok_s = tokens_done / train_s
        record = {"step": step + 1, "loss": loss_sum, "lr": lr_at(step, cfg), "tokens_per_s": tok_s}
        last = step + 1 == total
        if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            val_loss = validation_loss(model, training_data.val, cfg, device, replicas)
            record["val_loss"] = val_loss
        history.append(record)
        bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tok_s:,.0f}",  # no val before the first: "nan" read as diverged
                        **({} if math.isnan(val_loss) else {"val": f"{val_loss:.3f}"}))
        if out_dir is not None and (last or (cfg.save_every and (step + 1) % cfg.save_every == 0)):
            _save(out_dir, model, optimizer, cfg, step + 1, history, replicas, fingerprints)
            saved_step = step + 1
    if start_step >= total:  # nothing left to train: report the checkpoint as it is
        val_loss = validation_loss(model, training_data.val, cfg, device, replicas)
    setattr(model, TRAINED_ON_ATTR, {"train_config": cfg.to_dict(), **fingerprints})
    # a checkpoint resumed with a smaller budget stays at its own step: report that one
    return TrainResult(model, max(total, start_step), val_loss, tokens_done / train_s if tokens_done else 0.0, history)


# Settings that say only when a run validates and saves: validation runs in eval mode without
# gradients and draws no random numbers, saving reads the state, and the batches are a function of
# (seed, step), so the weights come out bit-identical whatever they are (tests/test_train.py trains
# every architecture both ways). A sweep leaves them out of a model's identity: editing them does
# not retrain it.
BOOKKEEPING_SETTINGS = frozenset({"eval_every", "eval_batches", "save_every"})
# Settings added after checkpoints were first written, with the value those checkpoints trained
# with: a resume that changes them is refused as for any other setting.
PREDATING_SETTINGS = {"recipe": DEFAULT_RECIPE}
# Settings a run may change when it resumes: they do not alter the trajectory of the steps
# already taken (the step budget may grow; evaluation, saving and the device are bookkeeping).
RESUMABLE_CHANGES = BOOKKEEPING_SETTINGS | {"steps", "tokens", "device"}


def check_one_budget(given: Mapping[str, Any], where: str = "training settings") -> None:
    """Refuse ``steps`` and a (non-zero) ``tokens`` given together: the token budget would set the
    number of steps and the given ``steps`` go unread."""
    if given.get("steps") is not None and given.get("tokens"):
        raise ConfigError(f"{where}: steps={given['steps']} and tokens={given['tokens']} both set how long to train "
                          "(tokens replaces steps); give one")


def resume_config(out_dir: str | os.PathLike, given: Mapping[str, Any]) -> TrainConfig:
    """The settings a resumed run continues with: the checkpoint's, with the ``given`` ones on top.
    One left out keeps its saved value, not the default: a 5000-step run resumed without its
    ``steps`` would stop at the default 200, and one started with another ``lr`` was refused."""
    saved: dict[str, Any] = {}
    try:
        state = json.loads((Path(out_dir) / checkpoint.TRAINER_FILE).read_text())
        saved = state.get("train_config") or {}
    except (OSError, ValueError, AttributeError):  # none there, or damaged: train() says which
        pass
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in saved.items() if k in known}
    if "steps" in given and "tokens" not in given:  # a step budget replaces a saved token budget
        settings["tokens"] = 0
    return TrainConfig(**{**settings, **given})


def resume_model_config(out_dir: str | os.PathLike, arch: str, overrides: Mapping[str, Any]) -> ModelConfig | None:
    """The model a resumed run continues: the checkpoint's own config with ``overrides`` on top
    (a changed field is then refused by :func:`train`, naming it), so a resume needs no repeat of
    the ``--set`` the run started with; those left out had turned into the preset's values and
    the resume was refused. None when ``out_dir`` holds no checkpoint (:func:`train` says so)."""
    if not checkpoint.is_checkpoint(out_dir):
        return None
    saved = checkpoint.read_config(out_dir)
    if saved.arch != arch:
        raise ConfigError(f"cannot resume {str(out_dir)!r} as {arch}: it holds a {saved.arch} model")
    return config_from_dict({**saved.to_dict(), **overrides})


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """Raise unless ``out_dir`` can take this run: ``resume`` needs a checkpoint there; a fresh
    run needs an absent or empty folder (never someone's files, nor a checkpoint it would
    silently overwrite) whose parent is writable."""
    clear_stale(out_dir.parent)  # a checkpoint whose save was killed mid-replace is put back first
    if resume:
        if not checkpoint.is_checkpoint(out_dir):
            found = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else "no such folder"
            raise checkpoint.CheckpointError(
                f"nothing to resume in {str(out_dir)!r}: it needs {checkpoint.CONFIG_FILE} and "
                f"{checkpoint.WEIGHTS_FILE} or {checkpoint.SHARDED_DIR}/ (found: {found}); drop --resume to start a new run")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output folder {str(out_dir)!r} is a file, not a folder; choose another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if checkpoint.is_checkpoint(out_dir):
            what = "a checkpoint; pass --resume to continue it"
        else:
            names = sorted(p.name for p in out_dir.iterdir())
            what = f"other files ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); move them away"
        raise ConfigError(f"output folder {str(out_dir)!r} already exists and holds {what}, or choose another folder")
    ensure_writable(out_dir.parent, "checkpoint's folder")


def lost_rank_error(exc: torch.distributed.DistError, replicas: Replicas, step: int, out_dir,
                    saved_step: int) -> DistributedError:
    """A collective that fails in a multi-process run means another rank is gone: say so, and
    where the run can resume from."""
    where = (f"the last checkpoint in {str(out_dir)!r} (step {saved_step}) is intact; rerun with --resume"
             if out_dir is not None and saved_step else "no checkpoint was written yet")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DistributedError(f"rank {replicas.rank}: lost another process at step {step + 1} ({first}); {where}")


def data_fingerprints(cfg: TrainConfig) -> dict[str, str]:
    """What the corpus's and the tokenizer's files hold (saved beside the run's settings, which name
    them by path only): a checkpoint resumes on the same text and the same token ids."""
    return {"corpus_fingerprint": data.corpus_fingerprint(cfg.corpus),
            "tokenizer_fingerprint": data.tokenizer_fingerprint(cfg.tokenizer)}


def _save(out_dir, model, optimizer, cfg: TrainConfig, step: int, history: list, replicas: Replicas,
          fingerprints: dict[str, str]) -> None:
    state = {"step": step, "train_config": cfg.to_dict(), "history": history, "rng": torch.get_rng_state().tolist(),
             **fingerprints}
    if replicas.in_process_group:
        sharded.save(out_dir, model, optimizer, {**state, "world_size": replicas.world_size})
    else:
        checkpoint.save_checkpoint(out_dir, model, optimizer, state)


def _restore(out_dir, model: LCModel, optimizer, cfg: TrainConfig, replicas: Replicas,
             fingerprints: dict[str, str]) -> tuple[int, list]:
    saved_config = checkpoint.read_config(out_dir)
    if saved_config != model.config:
        raise checkpoint.CheckpointError(
            f"cannot resume {str(out_dir)!r}: its model config differs from the requested one "
            f"({_config_diff(saved_config.to_dict(), model.config.to_dict())})"
        )
    state, optim_state = checkpoint.load_trainer_state(out_dir)
    missing = [key for key in ("step", "history", "rng") if key not in state]
    if missing:  # trainer.json is not checksummed: people edit it
        raise checkpoint.CheckpointError(f"{Path(out_dir) / checkpoint.TRAINER_FILE} is damaged: it lacks "
                                         f"{', '.join(map(repr, missing))}; the run cannot resume from it")
    saved = {**PREDATING_SETTINGS, **(state.get("train_config") or {})}
    changed = {k: (saved[k], v) for k, v in cfg.to_dict().items()
               if k in saved and k not in RESUMABLE_CHANGES and saved[k] != v}
    if changed:
        raise checkpoint.CheckpointError(
            f"cannot resume {str(out_dir)!r} with other training settings than it was started with: "
            + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            + "; keep them, or start a new run in another folder")
    for key, what in (("corpus_fingerprint", f"the corpus {cfg.corpus or 'stdlib'!r} holds other text"),
                      ("tokenizer_fingerprint", f"the tokenizer {cfg.tokenizer or 'byte'!r} holds other tokens")):
        if state.get(key, fingerprints[key]) != fingerprints[key]:  # the same path, other files
            raise checkpoint.CheckpointError(
                f"cannot resume {str(out_dir)!r}: {what} than when the checkpoint was saved (fingerprint "
                f"{state[key]} -> {fingerprints[key]}); the rest of the run would train on other data: restore "
                "the files, or start a new run in another folder")
    if checkpoint.is_sharded(out_dir):  # written by N processes: DCP reshards it for this run
        sharded.load(out_dir, model, optimizer)
    elif replicas.in_process_group:
        raise checkpoint.CheckpointError(
            f"cannot resume {str(out_dir)!r} on {replicas.world_size} processes: it was written by one process "
            f"({checkpoint.WEIGHTS_FILE}); resume it in one process, or start the multi-process run afresh")
    elif optim_state is None:
        raise checkpoint.CheckpointError(f"cannot resume {str(out_dir)!r}: it has no {checkpoint.OPTIMIZER_FILE}")
    else:
        checkpoint.load_weights(out_dir, model)
        optimizer.load_state_dict(optim_state)
    torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
    return state["step"], state["history"]


def _config_diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
