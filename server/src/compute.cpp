#include "compute.h"

#include <algorithm>

#include "aios/fail.h"

// OpenMP 5.0: frees the calling thread's team of workers (a no-op where the runtime lacks it,
// hence weak: LibTorch may come with another OpenMP runtime, or none).
extern "C" int omp_pause_resource_all(int kind) __attribute__((weak));

namespace aios::server {
namespace {
thread_local bool on_compute_thread = false;
constexpr int kOmpPauseSoft = 1;
}

ComputeThreads::ComputeThreads(int64_t count) {
  if (count < 1) fail(ErrorCode::kInvalidArgument, "compute_threads", "expected at least 1, got {}", count);
  try {
    for (int64_t i = 0; i < count; ++i) {
      workers_.push_back(std::make_unique<Worker>());
      workers_.back()->first = i == 0;
      threads_.emplace_back([this, worker = workers_.back().get()] { serve(*worker); });
    }
  } catch (...) {  // the threads started so far end before the error leaves
    stop();
    throw;
  }
  // Every thread waiting for work before the first call, so that the first thread takes it.
  std::unique_lock<std::mutex> lock(mutex_);
  started_.wait(lock, [&] { return idle_.size() == workers_.size(); });
}

ComputeThreads::~ComputeThreads() { stop(); }

void ComputeThreads::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  for (auto& worker : workers_) worker->wake.notify_one();
  for (auto& thread : threads_) thread.join();
}

void ComputeThreads::run(const std::function<void()>& work) {
  if (on_compute_thread) {
    work();
    return;
  }
  Job job;
  job.work = &work;
  std::unique_lock<std::mutex> lock(mutex_);
  if (!idle_.empty()) {
    auto chosen = std::find_if(idle_.begin(), idle_.end(), [](const Worker* w) { return w->first; });
    if (chosen == idle_.end()) chosen = idle_.end() - 1;
    Worker* worker = *chosen;
    idle_.erase(chosen);
    worker->job = &job;
    worker->wake.notify_one();
  } else {
    waiting_.push_back(&job);
  }
  job.finished.wait(lock, [&] { return job.done; });
  lock.unlock();
  if (job.error) std::rethrow_exception(job.error);
}

void ComputeThreads::serve(Worker& worker) {
  on_compute_thread = true;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    if (worker.job == nullptr && !waiting_.empty()) {
      worker.job = waiting_.front();
      waiting_.pop_front();
    }
    if (worker.job == nullptr) {
      if (stopping_) return;
      idle_.push_back(&worker);
      started_.notify_one();
      worker.wake.wait(lock, [&] { return worker.job != nullptr || stopping_; });
      if (worker.job == nullptr) {
        std::erase(idle_, &worker);
        return;
      }
    }
    Job& job = *worker.job;
    lock.unlock();
    try {
      (*job.work)();
    } catch (...) {
      job.error = std::current_exception();
    }
    lock.lock();
    job.done = true;
    worker.job = nullptr;
    job.finished.notify_one();
    if (!worker.first && omp_pause_resource_all != nullptr) {  // after the reply: its caller need not wait
      lock.unlock();
      omp_pause_resource_all(kOmpPauseSoft);
      lock.lock();
    }
  }
}

}  // namespace aios::server
