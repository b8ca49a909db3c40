"""kit: fine-tune one LoRA adapter per data shard on whatever GPU runtime you have, then merge them.

The library behind the notebooks in `notebooks/` and the CLI `python -m kit`.
Data flows one way: records -> tokens -> batches -> Trainer -> checkpoints -> merge.
"""

__version__ = "0.1.0"
