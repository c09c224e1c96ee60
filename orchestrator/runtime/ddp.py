"""torch.distributed for Ray Train workers, with the rendezvous store bound to the node's own address.

Ray's stock ``TorchConfig`` lets PyTorch open rank 0's ``TCPStore``, and PyTorch binds that listener
to the wildcard address whatever ``MASTER_ADDR`` says, so every interface of the node (a public one
included) accepts connections to it for the whole job. Here rank 0 binds the socket to the node IP
Ray knows it by and hands it to the store; everything else is Ray's backend unchanged.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

# Rank 0's server store, held between opening it and joining the group; the group then owns it.
_server_store: dist.TCPStore | None = None


def open_store(world_size: int, timeout_s: int) -> tuple[str, int]:
    """On rank 0: serve the rendezvous store on the node IP only; returns where the others connect."""
    global _server_store
    host = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    # detach: the store's server takes the descriptor over and closes it itself
    _server_store = dist.TCPStore(host, port, world_size, is_master=True, wait_for_workers=False,
                                  timeout=timedelta(seconds=timeout_s), master_listen_fd=sock.detach())
    return host, port


def join_group(backend: str, host: str, port: int, world_rank: int, world_size: int, timeout_s: int) -> None:
    global _server_store
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store, _server_store = _server_store, None
    else:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    # for libraries that read the rendezvous from the environment, as after Ray's own backend
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, str(port)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _NodeBoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        world_size = len(worker_group)
        host, port = worker_group.execute_single(0, open_store, world_size=world_size,
                                                 timeout_s=backend_config.timeout_s)
        if not isinstance(worker_group, V1WorkerGroup):  # Train V1 sets these at training start instead
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, join_group, backend=backend, host=host, port=port,
                                                   world_rank=rank, world_size=world_size,
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(world_size)])


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose rank-0 rendezvous store listens on the node IP, not on every interface."""

    @property
    def backend_cls(self):
        return _NodeBoundTorchBackend
