// The host's threads and memory between calls (server/src/compute.h, memory.h): where calls
// compute, and when freed memory goes back to the system.
#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <stdexcept>
#include <thread>

#include <catch2/catch.hpp>

#include "compute.h"
#include "memory.h"

using aios::server::ComputeThreads;
using aios::server::IdleRelease;
using namespace std::chrono_literals;

TEST_CASE("compute threads: a lone caller always computes on the same thread", "[server]") {
  ComputeThreads threads(4);
  std::set<std::thread::id> seen;
  for (int i = 0; i < 20; ++i) threads.run([&] { seen.insert(std::this_thread::get_id()); });
  REQUIRE(seen.size() == 1);
  REQUIRE(*seen.begin() != std::this_thread::get_id());

  // Concurrent calls spread over the threads; afterwards a lone caller is back on the first one.
  std::promise<void> go;
  std::shared_future<void> started = go.get_future().share();
  std::atomic<int> inside{0};
  auto hold = [&] {
    threads.run([&] {
      ++inside;
      started.wait();
    });
  };
  std::thread a(hold), b(hold), c(hold);
  while (inside.load() < 3) std::this_thread::sleep_for(1ms);  // three calls compute at once
  go.set_value();
  a.join();
  b.join();
  c.join();
  std::thread::id again;
  threads.run([&] { again = std::this_thread::get_id(); });
  REQUIRE(again == *seen.begin());
}

TEST_CASE("compute threads: calls beyond the count wait their turn", "[server]") {
  ComputeThreads one(1);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> first_running{false};
  std::vector<int> order;
  std::thread first([&] {
    one.run([&] {
      first_running = true;
      released.wait();
      order.push_back(1);
    });
  });
  while (!first_running) std::this_thread::sleep_for(1ms);
  std::thread second([&] { one.run([&] { order.push_back(2); }); });
  std::this_thread::sleep_for(50ms);
  REQUIRE(order.empty());  // the second waits while the first computes
  release.set_value();
  first.join();
  second.join();
  REQUIRE(order == std::vector<int>{1, 2});
}

TEST_CASE("compute threads: errors come back to the caller, and nested calls run in place", "[server]") {
  ComputeThreads one(1);
  REQUIRE_THROWS_WITH(one.run([] { throw std::runtime_error("in the work"); }), "in the work");
  int depth = 0;
  one.run([&] {
    ++depth;
    one.run([&] { ++depth; });  // from a compute thread: would wait for the thread it holds otherwise
  });
  REQUIRE(depth == 2);
  REQUIRE_THROWS(ComputeThreads(0));
}

TEST_CASE("idle release: once per quiet spell, never while a call is in flight", "[server]") {
  IdleRelease release(500ms);
  auto wait_for = [&](int64_t n) {
    for (int i = 0; i < 200 && release.releases() < n; ++i) std::this_thread::sleep_for(10ms);
    return release.releases();
  };
  std::this_thread::sleep_for(800ms);
  REQUIRE(release.releases() == 0);  // nothing happened since the start: nothing to give back
  {
    IdleRelease::Busy call(release);
    std::this_thread::sleep_for(800ms);
    REQUIRE(release.releases() == 0);  // in flight
  }
  REQUIRE(wait_for(1) == 1);
  std::this_thread::sleep_for(800ms);
  REQUIRE(release.releases() == 1);  // still quiet: once is enough
  for (int i = 0; i < 20; ++i) {  // calls 20 ms apart keep the spell from being quiet
    { IdleRelease::Busy call(release); }
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(release.releases() == 1);
  REQUIRE(wait_for(2) == 2);

  IdleRelease never(0ms);
  { IdleRelease::Busy call(never); }
  std::this_thread::sleep_for(200ms);
  REQUIRE(never.releases() == 0);
}
