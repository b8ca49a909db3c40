"""`kit_packed_sdpa`: SDPA that runs a packed row example by example instead of through a T x T mask.

Owns: the attention implementation kit registers with transformers for padding-free training on
machines without the flash_attn package (CPU, T4, P100, and Ampere+ GPUs where it is not installed: there
torch's own varlen FlashAttention kernel runs the row in one call). Tests: tests/test_attention.py
(`.venv/bin/python -m pytest -q tests/test_attention.py`, CPU, no network, ~1 min) and, on a GPU,
tests/test_attention_gpu.py.

    import kit.attention                                   # registers it (kit.model.load_base_model does this)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="kit_packed_sdpa")
    # or, in a run: --set model.attn_implementation=kit_packed_sdpa

Why: for a packed row (kit/collator.py: batch 1, position_ids restarting at 0, no attention_mask)
transformers' "sdpa" isolates the examples with one T x T block-causal mask, and SDPA then scores
every (query, key) pair of the row, masked or not: O(T^2) for T = 2-4k tokens where the examples
alone cost sum(n_i^2). Here the row is cut at the example boundaries and each example runs
`scaled_dot_product_attention(..., is_causal=True)` on its own slice: no mask is built, and the
work is sum(n_i^2). Anything else (padded batches, generation with a KV cache, an explicit mask,
sliding-window layers) goes to transformers' own sdpa_mask and sdpa_attention_forward unchanged.

How the two halves meet. transformers builds the mask once per forward (masking_utils.create_causal_mask)
with the function registered for the implementation's name in AttentionMaskInterface; a name that is
not registered there gets no mask at all, padded batches included, so kit registers one:
`packed_row_mask` returns None exactly where a packed row would otherwise get its T x T mask, and
sdpa_mask's own result everywhere else. The attention function then needs the boundaries. They come
from `position_ids`, which the Llama / Qwen2 / Mistral decoder layers of transformers 5.23 pass to the
attention function in **kwargs (DecoderLayer -> Attention(**kwargs) -> attention_interface(**kwargs)),
so no collator change is needed (the alternative, DataCollatorWithFlattening(return_flash_attn_kwargs
=True) and its cu_seq_lens_q kwargs, would change kit's batch format and every caller's). The
boundaries are where position_ids do not step by +1: the rule transformers' own
find_packed_sequence_indices uses, so both implementations split a row in the same places.

Scope: decoder-only text models whose create_causal_mask call adds no or/and mask functions and no
block_sequence_ids (Llama, SmolLM2, Qwen2, Mistral do not); a model that did would need its mask.
"""

from __future__ import annotations

import torch

NAME = "kit_packed_sdpa"


def example_boundaries(position_ids: torch.Tensor | None) -> list[int] | None:
    """[0, start_2, ..., T] for a packed row of batch 1, or None when the row holds one sequence.

    A new example starts wherever position_ids do not step by +1 (find_packed_sequence_indices' rule).
    """
    if position_ids is None:
        return None
    if position_ids.dim() == 2:
        if position_ids.shape[0] != 1:
            return None
        position_ids = position_ids[0]
    starts = (torch.diff(position_ids) != 1).nonzero().flatten() + 1
    if starts.numel() == 0:
        return None
    # One host sync per call; the attention function caches the result for the layers that follow.
    return [0, *starts.tolist(), int(position_ids.shape[0])]


class _BoundaryCache:
    """The boundaries of the last position_ids seen: every layer of one forward gets the same tensor.

    Keyed on the tensor object and its version counter; holding a reference keeps its id from being reused.
    """

    def __init__(self):
        self.key, self.value = None, None

    def get(self, position_ids):
        key = (position_ids, position_ids._version) if position_ids is not None else None
        if self.key is None or key is None or self.key[0] is not key[0] or self.key[1] != key[1]:
            self.key, self.value = key, example_boundaries(position_ids)
        return self.value


_boundaries = _BoundaryCache()


