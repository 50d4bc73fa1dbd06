"""The ``lcbench`` command line: a thin layer over the library (logic lives, and is tested, there).

Each command imports what it runs inside its body, so that ``lcbench --help`` and light commands
do not load matplotlib, the sweep machinery or lm-eval (seconds each on a small machine).
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
from click.core import ParameterSource

from harness.api import registry
from harness.api.errors import DistributedError, LcbenchError
from harness.api.interrupts import sigterm_raises, stop_words
from harness.api.options import parse_assignments, split_items, whole_number
from harness.api.staging import made_for_results
from harness.api.timing import is_oom

if TYPE_CHECKING:
    from harness.report.claims import RunData


EXIT_OK = 0
EXIT_FAILED_WORK = 1  # the input was fine but work failed: a cell or row not ok, a regression, divergence, I/O
EXIT_USER_ERROR = 2  # bad input: a name, value, config, spec, folder or file that lcbench cannot use
MAX_REASONS = 5  # distinct failure messages shown after an eval's table


class UserError(click.ClickException):
    exit_code = EXIT_USER_ERROR


class FailedWork(click.ClickException):
    exit_code = EXIT_FAILED_WORK


class TokenCount(click.ParamType):
    """A number of tokens, spelt as task options and specs spell them: 8192 or 8K (K is 1024, M 1024²)."""
    name = "tokens"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return whole_number(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of tokens (e.g. 8192 or 8K)", param, ctx)


TOKENS = TokenCount()


def friendly_errors(fn: Callable) -> Callable:
    """One clear line instead of a traceback: lcbench's own errors (bad input) exit 2; a run that
    diverged, ran out of memory or could not write its files exits 1; Ctrl-C exits 130 and SIGTERM
    (kill, Slurm's time limit, a container's stop) 143, both saying so."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                with sigterm_raises():
                    return fn(*args, **kwargs)
            except BaseException:
                close_progress_bars()
                raise
        except LcbenchError as exc:
            raise UserError(str(exc)) from exc
        except (FloatingPointError, MemoryError, OSError, DistributedError) as exc:
            raise FailedWork(f"{type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            if not is_oom(exc):  # anything else is a bug: its traceback is what helps
                raise
            raise FailedWork(f"out of memory: {str(exc).splitlines()[0]}; try a shorter context or batch") from exc
        except KeyboardInterrupt as exc:  # click's own "Aborted!" exits 1, as work that failed does
            words, status = stop_words(exc)
            click.echo(f"\n{words}", err=True)
            sys.exit(status)

    return wrapper


def close_progress_bars() -> None:
    """Close the progress bars an error left drawn: a bar's line ends without a newline, and the
    error's line would be printed on the end of it."""
    from tqdm.std import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def resumes(how: str) -> Callable[[Callable], Callable]:
    """For a command whose rerun goes on where it stopped (sweep, quick, train): Ctrl-C or SIGTERM
    says ``how``, in one line, instead of a traceback from wherever the work was (or click's bare
    "Aborted!", exit 1, as for work that failed)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt as exc:
                words, status = stop_words(exc)
                click.echo(f"\n{words}: {how}", err=True)  # on a line of its own, not after the progress bar
                sys.exit(status)

        return wrapper

    return decorate


SWEEP_RESUMES = ("the cells that finished are kept, and a model in training resumes from its last save; rerun the "
                 "same command to go on")


def typed_options(*names: str) -> list[str]:
    """Which of the current command's parameters ``names`` the command line set, as spelt there
    (``--model``): for refusing options that another one would leave unread."""
    ctx = click.get_current_context()
    spelt = {p.name: p.opts[0] for p in ctx.command.params}
    return [spelt[n] for n in names if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]


def refuse_unread(names: list[str], reason: str) -> None:
    """Bad input: options given that the command would not read (their values silently dropped)."""
    if names:
        raise UserError(f"{', '.join(names)} {reason}")


def exit_if_failed(failed: int, what: str) -> None:
    """Exit 1 after a command's output when some of its work failed."""
    if failed:
        click.echo(f"{failed} {what} failed", err=True)
        sys.exit(EXIT_FAILED_WORK)


def exit_if_sweep_failed(result) -> None:
    """Exit 1 when a cell failed or two cells' rows clashed in the table."""
    exit_if_failed(result.failed, "cell(s)")
    if result.clashes:
        click.echo(f"{len(result.clashes)} pair(s) of cells gave rows the table cannot tell apart", err=True)
        sys.exit(EXIT_FAILED_WORK)


@click.group(epilog="Exit codes: 0 everything worked; 1 work failed (a sweep cell or an eval row is not ok, "
                    "a check found a regression, training diverged, a file could not be written); "
                    "2 bad input (an unknown name, a bad value, config, spec, folder or file), "
                    "reported in one line; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: kill, a time "
                    "limit, a container's stop), train, sweep and quick saying how to go on.")
@click.version_option(package_name="lcbench")
def main() -> None:
    """lcbench: compare long-context LM architectures on one interface."""
    warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A library warning (a skipped corpus file, a checkpoint read as bytes) as one line, without
    the file, line number and source line of lcbench's code that Python's own format adds."""
    _echo_err(f"warning: {message}")


def _echo_err(line: str) -> None:
    """``line`` on stderr, on a line of its own: while progress bars are drawn (a sweep's, a
    training's), through tqdm, which clears them, writes it and draws them again below; else it
    would be written on the end of a bar's line."""
    from tqdm.std import tqdm

    if getattr(tqdm, "_instances", None):
        tqdm.write(line, file=sys.stderr)
    else:
        click.echo(line, err=True)


@main.command("list")
@click.option("--presets/--no-presets", default=True, help="Show every preset's parameter counts.")
@click.option("--kernels", is_flag=True, help="Also say which optional kernel backends run on this machine, and why not.")
@friendly_errors
def list_cmd(presets: bool, kernels: bool) -> None:
    """Registered architectures (with presets and parameter counts) and tasks."""
    from harness.report.presets import preset_table

    click.echo("architectures:")
    if presets:
        click.echo(preset_table().to_string(index=False))
    else:
        click.echo("  " + ", ".join(registry.model_names()))
    click.echo("\ntasks: " + (", ".join(registry.task_names()) or "(none)"))
    if kernels:
        import pandas as pd
        import torch

        from harness.api.kernels import kernel_report

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        rows = kernel_report(registry.model_kernels(), device)
        click.echo(f"\nkernel backends here ({device.type}; every architecture also has its torch reference, which runs "
                   "anywhere, and attention sdpa):")
        click.echo(pd.DataFrame(rows).to_string(index=False) if rows else "  (none declared)")


@main.command()
@click.argument("arch")
@click.option("--preset", default="tiny", show_default=True, help="Model size (`lcbench list` shows each ARCH's).")
@click.option("--steps", type=int, default=None, help="Optimizer steps (default 200).")
@click.option("--tokens", type=TOKENS, default=None, help="Token budget (8192 or 8K; K is 1024, M 1024²): steps = tokens / (batch-size x seq-len x grad-accum), "
              "instead of --steps (give one; default: none, --steps counts).")
@click.option("--batch-size", type=int, default=None,
              help="Sequences per micro-batch, over all processes; a step reads --grad-accum of them (default 8).")
@click.option("--seq-len", type=TOKENS, default=None, help="Tokens per training sequence (default 256).")
@click.option("--lr", type=float, default=None, help="Peak learning rate, warm-up then cosine decay (default 0.003).")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step (default 1).")
@click.option("--seed", type=int, default=None,
              help="Seed of the weights, the data order and the train/val split (default 0).")
@click.option("--eval-every", type=int, default=None,
              help="Validation loss every N steps; 0: only at the end (default 50).")
@click.option("--save-every", type=int, default=None,
              help="Checkpoint every N steps into --out, so a killed run resumes (default: only at the end).")
@click.option("--corpus", default=None, help="Local text file, folder, .jsonl or .parquet (default: embedded stdlib "
              "corpus); records' text is read from field 'text', PATH#FIELD reads another.")
@click.option("--tokenizer", default=None, help="Local Hugging Face tokenizer path (default: bytes).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: cuda, each rank its own GPU)")
@click.option("--recipe", default=None, help="lcbench | official: the training recipe; official trains as the official "
              "TTT-E2E code does (lr 0 at the first update, weight decay on every parameter, warm-ups rounded down) "
              "(default lcbench).")
@click.option("--set", "model_set", multiple=True, help="Model config override key=value (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Checkpoint folder.")
@click.option("--parallel", type=click.Choice(["auto", "none", "fsdp", "ddp"]), default="auto", show_default=True,
              help="auto: FSDP2 under torchrun with several processes, else one process; fsdp or ddp: that "
                   "strategy (needs torchrun); none: one process. --batch-size stays the global batch.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out with its saved settings and model "
              "(options given here replace them: more --steps, another --save-every). "
              "Without it, --out must be new or empty.")
@friendly_errors
@resumes("the checkpoint last saved into --out (--save-every N saves every N steps) is kept; rerun with --resume "
         "to go on from it")
def train(arch: str, preset: str, model_set: tuple[str, ...], out: str | None, resume: bool, parallel: str,
          **train_opts: Any) -> None:
    """Train ARCH on a corpus and print its validation loss.

    On several GPUs: torchrun --nproc_per_node=N --no-python lcbench train ARCH ..."""
    from harness import data
    from harness.train.distributed import is_main_process, shutdown
    from harness.train.trainer import (TrainConfig, check_one_budget, resume_config, resume_model_config,
                                       train as run_training)

    given = {k: v for k, v in train_opts.items() if v is not None}
    check_one_budget(given, "lcbench train")
    cfg = resume_config(out, given) if resume and out else TrainConfig(**given)
    overrides = parse_assignments(model_set, "--set")
    # a resume continues the checkpoint's model unless --preset is given again
    model_config = resume_model_config(out, arch, overrides) if resume and out and not typed_options("preset") else None
    if model_config is None:
        overrides.setdefault("vocab_size", data.load_tokenizer(cfg.tokenizer).vocab_size)
        model_config = registry.make_config(arch, preset, **overrides)
    try:
        result = run_training(model_config, cfg, out_dir=out, resume=resume, parallel=parallel)
    finally:
        shutdown()
    if not is_main_process():  # under torchrun, rank 0 reports
        return
    click.echo(
        f"{arch} ({preset}, {result.model.num_params():,} non-embedding params): "
        f"val_loss {result.val_loss:.4f} after {result.step} steps, {result.tokens_per_s:,.0f} tokens/s"
        + (f"; checkpoint in {out}" if out else "")
    )


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/quick", show_default=True,
              help="Sweep folder: table, checkpoints, figures/ and tables/.")
@click.option("--arch", "archs", multiple=True, help="Only these architectures (repeatable; default: all).")
@click.option("--steps", type=int, default=None, help="Training steps per model (default: the spec's).")
@click.option("--retry-failed", is_flag=True, help="Run again the cells that failed before.")
@friendly_errors
@resumes(SWEEP_RESUMES)
def quick(out: str, archs: tuple[str, ...], steps: int | None, retry_failed: bool) -> None:
    """The quick benchmark on the embedded corpus: results/specs/quick.yaml, then its figures."""
    from harness.runs.quick import run_quick

    result = run_quick(out, list(archs) or None, steps, retry_failed=retry_failed)
    _summarise(result, out)
    _figures_and_tables(out)
    exit_if_sweep_failed(result)


def _summarise(result, out: str) -> None:
    from harness.runs.sweep import describe_failures

    click.echo(f"{result.ran} cells run, {result.skipped} already done, {result.failed} failed; table in {out}/")
    for line in describe_failures(out, result.keys):
        click.echo(f"  failed: {line}")
    if result.failed:  # a rerun skips them: they are recorded, as failed
        click.echo("  --retry-failed runs the failed cells again")
    for line in result.clashes:
        click.echo(f"  clash: {line}", err=True)


def _figures_and_tables(run_dir: str) -> None:
    from harness.report.plots import FIGURES_DIR, make_figures
    from harness.report.tables import format_tables, summary_tables, write_tables

    run = _with_samples(run_dir)
    tables = summary_tables(run.table, samples=run)
    click.echo(format_tables(tables, "md"))
    write_tables(tables, Path(run_dir) / "tables")
    _show_notes()  # why a figure was not drawn
    figures = make_figures(run.table, Path(run_dir) / FIGURES_DIR, samples=run)  # the table read once
    click.echo(f"{len(figures)} figure files in {run_dir}/figures/, tables in {run_dir}/tables/")


class _NoteHandler(logging.Handler):
    """Writes a record as an indented line on the current stderr (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        _echo_err(f"  {record.getMessage()}")


def _show_notes() -> None:
    """lcbench's own info lines (a figure skipped and why, stale files removed) on stderr. Only the
    ``harness`` logger's: the root logger at INFO would also print every library's, such as
    fontTools listing each glyph it subsets into a PDF."""
    log = logging.getLogger("harness")
    if not any(isinstance(h, _NoteHandler) for h in log.handlers):
        log.addHandler(_NoteHandler())
    log.setLevel(logging.INFO)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default RUN_DIR/figures.")
@click.option("--format", "formats", multiple=True, type=click.Choice(["png", "pdf", "svg"]), default=("png", "pdf"),
              show_default=True, help="File format of every figure (repeatable).")
@click.option("--only", multiple=True, help="Only these figures (repeatable).")
@click.option("--niah-metric", "niah_metrics", multiple=True, type=click.Choice(["gen_match", "cand_acc"]),
              help="NIAH accuracy to show (repeatable): generation (gen_match) or candidate ranking (cand_acc); default both.")
@friendly_errors
def plot(run_dir: str, out: str | None, formats: tuple[str, ...], only: tuple[str, ...],
         niah_metrics: tuple[str, ...]) -> None:
    """Paper figures (PNG + PDF) from a run or sweep folder; with its samples, the gaps to full attention
    and the speed-ups get the tables' intervals as bands."""
    _require_table(run_dir)
    from harness.report.plots import FIGURES_DIR, make_figures

    _show_notes()
    run = _with_samples(run_dir)
    for path in make_figures(run.table, out or Path(run_dir) / FIGURES_DIR, formats, only=list(only) or None,
                             niah_metrics=list(niah_metrics) or None, samples=run):  # the table read once
        click.echo(str(path))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default RUN_DIR/tables.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "tex"]), default="md", show_default=True,
              help="Format printed on stdout.")
