#include "aios/model_info.h"

namespace aios {

// Defaulted here, where aios builds as C++20, so that the header stays C++17 for thin clients.
bool operator==(const RopeInfo&, const RopeInfo&) = default;
bool operator==(const WeightKind&, const WeightKind&) = default;
bool operator==(const ModelInfo&, const ModelInfo&) = default;

}  // namespace aios
