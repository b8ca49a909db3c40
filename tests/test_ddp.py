"""DDP on CPU: `torchrun --nproc_per_node 2 -m kit train` as 2 gloo processes.

    .venv/bin/python -m pytest -q tests/test_ddp.py    # ~30 s on 2 cores, no network

Two processes at micro-batch 2 train the same global batch as one process at
micro-batch 4 (the sampler's order is the same; each rank takes alternate
micro-batches and DDP averages the gradients), so the adapters agree up to
float summation order: measured max abs difference 5.1e-7 (largest weight
0.13); the test allows 1e-5. Dropout is off: each rank draws its own mask.

Only rank 0 may save, push, write status/metrics or print. A `sitecustomize`
on rank 1's path logs every file it opens for writing, renames or replaces
through Python (status.json, metrics, COMPLETE markers, the adapter's rename,
the uploader's staging): it must log none but its own probe. Writers in C++ or
Rust (torch.save, safetensors) are not seen by the hook; there the Trainer's
own gating holds, and rank 1's only such file is its RNG state.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from kit.launch import torchrun_command

ROOT = Path(__file__).resolve().parent.parent
# Padded: 2 ranks x 2 examples is then exactly 1 process x 4 (token-budget packs split otherwise).
TINY = [
    "train.max_steps=4",
    "train.save_steps=2",
    "lora.dropout=0",
    "eval.generate_samples=2",
    "eval.max_new_tokens=8",
    "data.padding_free=false",
]

AUDIT = """
import os, sys
if os.environ.get("RANK") == "1":
    log = open(os.environ["KIT_TEST_WRITES"], "a", buffering=1)
    watched = os.environ["KIT_TEST_WATCH"]
    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(watched):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                log.write(args[0] + "\\n")
        elif event in ("os.rename", "os.replace") and str(args[1]).startswith(watched):
            log.write(str(args[1]) + "\\n")
    sys.addaudithook(hook)
    open(watched + "-probe", "w").close()  # positive control: proves the hook sees a Python write
"""


def adapter(run):
    return load_file(str(run / "shard-00" / "adapter" / "adapter_model.safetensors"))


def test_two_cpu_processes_train_the_adapter_of_one_and_only_rank_0_writes(small_split, tmp_path):
    from kit.config import load_config
    from kit.train import train_shard

    single = tmp_path / "single"
    train_shard(load_config("cpu-tiny", [*TINY, "train.micro_batch_size=4"]), small_split, 0, single)

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT)
    ddp, writes = tmp_path / "ddp", tmp_path / "rank1-writes.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "KIT_TEST_WRITES": str(writes),
        "KIT_TEST_WATCH": str(ddp),
    }
    cmd = torchrun_command(2, "cpu-tiny", str(small_split), 0, str(ddp), [*TINY, "train.micro_batch_size=2"])
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd[:6], "--redirects", "3", "--log-dir", str(tmp_path / "logs"), *cmd[6:]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    a, b = adapter(ddp), adapter(single)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, f"DDP adapter differs from the single-process one by {diff:.2e}"
    assert max(v.abs().max().item() for v in a.values()) > 1e-3, "the adapter moved: the comparison can fail"

    shard = ddp / "shard-00"
    status = json.loads((shard / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 4
    assert sorted(p.name for p in shard.glob("checkpoint-4/rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    rank1 = set(writes.read_text().split())
    assert rank1 == {f"{ddp}-probe"}, f"rank 1 wrote {sorted(rank1)}"
    # torchrun --redirects 3 keeps each rank's stdout apart: rank 1 printed nothing of its own.
    out1 = next((tmp_path / "logs").rglob("attempt_0/1/stdout.log")).read_text()
    out0 = next((tmp_path / "logs").rglob("attempt_0/0/stdout.log")).read_text()
    assert "shard 0: done" in out0 and "shard 0" not in out1


def test_the_launcher_returns_the_hub_metrics_of_a_shard_done_before_this_machine_started(hub, tmp_path, monkeypatch):
    """A fresh machine launching a shard already done on the Hub gets its metrics back, not {}."""
    from huggingface_hub import HfApi

    import kit.launch

    api = HfApi()
    api.create_repo("kit-tester/done-run", private=True, exist_ok=True)
    api.upload_file(
        path_or_fileobj=json.dumps({"eval_loss": 0.5}).encode(),
        path_in_repo="shard-02/metrics.json",
        repo_id="kit-tester/done-run",
    )

    class FinishedAtOnce:  # torchrun's ranks saw the shard done on the Hub and exited without local files
        def __init__(self, *args, **kwargs):
            self.stdout, self.returncode = iter(()), 0

        def wait(self):
            return 0

    monkeypatch.setattr(kit.launch.subprocess, "Popen", FinishedAtOnce)
    metrics = kit.launch.launch_shard(
        2, "cpu-tiny", [], "shards", 2, "hf://kit-tester/done-run", work_dir=str(tmp_path)
    )
    assert metrics == {"eval_loss": 0.5}