@click.option("--save/--no-save", default=True, show_default=True, help="Also write md, csv and tex files.")
@click.option("--niah-metric", "niah_metrics", multiple=True, type=click.Choice(["gen_match", "cand_acc"]),
              help="NIAH accuracy to show (repeatable): generation (gen_match) or candidate ranking (cand_acc); default both.")
@friendly_errors
def table(run_dir: str, out: str | None, fmt: str, save: bool, niah_metrics: tuple[str, ...]) -> None:
    """Summary tables (loss, gaps, NIAH, latency, speed-ups, memory) of a run folder; with its samples,
    the gaps to full attention and the speed-ups get intervals."""
    _require_table(run_dir)
    from harness.report.tables import format_tables, summary_tables, write_tables

    # an unwritable folder is refused before anything is printed
    target = made_for_results(out or Path(run_dir) / "tables", "tables folder") if save else nullcontext()
    with target as folder:
        run = _with_samples(run_dir)
        tables = summary_tables(run.table, list(niah_metrics) or None, samples=run)
        click.echo(format_tables(tables, fmt))
        if folder is not None:  # on stderr, so that stdout (`lcbench table RUN > tables.md`) holds the tables alone
            click.echo(f"wrote {len(write_tables(tables, folder))} files to {folder}", err=True)


