"""Window embeddings, their on-disk cache, and nearest-neighbour search.

An *embedder* maps token windows ``[N, L]`` to vectors ``[N, D]``:

- ``hidden``: the model's final hidden states, mean-pooled over positions (needs the optional
  ``hidden_states(tokens) -> (h [B, T, D], state)`` method, which every backbone model has);
- ``logprobs``: the model's next-token log-probabilities, mean-pooled (any :class:`LCModel`);
- ``model``: ``hidden`` when the model has ``hidden_states``, else ``logprobs``;
- ``bytes``: a bag of token ids (of bytes, with the byte tokenizer): token counts over the
  vocabulary; it ignores the model, so it is cheap and the same for every model.

:func:`embed_windows` caches embeddings as ``.pt`` files keyed by a hash of everything they
depend on: the embedder, the window tokens themselves (so corpus, tokenizer, split and window
settings are all covered) and, for model embedders, the model's config and weights (for ``bytes``,
only its vocabulary size, the width of the bag).
:func:`nearest` is exact cosine k-NN in torch (blocks of queries, so memory stays bounded), or a
faiss flat inner-product index when faiss is installed and asked for.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.api.errors import BackendUnavailableError, ConfigError, check_choice
from harness.api.interface import LCModel

EMBEDDERS = ("model", "hidden", "logprobs", "bytes")
INDEXES = ("exact", "faiss")
DEFAULT_CACHE = Path(os.environ.get("LCBENCH_CACHE", "~/.cache/lcbench")).expanduser() / "embeddings"


@dataclass(frozen=True)
class Embedder:
    """``embed(model, tokens [B, L]) -> [B, D]`` float32; ``uses_model``: whether the result
    depends on the model (and so whether the cache key includes its weights)."""

    name: str
    embed: Callable[[LCModel, torch.Tensor], torch.Tensor]
    uses_model: bool = True


def _hidden(model: LCModel, tokens: torch.Tensor) -> torch.Tensor:
    return model.hidden_states(tokens)[0].float().mean(1)


def _logprobs(model: LCModel, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(tokens).float(), -1).mean(1)


def _bag_of_tokens(model: LCModel, tokens: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros(tokens.size(0), model.config.vocab_size, device=tokens.device)
    return counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))


def has_hidden_states(model: LCModel) -> bool:
    return callable(getattr(model, "hidden_states", None))


def get_embedder(name: str, model: LCModel) -> Embedder:
    """The embedder ``name`` (one of :data:`EMBEDDERS`) for ``model``."""
    check_choice("embedder", name, EMBEDDERS)
    if name == "model":
        name = "hidden" if has_hidden_states(model) else "logprobs"
    if name == "hidden" and not has_hidden_states(model):
        raise ConfigError(f"embedder 'hidden' needs a model with a hidden_states method; {type(model).__name__} "
                          "has none: use 'logprobs', 'bytes' or 'model' (which falls back to logprobs)")
    fn = {"hidden": _hidden, "logprobs": _logprobs, "bytes": _bag_of_tokens}[name]
    return Embedder(name, fn, uses_model=name != "bytes")


def model_fingerprint(model: LCModel) -> str:
    """A hash of the model's class, config and weights (bit for bit)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    h.update(repr(sorted(model.config.to_dict().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(model: LCModel, windows: torch.Tensor, embedder: Embedder) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{embedder.name}|{tuple(windows.shape)}|".encode())
    h.update(windows.to(torch.int64).cpu().contiguous().numpy().tobytes())
    if embedder.uses_model:
        h.update(model_fingerprint(model).encode())
    else:  # the bag of tokens ignores the weights, not the width: one count per vocabulary entry
        h.update(f"|vocab={model.config.vocab_size}".encode())
    return h.hexdigest()


def embed_windows(model: LCModel, windows: torch.Tensor, embedder: Embedder, batch_size: int = 16,
                  cache_dir: str | os.PathLike | None = DEFAULT_CACHE, progress: bool = False) -> torch.Tensor:
    """Embeddings ``[N, D]`` (float32, CPU) of ``windows [N, L]``, read from or written to
    ``cache_dir`` (``None``: no cache). The model is run in batches on its own device;
    ``progress``: a bar over the windows (ttt_neighbors' 4096 take minutes on a CPU, which
    showed nothing)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / f"{cache_key(model, windows, embedder)}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    device = next(model.parameters()).device
    bar = tqdm(total=len(windows), desc=f"embed ({embedder.name})", unit="window", leave=False, disable=not progress)
    parts = []
    with torch.no_grad(), bar:
        for i in range(0, len(windows), batch_size):
            parts.append(embedder.embed(model, windows[i : i + batch_size].to(device)).float().cpu())
            bar.update(len(parts[-1]))
    out = torch.cat(parts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return out


def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int, index: str = "exact",
            block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities ``[Q, k]``, indices ``[Q, k]`` into ``keys``), most similar first."""
    check_choice("index", index, INDEXES)
    if not 0 <= k <= len(keys):
        raise ConfigError(f"k={k} neighbours asked for, but the corpus has {len(keys)} windows")
    q = F.normalize(queries.float(), dim=-1)
    keys = F.normalize(keys.float(), dim=-1)
    if index == "faiss":
        return _faiss_nearest(q, keys, k)
    sims, idx = [], []
    for i in range(0, len(q), block):
        s, j = (q[i : i + block] @ keys.T).topk(k, dim=-1)
        sims.append(s)
        idx.append(j)
    return torch.cat(sims), torch.cat(idx)


def _faiss_nearest(q: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError:
        raise BackendUnavailableError("index 'faiss' needs the faiss package (pip install faiss-cpu), "
                                      "which is not installed; use index 'exact'") from None
    flat = faiss.IndexFlatIP(keys.size(1))  # inner product of unit vectors = cosine
    flat.add(keys.cpu().numpy())
    sims, idx = flat.search(q.cpu().numpy(), k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()
