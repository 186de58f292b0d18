"""The results commands (front, export, predict, report, dashboard) run for real on a real study.

One module-scoped study is made by ``ressearch run --space search_spaces/tiny.yaml --trials 6``
(real MNIST slices, Ray, successive halving); every command then runs as a subprocess on it. The
checks recompute what they can without ressearch: the Pareto front from the Optuna study, test
accuracy with ONNX Runtime alone on the IDX files read here, the folded graph from the ONNX files.
The report and the dashboard are rendered by headless Chromium, which must be installed.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pandas as pd
import pytest
import torch
from cli_helpers import assert_user_error, run_cli
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

import ressearch
from ressearch.checkpoint import save_checkpoint
from ressearch.data import DATA_DIR_ENV, write_idx
from ressearch.export import export_model

REPO = Path(__file__).resolve().parents[1]
TINY_SPACE = REPO / "search_spaces" / "tiny.yaml"
TRIALS = 6
EXPORT_FILES = ("model.onnx", "model.safetensors", "spec.json", "metrics.json", "README.md")
REPORT_FIGURES = 7  # front, hypervolume, curves, order, blocks, width, confusion matrix
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


# -- helpers -----------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes, read without ressearch."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    assert raw[:3] == b"\x00\x00\x08", path
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def ort_logits(onnx_file: Path, images: np.ndarray) -> np.ndarray:
    """Logits of uint8 images [N, 28, 28] from ONNX Runtime alone (MNIST scaling: x / 255)."""
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = (images.astype(np.float32) / np.float32(255.0))[:, None]
    return np.concatenate([session.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def independent_front(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated trained, feasible trials (a repeat of a network counts once), smallest first."""
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE
            and not t.user_attrs.get("infeasible")]

    def dominates(u: FrozenTrial, t: FrozenTrial) -> bool:
        (ua, up), (ta, tp) = u.values, t.values
        return ua >= ta and up <= tp and (ua > ta or up < tp)

    front = [t for t in done if not any(dominates(u, t) for u in done)]
    first: dict[Any, FrozenTrial] = {}
    for t in sorted(front, key=lambda t: t.number):
        first.setdefault(t.user_attrs.get("run_key", t.number), t)
    return sorted(first.values(), key=lambda t: (t.values[1], -t.values[0]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) with a socket LISTENing on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("these tests render pages with headless Chromium: install it (apt-get install chromium)")


def headless(url: str, profile: Path, *options: str, budget_ms: int = 10000,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no network of its own, run until ``budget_ms`` of virtual time."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         *options, url], capture_output=True, text=True, timeout=timeout, check=False)


def assert_screenshot(path: Path, size: tuple[int, int]) -> None:
    """A PNG of ``size`` that is not a blank page."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size == size
        pixels = np.asarray(img.convert("L"))
    assert (pixels < 128).mean() > 0.002, "the screenshot is (almost) blank"
    assert len(np.unique(pixels)) > 20


# -- the study ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tiny:
    root: Path
    db: Path
    data_dir: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Tiny:
    """``ressearch run --space search_spaces/tiny.yaml --trials 6``, once (about a minute or two)."""
    root = tmp_path_factory.mktemp("tiny-study")
    proc = run_cli("run", "--space", str(TINY_SPACE), "--data-dir", str(data_dir),
                   "--out", str(root / "results"), "--trials", str(TRIALS), cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = root / "results" / "tiny.db"
    assert db.is_file(), proc.stderr[-3000:]
    return Tiny(root=root, db=db, data_dir=data_dir)


@pytest.fixture(scope="module")
def study(tiny: Tiny) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny.db}")


@pytest.fixture(scope="module")
def mnist_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test images and labels, read here from the IDX files."""
    def find(stem: str) -> Path:
        found = sorted(data_dir.rglob(f"{stem}*"))
        assert found, f"no {stem} under {data_dir}"
        return found[0]

    images, labels = read_idx(find("t10k-images-idx3-ubyte")), read_idx(find("t10k-labels-idx1-ubyte"))
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    return images, labels.astype(np.int64)


def test_run_made_the_study(study: optuna.Study, tiny: Tiny) -> None:
    trials = study.get_trials()
    assert len(trials) == TRIALS
    assert trials[0].user_attrs.get("baseline") is True
    assert trials[0].user_attrs["params"] == 17462  # the notebook's network
    assert study.metric_names == ["val_accuracy", "params"]
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states, states
    for t in trials:
        if t.state == TrialState.COMPLETE:
            checkpoint = Path(t.user_attrs["checkpoint"])
            trained_by = t.user_attrs.get("duplicate_of", t.number)  # a repeat reuses the result
            assert checkpoint == tiny.root / "results" / "tiny" / "trials" / str(trained_by)
            assert (checkpoint / "model.safetensors").is_file()
            assert t.values[1] == t.user_attrs["params"]
            assert t.values[0] == t.user_attrs["val_accuracy"]
        elif t.state == TrialState.PRUNED:
            assert "checkpoint" not in t.user_attrs and t.user_attrs["val_curve"]


# -- front -------------------------------------------------------------------------------------
def test_front_json_matches_the_study(study: optuna.Study, tiny: Tiny) -> None:
    proc = run_cli("front", str(tiny.db), "--json", cwd=tiny.root)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    front = independent_front(study)
    base = study.get_trials()[0]
    on_front = base.number in {t.number for t in front}
    expected = [*front] if on_front else [*front, base]
    assert sorted(r["trial"] for r in records) == sorted(t.number for t in expected)
    assert [r["params"] for r in records] == sorted(r["params"] for r in records)
    by_number = {t.number: t for t in study.get_trials()}
    for r in records:
        assert {"params", "keras_params", "macs", "val_accuracy", "test_accuracy", "epochs",
                "architecture", "trial"} <= set(r)
        t = by_number[r["trial"]]
        a = t.user_attrs
        assert r["baseline"] == (t.number == base.number)
        assert (r["params"], r["keras_params"], r["macs"]) == (a["params"], a["keras_params"], a["macs"])
        assert r["architecture"] == a["short"] and r["epochs"] == a["epochs"]
        if t.state == TrialState.COMPLETE:
            assert r["val_accuracy"] == pytest.approx(t.values[0], abs=1e-12)
            assert r["params"] == t.values[1]
            assert r["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-12)
        else:  # the baseline off the front, pruned: its accuracy when stopped, no test accuracy
            assert t.state == TrialState.PRUNED
            assert r["val_accuracy"] == pytest.approx(a["val_curve"][-1], abs=1e-12)
            assert r["test_accuracy"] is None


def test_front_table_marks_the_baseline(study: optuna.Study, tiny: Tiny) -> None:
    proc = run_cli("front", str(tiny.db), cwd=tiny.root)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["trial", "params", "keras"]
    front = independent_front(study)
    base = study.get_trials()[0]
    extra = 0 if base.number in {t.number for t in front} else 1
    assert len(rows) == len(front) + extra
    marked = [row for row in rows if row.startswith("*")]
    assert len(marked) == 1 and all(row.startswith(" ") for row in rows if row not in marked)
    fields = marked[0][1:].split()
    assert int(fields[0]) == base.number and fields[1] == f"{base.user_attrs['params']:,}"
    others = [t for t in front if t.number != base.number]
    for row, t in zip([r for r in rows if r not in marked], others, strict=True):
        fields = row.split()
        assert int(fields[0]) == t.number
        assert fields[4] == f"{100 * t.values[0]:.2f}"
        assert fields[5] == f"{100 * t.user_attrs['test_accuracy']:.2f}"
        assert fields[6] == str(t.user_attrs["epochs"])
        assert row.endswith(t.user_attrs["short"])
    if base.state != TrialState.COMPLETE:
        assert marked[0][1:].split()[5] == "-"  # no test accuracy for a pruned baseline


def test_front_table_with_an_untrained_baseline(study: optuna.Study, tiny: Tiny, tmp_path: Path) -> None:
    """A baseline without epochs (failed, or over max_params) shows '-', the others stay integers."""
    db = tmp_path / "tiny.db"
    shutil.copy(tiny.db, db)
    with sqlite3.connect(db) as con:  # Optuna refuses to change a finished trial
        changed = con.execute("UPDATE trial_user_attributes SET value_json = 'null' WHERE key = 'epochs' "
                              "AND trial_id = (SELECT trial_id FROM trials WHERE number = 0)").rowcount
    assert changed == 1
    proc = run_cli("front", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()[1:]
    epochs = {row[1:].split()[0]: row[1:].split()[6] for row in rows}
    assert epochs.pop("0") == "-"
    assert epochs and all(e == str(study.get_trials()[int(n)].user_attrs["epochs"])
                          for n, e in epochs.items())


def test_front_csv_has_every_trial(study: optuna.Study, tiny: Tiny, tmp_path: Path) -> None:
    csv = tmp_path / "trials.csv"
    proc = run_cli("front", str(tiny.db), "--csv", str(csv), "--json", cwd=tiny.root)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(csv)
    assert len(table) == len(study.get_trials()) == TRIALS
    assert list(table["trial"]) == list(range(TRIALS))
    assert list(table["state"]) == [t.state.name for t in study.get_trials()]
    assert {"param_blocks", "param_width", "param_order", "param_lr"} <= set(table.columns)
    json.loads(proc.stdout)  # --json still prints the front


# -- export ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Export:
    mode: str
    args: tuple[str, ...]
    trial: int  # the trial the selection must pick (worked out here from the study)
    fold_bn: bool
    out: Path
    report: dict[str, Any]
    stderr: str


def _selections(study: optuna.Study) -> list[tuple[str, tuple[str, ...], int, bool]]:
    """(mode, options, expected trial, fold) for each selection mode, chosen to discriminate."""
    front = independent_front(study)
    assert front, "the tiny study has no completed trial"
    ids = {t.number for t in front}
    dominated = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and t.number not in ids]
    any_trial = (dominated or front)[0].number  # --trial takes any completed trial, front or not
    if len(front) >= 2:  # just below the most accurate: the next most accurate is the best fit
        budget = int(front[-1].values[1]) - 1
        target = front[1].values[0]  # front[0] is smaller but below it; front[1] is the pick
    else:
        budget, target = int(front[0].values[1]), front[0].values[0]
    fits = [t for t in front if t.values[1] <= budget]
    by_budget = max(fits, key=lambda t: (t.values[0], -t.values[1])).number
    by_target = min((t for t in front if t.values[0] >= target), key=lambda t: t.values[1]).number
    return [("trial", ("--trial", str(any_trial)), any_trial, False),
            ("trial-fold", ("--trial", str(any_trial), "--fold-bn"), any_trial, True),
            ("max-params", ("--max-params", str(budget), "--fold-bn"), by_budget, True),
            ("min-accuracy", ("--min-accuracy", repr(target)), by_target, False)]


@pytest.fixture(scope="module")
def exports(study: optuna.Study, tiny: Tiny) -> dict[str, Export]:
    """One export per selection mode, with and without --fold-bn."""
    done = {}
    for mode, args, trial, fold in _selections(study):
        out = tiny.root / "exports" / mode
        proc = run_cli("export", str(tiny.db), *args, "--out", str(out), "--data-dir",
                       str(tiny.data_dir), "--json", cwd=tiny.root)
        assert proc.returncode == 0, (mode, proc.stderr[-3000:])
        done[mode] = Export(mode, args, trial, fold, out, json.loads(proc.stdout), proc.stderr)
    return done


MODES = ["trial", "trial-fold", "max-params", "min-accuracy"]


@pytest.mark.parametrize("mode", MODES)
def test_export_picks_the_expected_trial(exports: dict[str, Export], study: optuna.Study,
                                         mode: str) -> None:
    e = exports[mode]
    t = study.get_trials()[e.trial]
    assert e.report["trial"] == e.trial, (e.args, e.report)
    metrics = json.loads((e.out / "metrics.json").read_text())
    assert metrics["trial"] == e.trial
    assert metrics["export"]["fold_bn"] is e.fold_bn
    assert (metrics["export"]["folded_norms"] > 0) is e.fold_bn
    assert metrics["test_accuracy"] == t.user_attrs["test_accuracy"]
    assert metrics["val_accuracy"] == t.user_attrs["val_accuracy"]
    assert e.report["params"] == t.user_attrs["params"]
    assert e.report["keras_params"] == t.user_attrs["keras_params"]
    assert f"trial {e.trial} ({t.user_attrs['short']})" in e.stderr


@pytest.mark.parametrize("mode", MODES)
def test_export_onnx_alone_reproduces_the_test_accuracy(exports: dict[str, Export], mode: str,
                                                        mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    e = exports[mode]
    for name in EXPORT_FILES:
        assert (e.out / name).is_file(), name
    metrics = json.loads((e.out / "metrics.json").read_text())
    n = metrics["test_images"]
    assert n == e.report["test_images"] == 2000  # tiny.yaml's test_limit
    images, labels = mnist_test
    correct = int((ort_logits(e.out / "model.onnx", images[:n]).argmax(1) == labels[:n]).sum())
    assert abs(correct - round(metrics["test_accuracy"] * n)) <= 1, (correct, metrics["test_accuracy"])
    assert e.report["onnx_test_accuracy"] == pytest.approx(correct / n, abs=1.5 / n)
    card = (e.out / "README.md").read_text()
    assert f"{100 * metrics['test_accuracy']:.2f}%" in card and "model.onnx" in card


def _initializers(path: Path) -> tuple[dict[str, tuple[int, ...]], onnx.GraphProto]:
    graph = onnx.load(str(path)).graph
    return {t.name: tuple(t.dims) for t in graph.initializer}, graph


def test_fold_bn_drops_exactly_the_folded_norms(exports: dict[str, Export], study: optuna.Study) -> None:
    plain, folded = exports["trial"], exports["trial-fold"]
    assert plain.trial == folded.trial
    before, graph = _initializers(plain.out / "model.onnx")
    after, folded_graph = _initializers(folded.out / "model.onnx")
    size = {name: int(np.prod(dims)) for name, dims in {**before, **after}.items()}
    # Unfolded, the graph stores exactly the Keras-style count: parameters and BN statistics.
    assert sum(size[n] for n in before) == study.get_trials()[plain.trial].user_attrs["keras_params"]
    removed, added = set(before) - set(after), set(after) - set(before)
    assert all(before[n] == after[n] for n in set(before) & set(after))
    # Removed: whole BatchNorms (all four tensors), each fed directly by a Conv in the plain graph.
    norms = {n.rsplit(".", 1)[0] for n in removed}
    assert removed == {f"{bn}.{t}" for bn in norms for t in BN_TENSORS}
    producer = {out: node for node in graph.node for out in node.output}
    bn_nodes = {node.input[1].rsplit(".", 1)[0]: node for node in graph.node
                if node.op_type == "BatchNormalization"}
    convs = {}
    for bn in norms:
        conv = producer[bn_nodes[bn].input[0]]
        assert conv.op_type == "Conv", bn
        convs[bn] = conv
    metrics = json.loads((folded.out / "metrics.json").read_text())
    assert len(norms) == metrics["export"]["folded_norms"] == folded.report["folded"] > 0
    remaining = sum(node.op_type == "BatchNormalization" for node in folded_graph.node)
    assert remaining == len(bn_nodes) - len(norms)
    # Added: a bias for each conv that had none (the exporter feeds bias-free convs a zero).
    biasless = {bn: conv for bn, conv in convs.items() if conv.input[2] not in before}
    assert added == {conv.input[1].rsplit(".", 1)[0] + ".bias" for conv in biasless.values()}
    channels = {bn: before[f"{bn}.weight"][0] for bn in norms}
    expected_drop = sum(4 * c for c in channels.values()) - sum(channels[bn] for bn in biasless)
    assert sum(size[n] for n in before) - sum(size[n] for n in after) == expected_drop
    assert plain.report["deployed_params"] - folded.report["deployed_params"] == expected_drop


@pytest.mark.parametrize("mode", ["trial", "max-params"])
def test_load_rebuilds_the_exported_network(exports: dict[str, Export], mode: str,
                                            mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    e = exports[mode]
    model = ressearch.load(e.out)
    assert not model.training
    assert model.spec.to_dict() == json.loads((e.out / "spec.json").read_text())
    images = mnist_test[0][:256]
    with torch.no_grad():
        logits = model(torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]).numpy()
    np.testing.assert_allclose(logits, ort_logits(e.out / "model.onnx", images), atol=1e-4, rtol=0)


def test_export_refusals(study: optuna.Study, tiny: Tiny, tmp_path: Path) -> None:
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    out = tmp_path / "never"
    data = ("--data-dir", str(tiny.data_dir), "--out", str(out))
    assert_user_error(run_cli("export", str(tiny.db), "--trial", str(pruned[0].number), *data,
                              cwd=tiny.root), f"trial {pruned[0].number} is pruned")
    smallest = independent_front(study)[0].values[1]
    assert_user_error(run_cli("export", str(tiny.db), "--max-params", "10", *data, cwd=tiny.root),
                      "at most 10 parameters", f"{int(smallest):,}")
    assert_user_error(run_cli("export", str(tiny.db), *data, cwd=tiny.root), "exactly one of")
    assert not out.exists()


def test_export_of_a_bias_free_network_counts_its_numbers(tmp_path: Path) -> None:
    """The exporter feeds a bias-free conv a scalar 0.0: a literal, not a stored number."""
    spec = ressearch.ResNetSpec(blocks=1, order="post", bias=False, stem_width=4, width=4, head_width=4)
    save_checkpoint(tmp_path / "ckpt", ressearch.build_model(spec))
    for fold in (False, True):
        report = export_model(tmp_path / "ckpt", tmp_path / f"out{fold}", fold_bn=fold, threads=1)
        stored = sum(int(np.prod(t.dims)) for t in onnx.load(str(report.out_dir / "model.onnx"))
                     .graph.initializer)
        assert report.deployed_params == stored
        if not fold:
            assert stored == ressearch.count(spec).keras_params


# -- predict -----------------------------------------------------------------------------------
def test_predict_pngs_of_real_digits(exports: dict[str, Export], tmp_path: Path,
                                     mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    model_dir = exports["trial"].out
    images, labels = mnist_test
    picks = [int(np.flatnonzero(labels[5000:] == d)[0]) + 5000 for d in range(10)]  # one per digit
    files = []
    for i in picks:
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images[i], mode="L").save(path)
        files.append(path)
    proc = run_cli("predict", str(model_dir), *map(str, files), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(files)
    probs = softmax(ort_logits(model_dir / "model.onnx", images[picks]))
    for line, path, p in zip(lines, files, probs, strict=True):
        shown, label, prob = line.split("\t")
        assert shown == str(path)
        assert int(label) == int(p.argmax())
        assert float(prob) == pytest.approx(p.max(), abs=6e-4)
    correct = sum(int(line.split("\t")[1]) == labels[i] for line, i in zip(lines, picks, strict=True))
    assert correct >= 5, lines  # the model is ~80% accurate: a sanity check of the image handling


def test_predict_idx_file(exports: dict[str, Export], tmp_path: Path,
                          mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    model_dir = exports["trial"].out
    images, labels = mnist_test[0][6000:6040], mnist_test[1][6000:6040]
    idx = tmp_path / "digits-idx3-ubyte.gz"
    write_idx(idx, images)  # gzipped: the name ends in .gz
    proc = run_cli("predict", str(model_dir), str(idx), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    probs = softmax(ort_logits(model_dir / "model.onnx", images))
    assert [r["index"] for r in rows] == list(range(len(images)))
    assert [r["label"] for r in rows] == probs.argmax(1).tolist()
    np.testing.assert_allclose([r["probability"] for r in rows], probs.max(1), atol=1e-5)
    assert np.mean(probs.argmax(1) == labels) > 0.5
    text = run_cli("predict", str(model_dir), str(idx), cwd=tmp_path)
    assert text.stdout.splitlines()[3].startswith(f"{idx}[3]\t{probs[3].argmax()}\t")


# -- report ------------------------------------------------------------------------------------
def test_report_renders_offline_in_chromium(study: optuna.Study, tiny: Tiny, tmp_path: Path,
                                            mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    out = tmp_path / "report"
    proc = run_cli("report", str(tiny.db), "--out", str(out), "--data-dir", str(tiny.data_dir),
                   cwd=tiny.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = out / "report.html"
    text = page.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", text), "the page loads a script"
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", text)
    assert text.count("Plotly.newPlot") == REPORT_FIGURES

    dom = headless(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="main-svg"') >= REPORT_FIGURES
    parts = html.split('id="fig')[1:]
    assert len(parts) == REPORT_FIGURES and all('class="main-svg"' in p for p in parts)
    # The confusion matrix's cells: the counts of the front's most accurate model, recomputed here.
    chosen = max(independent_front(study), key=lambda t: t.values[0])
    assert f"Confusion matrix of trial {chosen.number} (" in parts[-1]
    n = json.loads((Path(chosen.user_attrs["checkpoint"]) / "metrics.json").read_text())["test_images"]
    model = ressearch.load(chosen.user_attrs["checkpoint"])
    images, labels = mnist_test[0][:n], mnist_test[1][:n]
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(images[i:i + 1000].astype(np.float32) / 255.0)[:, None])
                          .argmax(1) for i in range(0, n, 1000)]).numpy()
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, pred), 1)
    cells = [int(v) for v in re.findall(r'<g class="heatmap-label"><text[^>]*>(\d+)</text>', parts[-1])]
    assert cells == matrix.ravel().tolist()
    assert abs(np.trace(matrix) - round(chosen.user_attrs["test_accuracy"] * n)) <= 1

    shot = tmp_path / "report.png"
    proc = headless(page.as_uri(), tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2400")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_screenshot(shot, (1200, 2400))


# -- dashboard ---------------------------------------------------------------------------------
def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_dashboard_serves_the_study_with_the_figures(study: optuna.Study, tiny: Tiny,
                                                     tmp_path: Path) -> None:
    db = tmp_path / "tiny.db"  # the dashboard stores its figures in the study: use a copy
    shutil.copy(tiny.db, db)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "ressearch.cli", "dashboard", str(db), "--port",
                             str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, summaries = time.monotonic() + 60, None
        while summaries is None:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
            try:
                summaries = _get_json(f"{base}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert [s["study_name"] for s in summaries] == ["tiny"]
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0
        study_id = summaries[0]["study_id"]
        detail = _get_json(f"{base}/api/studies/{study_id}")
        assert detail["objective_names"] == ["val_accuracy", "params"]
        assert detail["directions"] == ["maximize", "minimize"]
        assert len(detail["trials"]) == TRIALS
        graphs = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
        assert set(graphs) == {"pareto-front", "hypervolume"}
        front = independent_front(study)
        traces = {t.get("name"): t for t in graphs["pareto-front"]["data"]}
        assert traces["front"]["x"] == [t.user_attrs["params"] for t in front]
        assert len(graphs["hypervolume"]["data"][0]["x"]) == TRIALS
        # The single-page app renders both attached figures.
        dom = headless(f"{base}/dashboard/studies/{study_id}", tmp_path / "profile", "--dump-dom",
                       "--window-size=1200,2400", budget_ms=15000)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "Pareto front: val_accuracy vs trainable parameters" in dom.stdout
        assert "Hypervolume over trials" in dom.stdout
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
            pytest.fail("the dashboard did not exit on SIGTERM")
        log.close()
    assert proc.returncode is not None
    assert "http://127.0.0.1:" in (tmp_path / "dashboard.log").read_text()