def _require_table(run_dir: str) -> None:
    """Before any folder is made in it: a misspelt run folder is named with its close match (click's
    own check named neither), one that holds runs, with those, and a sweep with no cell finished, so."""
    from harness.runs.sweep import require_table

    require_table(run_dir)


def _with_samples(run_dir: str) -> RunData:
    """The folder's table and its current cells' samples (none when it kept none), read as the claims read them."""
    from harness.report.claims import load_run
    from harness.runs.sweep import current_sample_files

    return load_run(run_dir, current_sample_files(run_dir), required=False)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Default RUN_DIR/claims.md.")
@click.option("--model", "picks", multiple=True, metavar="ARCH=NAME",
              help="The model judged for an architecture that has several in the run (default: the first).")
@friendly_errors
def claims(run_dir: str, out: str | None, picks: tuple[str, ...]) -> None:
    """Judge the TTT-E2E paper's five claims (context, position, recall, speed, constant_latency) on a run or
    sweep folder."""
    from harness.api.results import atomic_write
    from harness.report.claims import judge, load_run, render_markdown
    from harness.runs.store import ResultStore
    from harness.runs.sweep import current_sample_files

    chosen = parse_assignments(picks, "--model", form="ARCH=NAME", as_json=False)
    _require_table(run_dir)
    target = Path(out or Path(run_dir) / "claims.md")
    with made_for_results(target.parent, "claims folder"):  # refused before the verdicts are printed
        run = load_run(run_dir, current_sample_files(run_dir), ResultStore(run_dir).finished().values())
        run.pick(chosen)
        text = render_markdown(judge(run), run.judged_note())
        click.echo(text, nl=False)
        atomic_write(target, lambda f: f.write(text))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Default RUN_DIR/report.html.")
