#include "memory.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "aios/server/host.h"

extern char** environ;

namespace aios::server {

IdleRelease::IdleRelease(std::chrono::milliseconds after) : after_(after) {
  if (after_.count() > 0) thread_ = std::thread([this] { run(); });
}

IdleRelease::~IdleRelease() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

IdleRelease::Busy::Busy(IdleRelease& owner) : owner_(owner) {
  std::lock_guard<std::mutex> lock(owner_.mutex_);
  ++owner_.busy_;
  ++owner_.calls_;
  owner_.released_ = false;
}

IdleRelease::Busy::~Busy() {
  bool quiet = false;
  {
    std::lock_guard<std::mutex> lock(owner_.mutex_);
    quiet = --owner_.busy_ == 0;
  }
  if (quiet) owner_.changed_.notify_all();
}

int64_t IdleRelease::releases() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return releases_;
}

void IdleRelease::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return stopping_ || (busy_ == 0 && !released_); });
    if (stopping_) return;
    const uint64_t calls = calls_;
    const bool interrupted =
        changed_.wait_for(lock, after_, [&] { return stopping_ || busy_ > 0 || calls_ != calls; });
    if (stopping_) return;
    if (interrupted) continue;
    released_ = true;
    ++releases_;
    lock.unlock();
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
    lock.lock();
  }
}

void tune_allocator_for_hosting() {
#if defined(__GLIBC__)
  for (char** variable = environ; *variable != nullptr; ++variable) {
    if (std::strncmp(*variable, "MALLOC_", 7) == 0 || std::strncmp(*variable, "GLIBC_TUNABLES=", 15) == 0) return;
  }
  // One heap for every thread: gRPC runs each call on a thread of its pool, and glibc's heaps of
  // threads other than the first are 64 MiB pieces that are unmapped as soon as they empty.
  mallopt(M_ARENA_MAX, 1);
  // Blocks up to 32 MiB (glibc's largest threshold) from the heap, whose free memory stays there
  // until IdleRelease gives it back, instead of being returned at every free.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, -1);  // -1: never trim at a free
#endif
}

}  // namespace aios::server
