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
    """Train the notebook's model with a named recipe; write OUT/metrics.json + checkpoint.

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
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (running trials are queued again).")
def run(space_file: str, data_dir: str | None, storage: str | None, trials: int | None,
        name: str | None, address: str | None, out: str, timeout: float | None) -> None:
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
                       address=address, out=out, timeout=timeout)
    url = storage_url(storage or space.storage, out=out, name=name or space.name)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in result.counts.items())
    click.echo(f"study {result.study.study_name!r} in {url}: {counts}; "
               f"{result.seconds:.0f}s. Inspect it with: optuna-dashboard {url}", err=True)


def _study_option(f: Any) -> Any:
    return click.option("--name", default=None,
                        help="Study name, when the storage holds several.")(f)


@cli.command()
@click.argument("study")
@_study_option
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), default=None,
              help="Also write every trial as CSV here.")
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON records.")
def front(study: str, name: str | None, csv_file: str | None, as_json: bool) -> None:
    """Show STUDY's Pareto front (STUDY: a study file such as results/small.db, or a URL).

    The baseline's row is marked with '*' for comparison.

    \b
    Example:
        ressearch front results/small.db --csv results/small-trials.csv
    """
    import pandas as pd

    from ressearch.results import front_table, trials_table
    from ressearch.storage import load_study

    loaded = load_study(study, name)
    table = front_table(loaded)
    if csv_file:
        trials_table(loaded).to_csv(csv_file, index=False)
        click.echo(f"wrote {csv_file}", err=True)
    if as_json:
        click.echo(table.to_json(orient="records", indent=2))
        return
    if table.empty:
        click.echo("no completed trial yet")
        return
    click.echo(f"{'':1}{'trial':>5} {'params':>8} {'keras':>8} {'MACs':>11} {'val':>7} {'test':>7} "
               f"{'epochs':>6}  architecture")
    for r in table.itertuples():
        mark = "*" if r.baseline else " "
        val = "-" if pd.isna(r.val_accuracy) else f"{100 * r.val_accuracy:.2f}"
        test = "-" if pd.isna(r.test_accuracy) else f"{100 * r.test_accuracy:.2f}"
        # A failed or untrained baseline has no epochs: the column is then float with NaN.
        epochs = "-" if pd.isna(r.epochs) else int(r.epochs)
        click.echo(f"{mark}{r.trial:>5} {r.params:>8,} {r.keras_params:>8,} {r.macs:>11,} {val:>7} "
                   f"{test:>7} {epochs:>6}  {r.architecture}")


@cli.command()
@click.argument("study")
@_study_option
@click.option("--trial", type=int, default=None, help="Export this trial.")
@click.option("--max-params", type=click.IntRange(min=1), default=None,
              help="The most accurate front model within P trainable parameters.")
@click.option("--min-accuracy", type=float, default=None,
              help="The smallest front model reaching A on the objective's split (0.99 or 99).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Export directory (model.onnx, model.safetensors, spec.json, metrics.json, "
                   "README.md).")
@click.option("--fold-bn", is_flag=True, help="Fold each BatchNorm into the conv before it.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export(study: str, name: str | None, trial: int | None, max_params: int | None,
           min_accuracy: float | None, out: str, fold_bn: bool, data_dir: str | None,
           as_json: bool) -> None:
    """Pick a model from STUDY's front and export it for deployment, verified.

    \b
    Example:
        ressearch export results/small.db --max-params 5000 --out exports/small-5k --fold-bn
    """
    from dataclasses import asdict

    from ressearch.checkpoint import load_metrics
    from ressearch.data import load_mnist
    from ressearch.export import export_model
    from ressearch.results import select_trial
    from ressearch.storage import load_study

    chosen = select_trial(load_study(study, name), trial=trial, max_params=max_params,
                          min_accuracy=min_accuracy)
    checkpoint = chosen.user_attrs["checkpoint"]
    metrics = {**load_metrics(checkpoint), "trial": chosen.number}
    test = load_mnist(data_dir).test
    limit = metrics.get("test_images")
    report = export_model(checkpoint, out, fold_bn=fold_bn, metrics=metrics,
                          test_split=test.take(limit) if limit else test,
                          source=f"{study} trial {chosen.number}")
    click.echo(f"trial {chosen.number} ({chosen.user_attrs.get('short')}): wrote "
               f"{Path(out) / 'model.onnx'}, {report.deployed_params:,} stored numbers "
               f"({report.folded} BatchNorms folded); max |ONNX - PyTorch| {report.max_abs_diff:.1e}; "
               f"ONNX test accuracy {100 * report.onnx_test_accuracy:.2f}% on "
               f"{report.test_images:,} images, as recorded", err=True)
    if as_json:
        click.echo(json.dumps({**asdict(report), "out_dir": str(report.out_dir),
                               "trial": chosen.number}, indent=2))


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def predict(model_dir: str, files: tuple[str, ...], as_json: bool) -> None:
    """Classify digit images (PNG/JPEG files, IDX image files) with MODEL_DIR's model.

    MODEL_DIR is an export (runs model.onnx with ONNX Runtime) or a checkpoint (runs PyTorch).

    \b
    Example:
        ressearch predict exports/small-5k digit.png t10k-images-idx3-ubyte.gz
    """
    from collections import Counter

    from ressearch.predict import predict_files

    predictions = predict_files(model_dir, files)
    per_file = Counter(p.path for p in predictions)
    for p in predictions:
        if as_json:
            click.echo(json.dumps({"path": str(p.path), "index": p.index, "label": p.label,
                                   "probability": round(p.probability, 6)}))
        else:
            where = f"{p.path}[{p.index}]" if per_file[p.path] > 1 else str(p.path)
            click.echo(f"{where}\t{p.label}\t{p.probability:.3f}")


@cli.command()
@click.argument("study")
@_study_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for report.html (default: next to the study file).")
@click.option("--trial", type=int, default=None,
              help="The model whose confusion matrix is shown (default: the front's most accurate).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
def report(study: str, name: str | None, out: str | None, trial: int | None,
           data_dir: str | None) -> None:
    """Write one self-contained HTML page of plotly figures about STUDY (works offline).

    \b
    Example:
        ressearch report results/small.db --out results/small
    """
    from ressearch.report import build_report
    from ressearch.storage import load_study

    loaded = load_study(study, name)
    target = Path(out) if out else Path(study).with_suffix("") if "://" not in study else Path(".")
    path = build_report(loaded, target, data_dir=data_dir, trial=trial)
    click.echo(f"wrote {path}", err=True)


@cli.command()
@click.argument("study")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the dashboard to the network.")
def dashboard(study: str, port: int, host: str) -> None:
    """Open STUDY in optuna-dashboard, with the front and hypervolume figures attached.

    \b
    Example:
        ressearch dashboard results/small.db --port 8080
        # the same study in plain optuna-dashboard:
        optuna-dashboard sqlite:///results/small.db
    """
    import optuna
    from optuna_dashboard import run_server

    from ressearch.report import attach_to_dashboard
    from ressearch.storage import load_study, open_storage

    storage = open_storage(study, must_exist="://" not in study)
    for summary in optuna.get_all_study_summaries(storage):
        attach_to_dashboard(load_study(study, summary.study_name))
    click.echo(f"optuna-dashboard on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    run_server(storage, host=host, port=port)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ressearch")


if __name__ == "__main__":
    main()