@friendly_errors
def report(run_dir: str, out: str | None) -> None:
    """One self-contained HTML page of a run or sweep: figures, tables, failures, spec, metadata."""
    _require_table(run_dir)
    from harness.report.html import write_report
    from harness.runs.sweep import unfinished_cells

    _show_notes()
    unfinished = unfinished_cells(run_dir)
    if unfinished:
        click.echo(f"warning: {len(unfinished)} cell(s) of the sweep's spec have no result yet (interrupted or still "
                   "running); the report lists them", err=True)
    click.echo(str(write_report(run_dir, out, _with_samples(run_dir), unfinished)))


@main.command("eval")
@click.argument("task")
@click.option("--model", "model_spec", default=None, help="Checkpoint folder, or ARCH[:PRESET] (untrained).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (default runs/eval/TASK-MODEL).")
@click.option("--option", "-o", "options", multiple=True, help="Task option key=value (repeatable), e.g. -o contexts=1K,4K.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", default="auto", show_default=True,
              help="auto (bf16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16 (or fp32, bf16, fp16)")
@click.option("--backend", default=None, help="Override the model's mixer backend.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the task's random draws (windows, needles).")
@click.option("--list-options", is_flag=True, help="Show the task's options and exit.")
@friendly_errors
def eval_cmd(task: str, model_spec: str | None, out: str | None, options: tuple[str, ...], device: str, dtype: str,
             backend: str | None, seed: int, list_options: bool) -> None:
    """Run TASK on a model and write a tidy result table."""
    from harness.runs.evaluate import run_eval, task_options

    if list_options:
        for opt in task_options(task):
            click.echo(f"  {opt['name']:<20} {opt['type']:<12} default {opt['default']!r:<24} {opt['help']}")
        return
    if model_spec is None:
        raise click.UsageError("--model is required (a checkpoint folder, or ARCH[:PRESET])")
    if out is None:
        out = f"runs/eval/{task}-{Path(model_spec).name.replace(':', '-')}"
    result = run_eval(task, model_spec, out, parse_assignments(options, "--option"), device=device, dtype=dtype, backend=backend,
                      seed=seed)
    _echo_table(result.table)
    click.echo(f"{len(result.table)} rows in {out}/")
    _exit_if_rows_failed(result.table)


