"""Network forward time of each app model on each engine (what `auto` is based on).

    .venv/bin/python bench/engines.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from aiaa_core.engines import EngineSettings, build_engine, resolve_engine  # noqa: E402
from aiaa_core.vocabularies import ENGINES  # noqa: E402
from server.registry import load_app_models  # noqa: E402


def measure_engines(repeats: int = 5) -> list[dict]:
    """One row per model: its input shape and the median forward seconds on every engine."""
    rows = []
    for model in load_app_models(REPO / "apps" / "spleen"):
        task = model.task
        network = copy.deepcopy(task.network)
        network.load_state_dict(torch.load(task.get_path(), map_location="cpu", weights_only=True))
        example = torch.rand(1, *task.example_shape)
        row = {"model": model.name, "input": "×".join(str(s) for s in task.example_shape), "auto": task.engine}
        for name in ENGINES:
            engine = build_engine(network, name, task.example_shape, model=model.name)
            engine(example)  # first run: allocations, graph optimisation
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                engine(example)
                times.append(time.perf_counter() - started)
            row[name] = statistics.median(times)
        rows.append(row)
    return rows


def engines_table(rows: list[dict]) -> str:
    lines = [
        f"Median forward seconds of one network input, {EngineSettings().inference_threads()} threads "
        f"(`auto` here resolves to {resolve_engine('auto')}).",
        "",
        "| model | input (C×X×Y×Z) | " + " | ".join(ENGINES) + " | fastest | auto |",
        "|---|---|" + "---|" * len(ENGINES) + "---|---|",
    ]
    for row in rows:
        fastest = min(ENGINES, key=lambda name: row[name])
        times = " | ".join(f"{row[name]:.3f}" for name in ENGINES)
        lines.append(f"| {row['model']} | {row['input']} | {times} | {fastest} | {row['auto']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    print(engines_table(measure_engines(parser.parse_args().repeats)))


if __name__ == "__main__":
    main()
