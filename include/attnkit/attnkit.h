#pragma once
// attnkit: Transformer attention mechanisms on LibTorch. The umbrella header.

#include <attnkit/core/decode_state.h>
#include <attnkit/core/low_rank_projection.h>
#include <attnkit/core/reference_attention.h>
#include <attnkit/core/rms_norm.h>
#include <attnkit/core/rope.h>
#include <attnkit/functional/dot_product_attention.h>
#include <attnkit/functional/flex_attention.h>
#include <attnkit/functional/gather_attention.h>
#include <attnkit/functional/index_topk.h>

#include <attnkit/attention/alibi_attention.h>
#include <attnkit/attention/attention.h>
#include <attnkit/attention/big_bird_attention.h>
#include <attnkit/attention/block_attention.h>
#include <attnkit/attention/causal_jepa_attention.h>
#include <attnkit/attention/combined_attention.h>
#include <attnkit/attention/compressed_sparse_attention.h>
#include <attnkit/attention/deepseek_sparse_attention.h>
#include <attnkit/attention/delta_attention.h>
#include <attnkit/attention/differential_attention.h>
#include <attnkit/attention/dilated_attention.h>
#include <attnkit/attention/gated_attention.h>
#include <attnkit/attention/gated_delta_net.h>
#include <attnkit/attention/grouped_query_attention.h>
#include <attnkit/attention/heavily_compressed_attention.h>
#include <attnkit/attention/linear_attention.h>
#include <attnkit/attention/local_attention.h>
#include <attnkit/attention/longformer_attention.h>
#include <attnkit/attention/lsh_attention.h>
#include <attnkit/attention/minimax_sparse_attention.h>
#include <attnkit/attention/multi_head_latent_attention.h>
#include <attnkit/attention/multi_query_attention.h>
#include <attnkit/attention/projected_attention.h>
#include <attnkit/attention/slot_attention.h>
#include <attnkit/attention/standard_attention.h>
