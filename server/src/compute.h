// The threads the host's calls compute on (internal to aios_server).
//
// gRPC runs each call on whichever thread of its pool is free, and every thread that enters
// LibTorch's parallel regions keeps a team of OpenMP workers of its own. With more such workers
// than cores, OpenMP makes them sleep between regions instead of spinning, and a lone caller's
// forward+vjp at 1x128 took 1.2-1.4x its in-process time. So calls compute on a fixed set of
// threads: the first of them whenever it is free, keeping its team; the others only while it is
// busy, each giving its team back after every call, so that once concurrent calls end a single
// team is left. (omp_pause_resource_all frees the calling thread's team in GNU libgomp, the
// runtime LibTorch's builds use; LLVM's libomp would pause every team of the process.)
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "aios/export.h"

// Exported for the C++ tests, which reach this internal class (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::server {

class ComputeThreads {
 public:
  explicit ComputeThreads(int64_t count);  // count >= 1
  ~ComputeThreads();                       // after every run() has returned
  ComputeThreads(const ComputeThreads&) = delete;
  ComputeThreads& operator=(const ComputeThreads&) = delete;

  // Runs `work` on one of the threads and returns when it has; its exception is rethrown here.
  // Called from one of the threads, runs it in place (waiting would hold the thread it waits for).
  void run(const std::function<void()>& work);

 private:
  struct Job {
    const std::function<void()>* work = nullptr;
    std::exception_ptr error;
    bool done = false;
    std::condition_variable finished;
  };
  struct Worker {
    bool first = false;
    std::condition_variable wake;
    Job* job = nullptr;
  };
  void serve(Worker& worker);
  void stop();

  std::mutex mutex_;
  std::condition_variable started_;  // a thread has come to wait for work
  std::deque<Job*> waiting_;     // jobs that found every thread busy
  std::vector<Worker*> idle_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
};

}  // namespace aios::server
AIOS_EXPORT_END
