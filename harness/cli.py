"""The ``lcbench`` command line: a thin layer over the library (logic lives, and is tested, there)."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from harness import registry
from harness.errors import LcbenchError


def friendly_errors(fn: Callable) -> Callable:
    """Print lcbench's own errors as one clear line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LcbenchError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group()
@click.version_option(package_name="lcbench")
def main() -> None:
    """lcbench: compare long-context LM architectures on one interface."""


@main.command("list")
@click.option("--presets/--no-presets", default=True, help="Show every preset's parameter counts.")
@friendly_errors
def list_cmd(presets: bool) -> None:
    """Registered architectures (with presets and parameter counts) and tasks."""
    from harness.summary import preset_table

    click.echo("architectures:")
    if presets:
        click.echo(preset_table().to_string(index=False))
    else:
        click.echo("  " + ", ".join(registry.model_names()))
    click.echo("\ntasks: " + (", ".join(registry.task_names()) or "(none)"))


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """--set key=value pairs; values are parsed as JSON when they can be (numbers, booleans)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@main.command()
@click.argument("arch")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: TrainConfig's).")
@click.option("--tokens", type=int, default=None, help="Token budget; overrides --steps.")
@click.option("--batch-size", type=int, default=None)
@click.option("--seq-len", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--grad-accum", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--eval-every", type=int, default=None)
@click.option("--corpus", default=None, help="Local text file, folder, .jsonl or .parquet (default: embedded stdlib corpus).")
@click.option("--tokenizer", default=None, help="Local Hugging Face tokenizer path (default: bytes).")
@click.option("--device", default=None, help="auto | cpu | cuda")
@click.option("--set", "model_set", multiple=True, help="Model config override key=value (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Checkpoint folder.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@friendly_errors
def train(arch: str, preset: str, model_set: tuple[str, ...], out: str | None, resume: bool, **train_opts: Any) -> None:
    """Train ARCH on a corpus and print its validation loss."""
    from harness import data
    from harness.train import TrainConfig, train as run_training

    cfg = TrainConfig(**{k: v for k, v in train_opts.items() if v is not None})
    overrides = _parse_overrides(model_set)
    overrides.setdefault("vocab_size", data.load_tokenizer(cfg.tokenizer).vocab_size)
    model_config = registry.make_config(arch, preset, **overrides)
    result = run_training(model_config, cfg, out_dir=out, resume=resume)
    click.echo(
        f"{arch} ({preset}, {result.model.num_params():,} non-embedding params): "
        f"val_loss {result.val_loss:.4f} after {result.step} steps, {result.tokens_per_s:,.0f} tokens/s"
        + (f"; checkpoint in {out}" if out else "")
    )


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/quick", show_default=True)
@click.option("--arch", "archs", multiple=True, help="Only these architectures (repeatable; default: all).")
@click.option("--steps", type=int, default=None, help="Training steps per model.")
@friendly_errors
def quick(out: str, archs: tuple[str, ...], steps: int | None) -> None:
    """The quick benchmark on the embedded corpus (tiny models, CPU-sized)."""
    import dataclasses

    from harness.quick import QUICK_TRAIN, run_quick

    cfg = QUICK_TRAIN if steps is None else dataclasses.replace(QUICK_TRAIN, steps=steps)
    result = run_quick(out, list(archs) or None, cfg)
    click.echo(result.table.to_string(index=False, float_format=lambda v: f"{v:,.4f}"))
    click.echo(f"checkpoints in {result.out_dir}/")


@main.command("data-report")
@click.option("--corpus", default=None, help="Local corpus (default: embedded stdlib corpus).")
@click.option("--tokenizer", default=None, help="Local Hugging Face tokenizer path (default: bytes).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def data_report(corpus: str | None, tokenizer: str | None, as_json: bool) -> None:
    """Documents, tokens and how many documents reach 4K/16K/64K/128K tokens."""
    from harness import data

    report = data.corpus_report(data.load_corpus(corpus), data.load_tokenizer(tokenizer), source=corpus)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())


if __name__ == "__main__":
    sys.exit(main())
