"""The ``ressearch`` command line: thin commands over library functions.

User errors (bad files, options, data) print one line and exit with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ressearch.errors import UserError

DATA_DIR_HELP = "Directory holding the MNIST IDX files (or torchvision's root). [env: RESSEARCH_DATA_DIR]"


class _Group(click.Group):
    """Turns :class:`UserError` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ressearch")
def cli() -> None:
    """Neural-architecture search for small residual networks.

    \b
    ressearch describe baseline            # the notebook's 17,946-parameter ResNet
    ressearch baseline --data-dir DATA     # train it with the notebook's recipe
    ressearch run --space search_spaces/small.yaml --data-dir DATA
    """


@cli.command()
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def describe(spec: str, as_json: bool) -> None:
    """Show SPEC's layers, parameter counts and MACs (SPEC: a preset name or a spec JSON file).

    \b
    Example:
        ressearch describe baseline --json
    """
    from ressearch.counting import count, layers
    from ressearch.spec import load_spec

    net = load_spec(spec)
    counts, rows = count(net), layers(net)
    if as_json:
        click.echo(json.dumps({
            "name": spec, "short": net.short(), "hash": net.hash(), "params": counts.params,
            "keras_params": counts.keras_params, "macs": counts.macs, "spec": net.to_dict(),
            "layers": [vars(r) for r in rows]}, indent=2))
        return
    click.echo(f"{spec}: {net.short()}  (hash {net.hash()})")
    click.echo(f"{'layer':<22} {'type':<24} {'output':>10} {'params':>8} {'MACs':>11}")
    for r in rows:
        shape = f"{r.out_channels}x{r.out_size}x{r.out_size}"
        click.echo(f"{r.name:<22} {r.describe():<24} {shape:>10} {r.params:>8,} {r.macs:>11,}")
    click.echo(f"trainable parameters: {counts.params:,}")
    click.echo(f"Keras-style parameters (with BN moving statistics): {counts.keras_params:,}")
    click.echo(f"multiply-accumulates per image: {counts.macs:,}")


@cli.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs (default: the recipe's, 12).")
@click.option("--recipe", type=click.Choice(["default", "notebook"]), default="default",
              show_default=True, help="'notebook' is the faithful transcription.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--out", type=click.Path(file_okay=False), default="results/baseline",
              show_default=True, help="Where metrics.json and the checkpoint go.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train-limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N training images (quick runs).")
@click.option("--test-limit", type=click.IntRange(min=1), default=None,
              help="Evaluate on the first N test images only (quick runs).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (default: all available).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast (default: on CUDA only).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout at the end.")
def baseline(epochs: int | None, recipe: str, data_dir: str | None, out: str, seed: int,
             train_limit: int | None, test_limit: int | None, threads: int | None, device: str,
             bf16: bool | None, as_json: bool) -> None:
    """Train the notebook's model with the notebook's recipe; write OUT/metrics.json + checkpoint.

    \b
    Example:
        ressearch baseline --data-dir ../shared/data --out results/baseline
    """
    from ressearch.checkpoint import save_checkpoint
    from ressearch.data import load_mnist, make_splits
    from ressearch.progress import EpochProgress
    from ressearch.recipes import get_recipe
    from ressearch.train import train

    chosen = get_recipe(recipe)
    changes: dict[str, Any] = {"seed": seed, "threads": threads, "device": device, "bf16": bf16}
    if epochs is not None:
        changes["epochs"] = epochs
    config = chosen.config.replace(**changes)
    spec = chosen.spec()
    data = load_mnist(data_dir)
    splits = make_splits(data, val_fraction=0.15, train_limit=train_limit, test_limit=test_limit)
    click.echo(f"training {spec.short()} on {len(splits.train):,} images "
               f"(validation {len(splits.val):,}, test {len(splits.test):,}), recipe {recipe}",
               err=True)
    progress = EpochProgress(config.epochs)
    result = train(spec, splits, config, callback=progress.on_epoch, on_step=progress.on_step)
    metrics = {**result.metrics(), "recipe": chosen.to_dict(), "data": data.source}
    save_checkpoint(Path(out), result.model, metrics)
    click.echo(f"test accuracy {100 * result.test_accuracy:.2f}%, validation "
               f"{100 * (result.val_accuracy or 0):.2f}%, {result.train_seconds:.0f}s of training "
               f"({result.images_per_second:,.0f} img/s); wrote {Path(out) / 'metrics.json'}",
               err=True)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))


@cli.command()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False),
              help="Search-space YAML file.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--storage", default=None,
              help="SQLAlchemy URL or study file (.db = SQLite, else an Optuna journal file). "
                   "Default: sqlite:///OUT/NAME.db.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Total trials, the baseline included (default: the space's).")
@click.option("--name", default=None, help="Study name (default: the space's).")
@click.option("--address", default=None,
              help="Ray cluster to join, e.g. 'auto' or 'ray://head:10001' (default: start one).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Directory for the study database and the trials' checkpoints.")
def run(space_file: str, data_dir: str | None, storage: str | None, trials: int | None,
        name: str | None, address: str | None, out: str) -> None:
    """Run (or continue) a multi-objective study: accuracy up, parameters down.

    Trials run as Ray tasks on every CPU/GPU of this machine or of a Ray cluster. Rerunning the
    same command continues the study up to its trial count.

    \b
    Example:
        ressearch run --space search_spaces/small.yaml --data-dir ../shared/data
        optuna-dashboard sqlite:///results/small.db
    """
    from ressearch.space import load_space
    from ressearch.storage import storage_url
    from ressearch.study import run_study

    space = load_space(space_file)
    result = run_study(space, data_dir=data_dir, storage=storage, trials=trials, name=name,
                       address=address, out=out)
    url = storage_url(storage or space.storage, out=out, name=name or space.name)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in result.counts.items())
    click.echo(f"study {result.study.study_name!r} in {url}: {counts}; "
               f"{result.seconds:.0f}s. Inspect it with: optuna-dashboard {url}", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ressearch")


if __name__ == "__main__":
    main()
