// The host's memory between calls (internal to aios_server): freed memory stays with the
// allocator while calls keep coming, and goes back to the system after a quiet spell.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "aios/export.h"

// Exported for the C++ tests, which reach this internal class (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::server {

// Counts the calls in flight; once none has been for `after`, gives the allocator's free memory
// back to the system (glibc's malloc_trim; nothing elsewhere), once per quiet spell.
class IdleRelease {
 public:
  explicit IdleRelease(std::chrono::milliseconds after);  // after == 0: never
  ~IdleRelease();
  IdleRelease(const IdleRelease&) = delete;
  IdleRelease& operator=(const IdleRelease&) = delete;

  // A call in flight while it lives.
  class Busy {
   public:
    explicit Busy(IdleRelease& owner);
    ~Busy();
    Busy(const Busy&) = delete;
    Busy& operator=(const Busy&) = delete;

   private:
    IdleRelease& owner_;
  };

  int64_t releases() const;  // quiet spells that ended in a release so far (for tests)

 private:
  void run();

  const std::chrono::milliseconds after_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  int64_t busy_ = 0;
  uint64_t calls_ = 0;     // calls started so far: a quiet spell ends when it moves
  bool released_ = true;   // nothing to give back since the last release
  bool stopping_ = false;
  int64_t releases_ = 0;
  std::thread thread_;
};

}  // namespace aios::server
AIOS_EXPORT_END
