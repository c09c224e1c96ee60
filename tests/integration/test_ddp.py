"""The DDP rendezvous on a real local Ray Train job, run by the stages' trainer: the group forms, rank
0's store listens on the node IP only, never on the wildcard address (PyTorch's default), and the
trainer leaves the caller's SIGINT handler as it found it."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
import ray.cloudpickle
import ray.train
import torch
import torch.distributed as dist

from orchestrator.runtime.ddp import NodeBoundTorchConfig
from orchestrator.pipeline.stages.worker import StageTrainer

pytestmark = pytest.mark.slow

WILDCARD = ("0.0.0.0", "::")


def rendezvous_loop(config: dict) -> None:
    """Rank 0 reports what it listens on once the group has summed one tensor."""
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    port = int(os.environ["MASTER_PORT"])
    listening = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    found = {"sum": total.item(), "rank": dist.get_rank(), "world": dist.get_world_size(),
                      "master_addr": os.environ["MASTER_ADDR"], "port": port,
                      "store_listeners": [ip for ip, p in listening if p == port],
                      "wildcard_listeners": [f"{ip}:{p}" for ip, p in listening if ip in WILDCARD]}
    if dist.get_rank() == 0:  # Train V2 keeps reported metrics only beside checkpoints: use a file
        Path(config["out"]).write_text(json.dumps(found))


def test_two_workers_rendezvous_on_the_node_ip_only(local_ray, tmp_path):
    # by value: Ray workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sigint = signal.getsignal(signal.SIGINT)
    StageTrainer(
        rendezvous_loop, train_loop_config={"out": str(tmp_path / "rank0.json")}, torch_config=NodeBoundTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(name="ddp-rendezvous", storage_path=str(tmp_path)),
        local_ray=True,
    ).fit()
    # Ray Train's own handler would hold the job's controller alive after the job
    assert signal.getsignal(signal.SIGINT) is sigint
    # nor does the job leave Ray Data's autoscaling coordinator behind (a detached actor, one more process)
    assert "AutoscalingCoordinator" not in {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    m = json.loads((tmp_path / "rank0.json").read_text())
    assert (m["rank"], m["world"], m["sum"]) == (0, 2, 3.0)  # 1 + 2: both ranks took part
    node_ip = ray.util.get_node_ip_address()
    assert m["master_addr"] == node_ip
    assert m["store_listeners"] == [node_ip]
    assert m["wildcard_listeners"] == []
