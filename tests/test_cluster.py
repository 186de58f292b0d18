"""Trials spread over both nodes of a two-node Ray cluster."""

from __future__ import annotations

import pytest
import yaml

from ressearch.live import LiveView
from ressearch.space import load_space
from ressearch.study import run_study

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


def test_trials_run_on_both_nodes(tmp_path, data_dir):
    ray.shutdown()
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump({
            "study": {"name": "cluster", "trials": 4, "sampler": "random"},
            "data": {"train_limit": 600, "val_limit": 300, "test_limit": 300},
            "train": {"epochs": 2, "batch_size": 64, "precise_bn": 4},
            "model": {"blocks": {"low": 1, "high": 4}, "width": {"choices": [4, 6]}},
            "resources": {"cpus_per_trial": 1},
            "early_stopping": {"enabled": False},
        }))
        study = run_study(load_space(space), data_dir=str(data_dir), out=tmp_path,
                          view=LiveView(interactive=False)).study
        used = {t.user_attrs.get("node") for t in study.trials if "checkpoint" in t.user_attrs}
        assert used == nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
