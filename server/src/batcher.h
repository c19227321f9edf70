// Plain forwards of different callers computed together (internal to aios_server).
//
// A forward that arrives while another of the same shape computes waits; when that one is done,
// every waiting forward of that shape goes into one batch. A forward waits only for a running one
// of its own shape (whose batch it came too late to join), never for other shapes. On 2
// CPU cores, N concurrent [1,128,D] forwards through the host took 1.1-1.3x the time of one
// [N,128,D] forward (bench/RESULTS.md).
#pragma once

#include <array>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <vector>

#include "aios/export.h"
#include "aios/gradient_api/backbone.h"

// Exported for the C++ tests, which reach this internal class (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::server {

class ForwardBatcher {
 public:
  // Batches hold at most `max_rows` rows.
  ForwardBatcher(gradient::Backbone& backbone, int64_t max_rows) : backbone_(backbone), max_rows_(max_rows) {}

  // Whether a forward with these options may join a batch: none of the options that make rows
  // differ in more than their latents (positions, masks, layers, extensions).
  static bool batchable(const gradient::ForwardOptions& options);

  // latents: [b,T,D] in the backbone's dtype and device -> the final hidden state [b,T,D], as
  // backbone.forward(latents) gives it (to float tolerance when computed in a batch).
  at::Tensor forward(const at::Tensor& latents);

  int64_t waiting() const;  // forwards waiting for a batch (for tests)

 private:
  struct Pending {
    at::Tensor latents;
    at::Tensor hidden;
    std::exception_ptr error;
    bool done = false;
  };
  using Shape = std::array<int64_t, 3>;  // T, D, dtype: what forwards of one batch share
  static Shape shape_of(const at::Tensor& latents);
  void compute(const std::vector<Pending*>& batch) noexcept;

  gradient::Backbone& backbone_;
  const int64_t max_rows_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Pending*> waiting_;
  std::vector<Shape> computing_;  // shapes of the batches computing now
};

}  // namespace aios::server
AIOS_EXPORT_END