def packed_row_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    use_vmap: bool = False,
    **kwargs,
):
    """transformers' sdpa_mask, except None (no mask) for a row of batch 1 with no padding mask and no cache offset.

    For such a row sdpa_mask returns None too when the row is one sequence (plain causal: SDPA's is_causal);
    when it is packed, it would build the T x T block mask that kit_packed_sdpa_attention replaces.
    local_size (a sliding-window layer) and use_vmap (a model's own or/and mask functions) keep
    transformers' mask, since per-example is_causal would drop their extra masking.
    """
    from transformers.masking_utils import sdpa_mask

    if (
        batch_size == 1
        and attention_mask is None
        and q_length == kv_length
        and q_offset == 0
        and kv_offset == 0
        and local_size is None
        and not use_vmap
    ):
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        local_size=local_size,
        use_vmap=use_vmap,
        **kwargs,
    )


def kit_packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Per-example causal SDPA for a packed row; transformers' sdpa_attention_forward for everything else.

    query (batch, heads, q_len, head_dim), key/value (batch, kv_heads, kv_len, head_dim), as every
    transformers attention function receives them; returns (batch, q_len, heads, head_dim), None.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    boundaries = None
    # The packed path only where transformers' sdpa would isolate the examples: no mask (packed_row_mask
    # returned None), no KV cache (with one, transformers treats the row as one sequence; use_cache is
    # passed down by the decoder layer), queries and keys the same row, and the layer causal.
    if (
        attention_mask is None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2]
        and not kwargs.get("use_cache")
        and getattr(module, "is_causal", True)
        and kwargs.get("is_causal") in (None, True)
        and kwargs.get("position_bias") is None
    ):
        boundaries = _boundaries.get(kwargs.get("position_ids"))
    if boundaries is None or boundaries[-1] != query.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    # GQA: SDPA repeats the key/value heads itself (what transformers' sdpa does on CPU and CUDA when
    # there is no mask); only when the head counts differ, since enable_gqa has its own checks.
    gqa = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
    if dropout == 0.0 and varlen_usable(query):
        return _varlen(query, key, value, boundaries, scaling, gqa), None
    outputs = []
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        # Slices along the sequence dim are views: no copy of q/k/v, and autograd routes each
        # example's gradient back into its slice of the row.
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                # A one-token example attends to itself only; is_causal=True is the same there.
                is_causal=True,
                **gqa,
            )
        )
    attn_output = torch.cat(outputs, dim=2)
    return attn_output.transpose(1, 2).contiguous(), None


def varlen_usable(query: torch.Tensor) -> bool:
    """torch's packed FlashAttention kernel (torch.nn.attention.varlen) runs this query: CUDA, compute
    capability >= 8.0, half precision. Then one kernel call serves the whole row; elsewhere (CPU, T4,
    P100, fp32) the per-example loop, one SDPA launch per example and layer, is the fallback."""
    if not (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.9)
    except ImportError:
        return False
    return torch.cuda.get_device_capability(query.device) >= (8, 0)


def _varlen(query, key, value, boundaries, scaling, gqa) -> torch.Tensor:
    """The packed row in one varlen call: (1, heads, T, d) in, (1, T, heads, d) out, causal per example."""
    from torch.nn.attention.varlen import varlen_attn

    cu_seq = torch.tensor(boundaries, dtype=torch.int32, device=query.device)
    longest = max(b - a for a, b in zip(boundaries[:-1], boundaries[1:]))
    out = varlen_attn(
        query[0].transpose(0, 1),  # (T, heads, d)
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu_seq,
        cu_seq,
        longest,
        longest,
        scale=scaling,
        window_size=(-1, 0),  # causal
        **gqa,
    )
    return out.unsqueeze(0)


def register() -> None:
    """Make "kit_packed_sdpa" a valid attn_implementation (idempotent; done at import of this module)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, kit_packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, packed_row_mask)


register()
