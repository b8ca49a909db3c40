"""scripts/bench_gpu.py --smoke: the GPU benchmark's code runs end to end on CPU (a tiny random shape,
every preset path once), so it is ready the day a GPU is lent. ~30 s.

    .venv/bin/python -m pytest -q tests/scripts/test_bench_gpu.py
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_every_path_on_a_tiny_shape_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    paths = {r["path"]: r for r in report["results"]}
    assert set(paths) == {"bf16_lora_packed", "bf16_lora_padded", "qlora_packed", "qlora_padded"}
    assert all(r["tokens_per_s"] > 0 for r in paths.values())
    assert paths["qlora_packed"]["quantize"] == "nf4" and paths["qlora_packed"]["padding_free"]
    assert paths["bf16_lora_packed"]["attn_implementation"] == "kit_packed_sdpa"  # CPU: no FlashAttention-2
    assert not paths["bf16_lora_padded"]["padding_free"]
