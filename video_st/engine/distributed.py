"""One launcher story: torchrun, the ``deepspeed`` launcher, ``srun``, or nothing (world size 1).

torchrun and the deepspeed launcher export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT. Under
``srun`` each task has SLURM_PROCID / SLURM_LOCALID / SLURM_STEP_NUM_TASKS; the rendezvous host is the first
node of the step's node list and the port is derived from the job id, so every task computes the same address
without talking to the others. A plain ``python tools/train_net.py`` is a world of one with an in-process store.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" (or deepspeed) | "srun" | "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list -> host names: ``gpu[01-03,07],cpu1`` -> gpu01 gpu02 gpu03 gpu07 cpu1."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?(?:,|$)", nodelist):
        prefix, ranges = match.group(1), match.group(2)
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not high:
                hosts.append(prefix + low)
                continue
            width = len(low)  # zero padding is kept: node[08-10] -> node08 node09 node10
            hosts += [f"{prefix}{n:0{width}d}" for n in range(int(low), int(high) + 1)]
    return hosts


def slurm_port(job_id: str, restart: int = 0) -> int:
    """A port every task of a job agrees on, spread over 20000-39999 so jobs sharing a node rarely collide, and
    new after each requeue (the previous run's socket may linger)."""
    return 20000 + (int(re.sub(r"\D", "", job_id) or 0) * 10 + restart) % 20000


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", 0)),
                       world_size=int(env["WORLD_SIZE"]), master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=int(env.get("MASTER_PORT", 29500)), launcher="torchrun")
    # SLURM_STEP_NUM_TASKS exists only inside an srun step; a batch script that runs python directly (one
    # process) must not wait for SLURM_NTASKS peers that will never come.
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return DistEnv(rank=int(env["SLURM_PROCID"]), local_rank=int(env.get("SLURM_LOCALID", 0)),
                       world_size=int(env["SLURM_STEP_NUM_TASKS"]),
                       master_addr=env.get("MASTER_ADDR") or expand_nodelist(nodes)[0],
                       master_port=int(env.get("MASTER_PORT") or slurm_port(env.get("SLURM_JOB_ID", "0"),
                                                                            int(env.get("SLURM_RESTART_COUNT", 0)))),
                       launcher="srun")
    return DistEnv(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=0, launcher="none")


def select_device(env: DistEnv, preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device=cuda but no CUDA device is visible")
    if preference != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_RANK_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_ADDED: list[str] = []  # the rank variables init() set that the launcher had not


def init(env: DistEnv, device: torch.device, timeout_s: int = 1800) -> None:
    """Initialise the default process group (also for a world of one: DeepSpeed needs one). gloo on CPU, which
    also keeps DeepSpeed from compiling its shared-memory all-reduce op; NCCL on GPUs."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # DeepSpeed reads these whatever launched us. Those we add are removed again by shutdown(): left behind, a
    # second run in the same process (a tool called twice, tools/gpu_check.py) would take itself for a torchrun
    # launch and rendezvous over TCP instead of the in-process store.
    _ADDED.clear()
    _ADDED.extend(k for k in _RANK_KEYS if k not in os.environ)
    os.environ.update(RANK=str(env.rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.world_size))
    if env.launcher == "none" and env.world_size == 1:
        # A world of one rendezvouses with itself: an in-process store, no port to race other runs for.
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=timeout_s))
        return
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
                            timeout=datetime.timedelta(seconds=timeout_s))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    for key in _ADDED:
        os.environ.pop(key, None)
    _ADDED.clear()


def collective_device() -> torch.device:
    """Where tensors for the default group's collectives must live: the current GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a small tensor (on the collective's device) and return it on the caller's device."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    work = values.to(collective_device()).clone()
    dist.all_reduce(work, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return work.to(values.device)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
