#include "batcher.h"

#include <algorithm>
#include <vector>

namespace aios::server {

bool ForwardBatcher::batchable(const gradient::ForwardOptions& options) {
  return !options.positions && !options.mask && options.layers.empty() && !options.allow_non_finite && !options.routing &&
         !options.extension && !options.ids;
}

ForwardBatcher::Shape ForwardBatcher::shape_of(const at::Tensor& latents) {
  return {latents.size(1), latents.size(2), static_cast<int64_t>(latents.scalar_type())};
}

at::Tensor ForwardBatcher::forward(const at::Tensor& latents) {
  Pending mine;
  mine.latents = latents;
  const Shape shape = shape_of(latents);
  std::unique_lock<std::mutex> lock(mutex_);
  waiting_.push_back(&mine);
  while (!mine.done) {
    if (std::find(computing_.begin(), computing_.end(), shape) != computing_.end()) {
      changed_.wait(lock);  // a forward of this shape computes: wait for it, then batch
      continue;
    }
    // Every waiting forward of this shape, oldest first, up to max_rows_ (this one among them
    // unless older ones fill the batch). The allocations come first: past them nothing throws,
    // so no forward is left taken from waiting_ and never done.
    std::vector<Pending*> batch;
    try {
      batch.reserve(waiting_.size());
      computing_.push_back(shape);
    } catch (...) {
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &mine));
      throw;
    }
    int64_t rows = 0;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      const at::Tensor& x = (*it)->latents;
      if (shape_of(x) != shape || (!batch.empty() && rows + x.size(0) > max_rows_)) {
        ++it;
        continue;
      }
      rows += x.size(0);
      batch.push_back(*it);
      it = waiting_.erase(it);
    }
    lock.unlock();
    compute(batch);  // every failure lands in the batch's Pending::error
    lock.lock();
    for (Pending* p : batch) p->done = true;
    computing_.erase(std::find(computing_.begin(), computing_.end(), shape));
    changed_.notify_all();
  }
  lock.unlock();
  if (mine.error) std::rethrow_exception(mine.error);
  return mine.hidden;
}

int64_t ForwardBatcher::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(waiting_.size());
}

void ForwardBatcher::compute(const std::vector<Pending*>& batch) noexcept {
  if (batch.size() > 1) {
    try {
      std::vector<at::Tensor> parts;
      std::vector<int64_t> rows;
      for (const Pending* p : batch) {
        parts.push_back(p->latents);
        rows.push_back(p->latents.size(0));
      }
      const std::vector<at::Tensor> hidden = backbone_.forward(at::cat(parts)).hidden.split_with_sizes(rows);
      for (std::size_t i = 0; i < batch.size(); ++i) batch[i]->hidden = hidden[i];
      return;
    } catch (...) {
      // One caller's bad latents (NaN, say) must not fail the others: each on its own, for its own error.
    }
  }
  for (Pending* p : batch) {
    try {
      p->hidden = backbone_.forward(p->latents).hidden;
    } catch (...) {
      p->error = std::current_exception();
    }
  }
}

}  // namespace aios::server
