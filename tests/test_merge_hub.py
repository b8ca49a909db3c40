"""Merging adapters that live on the Hub, into a Hub repo: hf:// SOURCEs and DEST.

.venv/bin/python -m pytest tests/test_merge_hub.py -q    # seconds, local Hub server only
"""

import json

from huggingface_hub import HfApi
from safetensors.torch import load_file
from test_merge import make_adapter

from kit.compare import merge_and_compare


def test_hub_sources_download_only_their_adapters_and_the_merge_lands_on_the_hub(hub, tiny_model_dir, tmp_path):
    api = HfApi()
    api.create_repo("kit-tester/fleet", private=True, exist_ok=True)
    for shard, seed in ((0, 1), (1, 2)):
        adapter = make_adapter(tiny_model_dir, tmp_path / f"a{shard}", r=4, alpha=8, seed=seed)
        api.upload_folder(folder_path=str(adapter), path_in_repo=f"shard-0{shard}/adapter", repo_id="kit-tester/fleet")
    # A checkpoint beside the adapter: a merge has no use for it and must not download it.
    api.upload_file(
        path_or_fileobj=b"x" * 1000, path_in_repo="shard-00/checkpoint-2/optimizer.pt", repo_id="kit-tester/fleet"
    )
    hub.clear_log()

    report = merge_and_compare(
        ["hf://kit-tester/fleet/shard-00", "hf://kit-tester/fleet/shard-01/adapter"],
        "hf://kit-tester/merged",
        strategy="average",
    )

    assert report["pushed_to"] == "hf://kit-tester/merged"
    assert not any("checkpoint-2" in r.path for r in hub.requests)
    pushed = hub.files("kit-tester/merged")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "merge_report.json"} <= set(pushed)
    assert json.loads(pushed["adapter_config.json"])["r"] == 8
    assert hub.is_private("kit-tester/merged")
    local = merge_and_compare([tmp_path / "a0", tmp_path / "a1"], tmp_path / "local", strategy="average")
    assert local["merge"]["rank"] == 8
    (tmp_path / "pushed.safetensors").write_bytes(pushed["adapter_model.safetensors"])
    remote_w, local_w = (
        load_file(str(tmp_path / "pushed.safetensors")),
        load_file(str(tmp_path / "local" / "adapter_model.safetensors")),
    )
    assert all((remote_w[k] - local_w[k]).abs().max() == 0 for k in local_w)