def _exit_if_rows_failed(table) -> None:
    """Exit 1 when rows are not ok, after one line per distinct failure (the printed table leaves
    the message column out)."""
    failed = table[table["status"] != "ok"]
    reasons = failed.assign(message=failed["message"].fillna("")).groupby(["status", "message"], sort=False).size()
    for (status, message), count in reasons.head(MAX_REASONS).items():
        click.echo(f"  {status} ({count} row{'s' if count > 1 else ''}): {message or '(no message)'}", err=True)
    if len(reasons) > MAX_REASONS:
        click.echo(f"  ... and {len(reasons) - MAX_REASONS} other reason(s); the table's message column has them all", err=True)
    exit_if_failed(len(failed), "row(s)")


def _echo_table(table) -> None:
    cols = [c for c in table.columns if table[c].notna().any() and c not in ("run", "message", "device", "seed")]
    click.echo(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep folder (default runs/SPEC_NAME).")
@click.option("--retry-failed", is_flag=True, help="Run again the cells that failed before.")
@click.option("--executor", type=click.Choice(["inline", "local", "slurm"]), default="inline", show_default=True,
              help="inline: one cell after another in this process; local: submitit processes; slurm: Slurm jobs.")
@click.option("--jobs", type=click.Choice(["model", "cell"]), default=None, help="One job per model (default) or per cell.")
@click.option("--workers", type=int, default=None, help="Jobs running at once (default 4).")
@click.option("--partition", default=None, help="Slurm partition.")
@click.option("--gpus-per-job", type=int, default=None, help="GPUs per job (default 0).")
@click.option("--cpus-per-job", type=int, default=None, help="CPUs per job (default: the executor's).")
@click.option("--mem-gb", type=int, default=None, help="Slurm memory per job.")
@click.option("--time-min", type=int, default=None, help="Each job's time limit in minutes (default 60).")
@click.option("--account", default=None, help="Slurm account.")
@click.option("--qos", default=None, help="Slurm QOS.")
@click.option("--constraint", default=None, help="Slurm constraint (node features).")
@click.option("--slurm-opt", "slurm_opts", multiple=True, help="Any other sbatch option key=value (repeatable).")
@friendly_errors
@resumes(SWEEP_RESUMES)
def sweep(spec: str, out: str | None, retry_failed: bool, executor: str, slurm_opts: tuple[str, ...],
          **cluster: Any) -> None:
    """Run every cell of a sweep SPEC (YAML/TOML); reruns skip finished cells. Cluster settings
    come from the spec's `cluster:` mapping; the options here override them."""
    from harness.runs.sweep import load_spec, run_sweep

    if executor == "inline":  # it runs every cell here and would drop them unread
        refuse_unread(typed_options(*cluster, "slurm_opts"), "set how jobs run; they need --executor local or slurm "
                      "(the default, inline, runs every cell in this process)")
    parsed = load_spec(spec)
    out = out or f"runs/{parsed.name}"
    if executor == "inline":
        result = run_sweep(parsed, out, retry_failed=retry_failed)
    else:
        from harness.runs.jobs import run_sweep_jobs  # imports submitit (the cluster extra)

        if slurm_opts:
            cluster["slurm"] = {**parsed.cluster.get("slurm", {}), **parse_assignments(slurm_opts, "--slurm-opt")}
        result = run_sweep_jobs(parsed, out, executor, retry_failed=retry_failed, **cluster)
    _summarise(result, out)
    exit_if_sweep_failed(result)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--reference", type=click.Path(dir_okay=False), required=True, help="Reference CSV, as written by --update.")
@click.option("--update", is_flag=True, help="Rewrite the reference from this run (on purpose only).")
@click.option("--all", "show_all", is_flag=True, help="Show every score, not only those that moved.")
@friendly_errors
def check(run_dir: str, reference: str, update: bool, show_all: bool) -> None:
    """Compare RUN_DIR's scores with a reference; exit 1 on a regression or a missing cell."""
    from harness.runs import check as checks
    from harness.api.results import read_table

    if update:
        refuse_unread(typed_options("show_all"), "cannot go with --update: --update writes the reference and compares nothing")
        path = checks.write_reference(read_table(run_dir), reference)
        click.echo(f"reference written: {path}")
        return
    result = checks.check_run(run_dir, reference)
    click.echo(checks.format_report(result, show_all))
    if not result.passed:
        sys.exit(EXIT_FAILED_WORK)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/gate", show_default=True,
              help="Folder for the gate's runs (one sweep folder per layer).")
