// What every ali::Backbone shares: cancellation between blocks, a generation run to its end.
#include "aios/ali/backbone.h"

#include "aios/fail.h"

namespace aios::ali {

void stop_if_cancelled(const std::function<bool()>& cancelled) {
  if (cancelled && cancelled())
    fail(ErrorCode::kUnavailable, "cancelled", "the call was cancelled");
}

GenerationResult run_generation(Generation& generation,
                                const std::function<bool(const GenerationStep&)>& on_step) {
  std::vector<at::Tensor> ids, hidden, routes;
  at::Tensor lengths;
  while (std::optional<GenerationStep> step = generation.next()) {
    ids.push_back(step->ids);
    hidden.push_back(step->hidden);
    routes.push_back(step->routes);
    const at::Tensor emitted = step->ids.ne(GenerationStep::kFinished).to(at::kLong);
    lengths = lengths.defined() ? lengths + emitted : emitted;
    if (on_step && !on_step(*step)) break;
  }
  GenerationResult result;
  if (ids.empty()) return result;
  result.ids = at::stack(ids, 1);
  result.hidden = at::stack(hidden, 1);
  result.lengths = lengths;
  result.routes = at::stack(routes, 1);
  return result;
}

}  // namespace aios::ali
