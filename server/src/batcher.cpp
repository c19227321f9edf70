#include "batcher.h"

#include <vector>

namespace aios::server {

bool ForwardBatcher::batchable(const gradient::ForwardOptions& options) {
  return !options.positions && !options.mask && options.layers.empty() && !options.allow_non_finite &&
         !options.extension && !options.ids;
}

at::Tensor ForwardBatcher::forward(const at::Tensor& latents) {
  Pending mine;
  mine.latents = latents;
  std::unique_lock<std::mutex> lock(mutex_);
  waiting_.push_back(&mine);
  while (!mine.done) {
    if (computing_) {
      changed_.wait(lock);
      continue;
    }
    // The oldest waiting forward and every other of its shape, oldest first, up to max_rows_.
    std::vector<Pending*> batch;
    int64_t rows = 0;
    const at::Tensor& first = waiting_.front()->latents;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      const at::Tensor& x = (*it)->latents;
      const bool fits = x.sizes().slice(1) == first.sizes().slice(1) && x.scalar_type() == first.scalar_type() &&
                        (batch.empty() || rows + x.size(0) <= max_rows_);
      if (!fits) {
        ++it;
        continue;
      }
      rows += x.size(0);
      batch.push_back(*it);
      it = waiting_.erase(it);
    }
    computing_ = true;
    lock.unlock();
    compute(batch);
    lock.lock();
    for (Pending* p : batch) p->done = true;
    computing_ = false;
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

void ForwardBatcher::compute(const std::vector<Pending*>& batch) {
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
    } catch (const std::exception&) {
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