@click.option("--layer", "layers", multiple=True, type=click.Choice(["eval", "train"]),
              help="Run only this layer (repeatable; default both).")
@click.option("--model", "models", multiple=True, help="Only this model of the gate (repeatable).")
@click.option("--task", "tasks", multiple=True, help="Only this task of the gate (repeatable).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads (0: leave as set).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Models run at once, each in a worker process with --threads threads (the scores do not change).")
@click.option("--update", is_flag=True, help="Remake every reference, checkpoints included, from this code (on purpose only).")
@click.option("--all", "show_all", is_flag=True, help="Show every score, not only those that moved.")
@friendly_errors
def gate(out: str, layers: tuple[str, ...], models: tuple[str, ...], tasks: tuple[str, ...], threads: int,
         workers: int, update: bool, show_all: bool) -> None:
    """CI's score gate: committed checkpoints evaluated by four tasks (tight, two-sided tolerances) and
    models retrained with several seeds (seed-aggregated scores within a multiple of their spread).

    Exit codes: 0 passed, 1 a score moved beyond its allowance or a cell failed, 2 bad input,
    3 the references were made on other data and cannot judge this run, 130 Ctrl-C, 143 SIGTERM."""
    from harness.runs import gate as gates

    if update:
        refuse_unread(typed_options("layers", "models", "tasks", "workers", "show_all"),
                      "cannot go with --update: --update remakes every reference, of both layers, in this process "
                      "(results/reference/gate/README.md says how to update them honestly)")
        made = gates.update_gate(out, threads=threads)
        click.echo(f"references remade in {gates.GATE_DIR}: {made['scores']} scores, data {made['data_fingerprint']}")
        return
    layer_results = gates.run_gate(out, tuple(layers) or gates.LAYERS, list(models) or None, list(tasks) or None,
                                   threads=threads, workers=workers)
    click.echo(gates.format_gate(layer_results, show_all))
    sys.exit(gates.exit_code(layer_results))


