"""Plotly figures of a study, one self-contained HTML report, and figures for optuna-dashboard.

The HTML page inlines plotly.js once, so it opens in a browser without a network connection.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from ressearch.results import baseline_trial, is_feasible, objective_name, pareto_front

#: Hypervolume reference point: (accuracy, trainable parameters). A trial counts only if it is
#: more accurate and smaller than this.
HV_REFERENCE = (0.95, 40_000)


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float] = HV_REFERENCE,
                log_params: bool = False) -> float:
    """Area dominated by ``(accuracy, params)`` points and bounded by ``reference``.

    Two objectives need no library: sort by parameters and add up the rectangles. With
    ``log_params`` the parameter axis is log10 (sizes span orders of magnitude).
    """
    acc_ref, par_ref = reference
    tr = np.log10 if log_params else (lambda v: v)
    pts = sorted((p, a) for a, p in points if a > acc_ref and p < par_ref)
    area, best = 0.0, acc_ref
    for i, (p, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else par_ref
        area += (tr(nxt) - tr(p)) * (best - acc_ref)
    return float(area)


def hypervolume_history(study: optuna.Study) -> tuple[list[int], list[float]]:
    """Hypervolume of the feasible completed trials after each trial number."""
    points, xs, ys = [], [], []
    for t in study.get_trials(deepcopy=False):
        if is_feasible(t):
            points.append((t.values[0], t.values[1]))
        xs.append(t.number)
        ys.append(hypervolume(points))
    return xs, ys


def _hover(t: FrozenTrial) -> str:
    a = t.user_attrs
    test = a.get("test_accuracy")
    return (f"trial {t.number}: {a.get('short', '')}<br>{a.get('params', 0):,} params, "
            f"{a.get('macs', 0):,} MACs" + (f"<br>test {100 * test:.2f}%" if test else ""))


def front_figure(study: optuna.Study) -> go.Figure:
    """Accuracy against parameters (log axis): front, dominated, pruned, infeasible, baseline."""
    name = objective_name(study)
    front_ids = {t.number for t in pareto_front(study)}
    groups: dict[str, list[FrozenTrial]] = {"front": [], "dominated": [], "pruned": [],
                                            "infeasible": []}
    for t in study.get_trials(deepcopy=False):
        curve = t.user_attrs.get("val_curve") or []
        if t.user_attrs.get("infeasible"):
            groups["infeasible"].append(t)
        elif t.state == TrialState.PRUNED and curve:
            groups["pruned"].append(t)
        elif is_feasible(t):
            groups["front" if t.number in front_ids else "dominated"].append(t)
    style = {"front": dict(color="#1f77b4", size=10, symbol="circle"),
             "dominated": dict(color="rgba(31,119,180,0.3)", size=7, symbol="circle"),
             "pruned": dict(color="rgba(255,127,14,0.5)", size=7, symbol="x"),
             "infeasible": dict(color="rgba(150,150,150,0.6)", size=7, symbol="triangle-down")}
    fig = go.Figure()
    for label, trials in groups.items():
        if not trials:
            continue
        if label == "infeasible":
            ys = [0.0 for _ in trials]
        elif label == "pruned":
            ys = [t.user_attrs["val_curve"][-1] for t in trials]
        else:
            ys = [t.values[0] for t in trials]
        trials_sorted = sorted(zip(trials, ys, strict=True), key=lambda ty: ty[0].user_attrs["params"])
        fig.add_scatter(
            x=[t.user_attrs["params"] for t, _ in trials_sorted], y=[y for _, y in trials_sorted],
            mode="lines+markers" if label == "front" else "markers",
            line=dict(shape="hv") if label == "front" else None,
            name={"pruned": "pruned (accuracy when stopped)",
                  "infeasible": "over max_params (not trained)"}.get(label, label),
            marker=style[label], text=[_hover(t) for t, _ in trials_sorted], hoverinfo="text")
    base = baseline_trial(study)
    if base is not None and is_feasible(base):
        fig.add_scatter(x=[base.values[1]], y=[base.values[0]], mode="markers+text",
                        name="baseline (notebook 10x8)", text=["baseline"], textposition="top center",
                        marker=dict(color="#d62728", size=16, symbol="star"))
    fig.update_layout(title=f"Pareto front: {name} vs trainable parameters",
                      xaxis=dict(title="trainable parameters (log)", type="log"),
                      yaxis=dict(title=name, tickformat=".2%"),
                      # Under the x-axis title (plotly's default place for it is over the title).
                      legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0))
    return fig


def hypervolume_figure(study: optuna.Study) -> go.Figure:
    """Hypervolume of the front after each trial."""
    xs, ys = hypervolume_history(study)
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line=dict(shape="hv")))
    fig.update_layout(title=f"Hypervolume over trials (reference: {objective_name(study)} "
                            f"{HV_REFERENCE[0]:.2f}, {HV_REFERENCE[1]:,} params)",
                      xaxis_title="trial", yaxis_title="hypervolume (accuracy x params)")
    return fig


def curves_figure(study: optuna.Study) -> go.Figure:
    """Validation accuracy per epoch of every trial; pruned ones end in an x."""
    fig = go.Figure()
    for t in study.get_trials(deepcopy=False):
        curve = t.user_attrs.get("val_curve") or []
        if not curve or "duplicate_of" in t.user_attrs:
            continue
        pruned = t.state == TrialState.PRUNED
        fig.add_scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers",
                        name=f"#{t.number}", opacity=0.5 if pruned else 0.9,
                        marker=dict(symbol=["circle"] * (len(curve) - 1) + ["x" if pruned else "circle"],
                                    size=[4] * (len(curve) - 1) + [10 if pruned else 4]),
                        line=dict(dash="dot" if pruned else "solid"), text=_hover(t),
                        hoverinfo="text+y")
    fig.update_layout(title="Validation accuracy per epoch (dotted, ending in x: pruned)",
                      xaxis_title="epoch", yaxis=dict(title="validation accuracy", tickformat=".1%"),
                      showlegend=False)
    return fig


def by_field_figure(study: optuna.Study, field: str) -> go.Figure:
    """Accuracy of completed trials grouped by one spec field (order, blocks, width, ...)."""
    xs, ys, text = [], [], []
    for t in study.get_trials(deepcopy=False):
        if is_feasible(t) and "spec" in t.user_attrs:
            xs.append(str(t.user_attrs["spec"][field]))
            ys.append(t.values[0])
            text.append(_hover(t))
    def numeric_first(v: str) -> tuple[bool, float, str]:
        return (not v.isdigit(), int(v) if v.isdigit() else 0, v)

    order = sorted(set(xs), key=numeric_first)
    fig = go.Figure(go.Box(x=xs, y=ys, boxpoints="all", jitter=0.4, pointpos=0, text=text,
                           hoverinfo="text+y"))
    fig.update_layout(title=f"{objective_name(study)} by {field}", xaxis=dict(
        title=field, type="category", categoryorder="array", categoryarray=order),
        yaxis=dict(title=objective_name(study), tickformat=".2%"))
    return fig


def confusion_figure(matrix: np.ndarray, title: str) -> go.Figure:
    """The notebook's confusion matrix: colours normalised per true class, counts annotated."""
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    labels = [str(i) for i in range(matrix.shape[0])]
    fig = go.Figure(go.Heatmap(z=rows, x=labels, y=labels, text=matrix, texttemplate="%{text}",
                               colorscale="Blues", zmin=0, zmax=1,
                               hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted label",
                      yaxis=dict(title="true label", autorange="reversed"), width=600, height=560)
    return fig


def write_html(figures: list[go.Figure], path: Path, title: str, intro: str = "") -> Path:
    """One page holding every figure; plotly.js is inlined once, so no network is needed."""
    parts = []
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}"))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
            ".fig{margin-bottom:2em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{intro}"
            + "".join(f"<div class='fig'>{p}</div>" for p in parts) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def confusion_matrix(model_dir: str | Path, images: np.ndarray | object, labels: object) -> np.ndarray:
    """Counts of (true, predicted) labels of a checkpoint on a labelled split."""
    import torch

    from ressearch.checkpoint import load_checkpoint

    model = load_checkpoint(model_dir)
    preds = []
    with torch.no_grad():
        for start in range(0, len(labels), 1000):
            x = images[start:start + 1000].unsqueeze(1).float().div(255.0)
            preds.append(model(x).argmax(1))
    pred = torch.cat(preds).numpy()
    true = np.asarray(labels)
    n = int(max(true.max(), pred.max())) + 1
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def dashboard_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """The figures attached to the study for optuna-dashboard, by graph-object id."""
    return {"pareto-front": front_figure(study), "hypervolume": hypervolume_figure(study)}


