#include <attnkit/functional/backend.h>

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace attnkit {
namespace functional {

bool fused_backend_selected() {
  const char* env = std::getenv("ATTNKIT_BACKEND");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "fused") == 0) return true;
  if (std::strcmp(env, "reference") == 0) return false;
  TORCH_CHECK(false, "attnkit: ATTNKIT_BACKEND must be reference or fused, got '", env, "'");
  return false;
}

}  // namespace functional
}  // namespace attnkit