def _token_counts(value: str | None, option: str) -> list[int] | None:
    items = split_items(value or "", option, "4096,8K")  # outside the try: its error is a ValueError too
    try:
        return [whole_number(v) for v in items] or None
    except ValueError:
        raise UserError(f"{option} takes comma-separated numbers of tokens (e.g. 4096,8K), got {value!r}") from None


@main.command("lm-eval")
@click.argument("model_spec")
@click.option("--tasks", required=True, help="Comma-separated lm-eval task names.")
@click.option("--lengths", default=None, help="RULER max_seq_lengths, comma-separated (e.g. 4096,8K).")
@click.option("--limit", type=float, default=None, help="Examples per task (or per RULER length); below 1, a fraction of each task (default: all).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (default runs/lm_eval/TASKS-MODEL).")
@click.option("--tokenizer", default=None, help="Tokenizer (default: the checkpoint's).")
@click.option("--include-path", multiple=True, help="Folders of extra task YAMLs (repeatable).")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples per prompt (default: each task's own).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", default="auto", show_default=True,
              help="auto (bf16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16 (or fp32, bf16, fp16)")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Requests scored per forward pass.")
@click.option("--max-length", type=TOKENS, default=None,
              help="Context cap in tokens (default: none; lm-eval's hf model uses 2048 without max_position_embeddings).")
@click.option("--add-bos/--no-add-bos", default=None,
              help="Start every text with the tokenizer's BOS (default: when the tokenizer adds one, as lm-eval's hf; "
                   "not for a checkpoint lcbench trained, which never saw BOS).")
@click.option("--prefix-token", type=int, default=None,
              help="Token id an empty context or a rolling document starts from (default: BOS, else EOS, else '\\n').")
