"""The engine options shared by `ingest` and every `enrich` job (`--engine`, `--workers`, ...)."""
from __future__ import annotations

import argparse

from etl.engine.base import ENGINES, EngineSpec

DEFAULT_WORKERS_HELP = "workers (default: 1 locally, as many as fit on a Ray cluster)"


def add_engine_arguments(p: argparse.ArgumentParser, workers_help: str = DEFAULT_WORKERS_HELP,
                         workers_type=int, workers_default: int | str = 0) -> None:
    g = p.add_argument_group("engine (who runs the workers; this process always commits)")
    g.add_argument("--workers", type=workers_type, default=workers_default, metavar="N", help=workers_help)
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: processes on this machine (default); ray: actors on a Ray cluster "
                        "(pip install 'mmlake[ray]')")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="the Ray cluster to join (default: $RAY_ADDRESS, else a new one on this machine)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="CPUs reserved per Ray worker (default: 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="N",
                   help="GPUs per Ray worker, e.g. 1 for the loss or tags model (default: 0)")


def engine_spec(args: argparse.Namespace) -> EngineSpec:
    """The EngineSpec the arguments describe; Ray-only options without `--engine ray` are an error,
    so is `--engine ray` without Ray installed."""
    if args.engine != "ray" and (args.ray_address or args.gpus_per_worker or args.cpus_per_worker != 1.0):
        raise ValueError("--ray-address, --cpus-per-worker and --gpus-per-worker need --engine ray")
    if (isinstance(args.workers, int) and args.workers < 0) or args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise ValueError("--workers, --cpus-per-worker and --gpus-per-worker cannot be negative")
    if args.engine == "ray":
        from etl.engine.ray_engine import require_ray

        require_ray()  # a missing extra stops the command before it touches the lake
    return EngineSpec(args.engine, args.ray_address, args.cpus_per_worker, args.gpus_per_worker)
