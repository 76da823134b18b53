// The built-in maskers by JSON type name. A new masker adds one line here (or, outside the
// library, calls register_masker once at start-up).
#include <attnkit/sparse/fixed_maskers.h>
#include <attnkit/sparse/learned_maskers.h>
#include <attnkit/sparse/masker.h>
#include <attnkit/sparse/sampling_maskers.h>

namespace attnkit {
namespace sparse {
namespace detail {

void register_builtin_maskers(std::map<std::string, MaskerFactory>& factories) {
  factories.emplace("local", LocalMasker::from_config);
  factories.emplace("causal", CausalMasker::from_config);
  factories.emplace("sink", SinkMasker::from_config);
  factories.emplace("oracle_top_k", OracleTopKMasker::from_config);
  factories.emplace("oracle_top_p", OracleTopPMasker::from_config);
  factories.emplace("hash_attention_top_k", HashAttentionTopKMasker::from_config);
  factories.emplace("quest_top_k", QuestTopKMasker::from_config);
  factories.emplace("double_sparsity_top_k", DoubleSparsityTopKMasker::from_config);
  factories.emplace("random_sampling", RandomSamplingMasker::from_config);
  factories.emplace("magic_pig", MagicPigMasker::from_config);
  factories.emplace("adaptive_sampling", AdaptiveSamplingMasker::from_config);
}

}  // namespace detail
}  // namespace sparse
}  // namespace attnkit