@click.option("--seed", type=int, default=0, show_default=True, help="lm-eval's random, numpy, torch and few-shot seed.")
@friendly_errors
def lm_eval_cmd(model_spec: str, tasks: str, lengths: str | None, limit: float | None, out: str | None,
                tokenizer: str | None, include_path: tuple[str, ...], num_fewshot: int | None, device: str,
                dtype: str, batch_size: int, max_length: int | None, add_bos: bool | None, prefix_token: int | None,
                seed: int) -> None:
    """Run lm-evaluation-harness tasks on MODEL_SPEC (checkpoint or ARCH[:PRESET]) into a tidy table."""
    from harness.adapters.lm_eval import default_out_dir, run_lm_eval

    task_list = split_items(tasks, "--tasks", "hellaswag,ruler")
    out = out or str(default_out_dir(model_spec, task_list))
    table = run_lm_eval(model_spec, task_list, limit=limit, out_dir=out,
                        max_seq_lengths=_token_counts(lengths, "--lengths"), tokenizer=tokenizer,
                        include_path=list(include_path) or None, num_fewshot=num_fewshot, device=device, dtype=dtype,
                        batch_size=batch_size, max_length=max_length, add_bos_token=add_bos, prefix_token=prefix_token,
                        seed=seed)
    _echo_table(table)
    click.echo(f"{len(table)} rows in {out}/")
    _exit_if_rows_failed(table)


@main.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="auto", show_default=True,
              help="auto (from the folder's config.json), llama, gated_deltanet, mamba2 or mamba_ssm.")
@click.option("--dtype", default=None, help="Parameter dtype of the imported model (default float32).")
@click.option("--backend", default=None, help="Our mixer backend (default auto).")
@friendly_errors
def import_cmd(source: str, out: str, fmt: str, dtype: str | None, backend: str | None) -> None:
    """Import a local Hugging Face-format checkpoint (Llama, fla GDN/Mamba 2, mamba-ssm) into OUT."""
    from harness.adapters.importers import import_pretrained

    model = import_pretrained(source, out, format=fmt, dtype=dtype, backend=backend)
    click.echo(f"{model.config.arch}: {model.num_params():,} non-embedding params -> {out}")


@main.command("export-hf")
@click.argument("checkpoint")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--tokenizer", default=None, help="Tokenizer (default: the checkpoint's).")
@friendly_errors
def export_hf_cmd(checkpoint: str, out: str, tokenizer: str | None) -> None:
    """Write CHECKPOINT (a checkpoint folder, or ARCH[:PRESET]: random weights) as a Hugging Face model folder
    OUT (AutoModelForCausalLM, trust_remote_code=True)."""
    from harness.adapters.hf_export import export_hf

    click.echo(f"{export_hf(checkpoint, out, tokenizer=tokenizer)}: load it with AutoModelForCausalLM.from_pretrained"
               "(..., trust_remote_code=True) or lm_eval --model hf --model_args pretrained=...,trust_remote_code=True")


@main.command("import-ttt-e2e")
@click.argument("source", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The run's Hydra YAML (RoPE theta, window, mini-batch, inner optimiser).")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local Hugging Face tokenizer folder to copy beside the checkpoint (the official runs use Llama 3's).")
@click.option("--backend", default=None, help="Our mixer backend (default auto).")
@friendly_errors
def import_ttt_e2e_cmd(source: str, out: str, config_path: str | None, tokenizer: str | None,
                       backend: str | None) -> None:
    """Convert an official TTT-E2E (JAX) checkpoint into an lcbench ttt_e2e checkpoint in OUT."""
    from harness.adapters.importers import import_ttt_e2e

    model = import_ttt_e2e(source, out, config=config_path, tokenizer=tokenizer, backend=backend)
    click.echo(f"{model.config.arch}: {model.num_params():,} non-embedding params -> {out}")


@main.command("data-report")
@click.option("--corpus", default=None, help="Local corpus (default: embedded stdlib corpus); PATH#FIELD reads "
              "records' text from FIELD instead of 'text'.")
@click.option("--tokenizer", default=None, help="Local Hugging Face tokenizer path (default: bytes).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the train/validation split: that of `lcbench train --seed N` (or its split_seed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def data_report(corpus: str | None, tokenizer: str | None, seed: int, as_json: bool) -> None:
    """Documents, tokens and how many documents reach 4K/16K/64K/128K tokens."""
    from harness import data

    report = data.corpus_report(data.load_corpus(corpus), data.load_tokenizer(tokenizer), seed=seed, source=corpus,
                                progress=True)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())


if __name__ == "__main__":
    sys.exit(main())
