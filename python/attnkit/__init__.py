"""attnkit: Transformer attention mechanisms on LibTorch with fused CPU kernels.

    import torch, attnkit
    attn = attnkit.GroupedQueryAttention(512, 8, 2, causal=True)   # an nn.Module
    y = attn(torch.randn(2, 128, 512))
    state = attn.init_state(batch_size=1)                          # token-by-token decoding
    ra = attnkit.sparse.ResearchAttention([{"type": "sink", "sink_size": 128}, ...])
"""

import torch  # loads libtorch before the extension that links it

from . import _C
from . import sparse
from ._C import DecodeState, Error
from ._modules import (CLASSES, Attention, AttentionAux, CausalJEPAAttention, CausalJEPAOutput,
                       SlotAttention, make, mechanisms)
from .ops import (BlockMask, create_block_mask, flex_attention, gated_delta_rule,
                  gather_attention, index_topk)

globals().update(CLASSES)


def dsa_index_aux_loss(index_scores, attn_weights):
    """DeepSeek sparse attention's indexer loss: KL(attention || softmax(index scores))."""
    return _C.dsa_index_aux_loss(index_scores, attn_weights)


def msa_index_aux_loss(index_scores, attn_weights, keep, eps=1e-9):
    """MiniMax sparse attention's block-indexer distillation loss (attnhut 0.5.0's form)."""
    return _C.msa_index_aux_loss(index_scores, attn_weights, keep, eps)


def msa_index_aux_loss_v040(block_scores, attn_weights, block_size, group_size, eps=1e-9):
    """MiniMax sparse attention's block-level index loss (attnhut 0.4.0's form): cross entropy
    of softmax(block_scores) against each block's share of the group-averaged attention mass."""
    return _C.msa_index_aux_loss_v040(block_scores, attn_weights, block_size, group_size, eps)


def cjepa_masked_loss(pred, target, mask_slots, history_frames):
    """C-JEPA's masked latent loss over the future frames and the hidden history objects."""
    return _C.cjepa_masked_loss(pred, target, mask_slots, history_frames)


__all__ = ["sparse", "Attention", "AttentionAux", "SlotAttention", "CausalJEPAAttention",
           "CausalJEPAOutput", "cjepa_masked_loss", "BlockMask", "DecodeState", "Error", "make",
           "mechanisms", "create_block_mask", "flex_attention", "gather_attention", "index_topk",
           "gated_delta_rule", "dsa_index_aux_loss", "msa_index_aux_loss",
           "msa_index_aux_loss_v040", *CLASSES]
