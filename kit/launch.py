"""One process per GPU: build and run the torchrun command that trains a shard under DDP.

    torchrun --standalone --nproc_per_node 2 -m kit train --preset kaggle-t4x2 --data D --shard 0 --output O
    metrics = launch_shard(2, "kaggle-t4x2", ["train.max_steps=500"], "shards", 0, "runs/x")   # the same, from Python

The notebook uses `launch_shard` when more than one GPU is visible (Kaggle T4 x2);
every rank runs the same `kit train`, the Trainer wraps the model in DDP and
splits each global batch across the ranks. Only rank 0 saves, pushes, writes
status/metrics and prints (kit/distributed.py); the Trainer itself
writes one `rng_state_R.pth` per rank into each checkpoint so a resume restores
every rank's dropout stream. One machine only (`--standalone`).

Tested on CPU as 2 gloo processes by tests/test_ddp.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kit.errors import LaunchError
from kit.files import read_json
from kit.layout import ShardPaths
from kit.remote import default_work_dir, is_hub, open_remote


def torchrun_command(
    nproc: int,
    preset: str,
    data: str,
    shard: int,
    output: str,
    overrides=(),
    time_limit_s: float | None = None,
    work_dir: str | None = None,
    take_over: bool = False,
) -> list[str]:
    """The argv that trains one shard on `nproc` processes of this machine."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "kit",
        "train",
        "--preset",
        preset,
        "--data",
        str(data),
        "--shard",
        str(shard),
        "--output",
        str(output),
    ]
    for item in overrides:
        cmd += ["--set", item]
    if time_limit_s:
        cmd += ["--time-limit", f"{time_limit_s:g}"]
    if work_dir:
        cmd += ["--work-dir", str(work_dir)]
    if take_over:
        cmd.append("--take-over")
    return cmd


def launch_shard(
    nproc: int,
    preset: str,
    overrides,
    data: str,
    shard: int,
    output: str,
    time_limit_s: float | None = None,
    work_dir: str | None = None,
    env: dict | None = None,
    take_over: bool = False,
) -> dict:
    """Run the torchrun command, echoing its output line by line (a notebook shows a child's output only
    if it is read and printed); return the shard's metrics (partial ones if it stopped for time)."""
    cmd = torchrun_command(nproc, preset, data, shard, output, overrides, time_limit_s, work_dir, take_over)
    print("launching:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    for line in proc.stdout:
        print(line, end="", flush=True)
    if proc.wait() != 0:
        raise LaunchError(f"torchrun exited with {proc.returncode}; its output is above")
    local = Path(work_dir) if work_dir else (default_work_dir(str(output)) if is_hub(str(output)) else Path(output))
    paths = ShardPaths(local, shard)
    metrics = read_json(paths.metrics) or read_json(paths.partial_metrics)
    if metrics is None and is_hub(str(output)):
        # Done on the Hub before this machine started: rank 0 returned the remote metrics and wrote nothing here.
        metrics = open_remote(str(output)).read_json(str(ShardPaths.in_repo(shard).metrics))
    return metrics or {}