def attach_to_dashboard(study: optuna.Study) -> list[str]:
    """Store the front and hypervolume figures with the study (optuna-dashboard shows them)."""
    from optuna_dashboard import save_plotly_graph_object

    figures = dashboard_figures(study)
    for graph_id, fig in figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=graph_id)
    return list(figures)


def build_report(study: optuna.Study, out: str | Path, *, data_dir: str | None = None,
                 trial: int | None = None) -> Path:
    """Write ``OUT/report.html``: front, hypervolume, curves, per-field accuracy, confusion matrix.

    Args:
        study: The study.
        out: Directory for ``report.html``.
        data_dir: MNIST, for the chosen model's confusion matrix.
        trial: The chosen model (default: the most accurate model of the front).
    """
    from ressearch.checkpoint import load_metrics
    from ressearch.data import load_mnist
    from ressearch.results import select_trial

    figures = [front_figure(study), hypervolume_figure(study), curves_figure(study)]
    figures += [by_field_figure(study, f) for f in ("order", "blocks", "width")]
    front = [t for t in pareto_front(study) if t.user_attrs.get("checkpoint")]
    chosen = (select_trial(study, trial=trial) if trial is not None
              else max(front, key=lambda t: t.values[0]) if front else None)

    if chosen is not None:
        ckpt = chosen.user_attrs["checkpoint"]
        test = load_mnist(data_dir).test
        limit = load_metrics(ckpt).get("test_images") or len(test)
        matrix = confusion_matrix(ckpt, test.images[:limit], test.labels[:limit])
        figures.append(confusion_figure(
            matrix, f"Confusion matrix of trial {chosen.number} ({chosen.user_attrs.get('short')}), "
                    f"{limit:,} test images"))
    _, hv = hypervolume_history(study)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    intro = (f"<p>Study <b>{html.escape(study.study_name)}</b>: {len(states)} trials "
             f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
             f"{states.count('FAIL')} failed); {len(pareto_front(study))} on the front; "
             f"hypervolume {hv[-1] if hv else 0:.1f}.</p>")
    return write_html(figures, Path(out) / "report.html", f"ressearch report: {study.study_name}",
                      intro)
