// Makes the process run out of file descriptors, so that the next accept4 of a
// server thread fails with EMFILE while its connection waits in the backlog:
// every free descriptor up to the highest one in use (or `keep`, if higher) is
// filled, and RLIMIT_NOFILE is capped just above. end() (or the destructor)
// undoes both. Sockets a test needs must be made before.
#pragma once
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace sluice::test {

class DescriptorShortage {
 public:
  explicit DescriptorShortage(int keep = 0) {
    int highest = keep;
    for (const auto &e : std::filesystem::directory_iterator("/proc/self/fd"))
      highest = std::max(highest, std::stoi(e.path().filename().string()));
    for (;;) {
      const int f = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (f < 0) break;
      if (f > highest) {
        ::close(f);
        break;
      }
      fillers_.push_back(f);
    }
    EXPECT_EQ(::getrlimit(RLIMIT_NOFILE, &old_), 0);
    rlimit cap = old_;
    cap.rlim_cur = rlim_t(highest + 1);
    capped_ = ::setrlimit(RLIMIT_NOFILE, &cap) == 0;
    EXPECT_TRUE(capped_);
  }
  ~DescriptorShortage() { end(); }
  DescriptorShortage(const DescriptorShortage &) = delete;
  DescriptorShortage &operator=(const DescriptorShortage &) = delete;

  void end() {
    if (capped_) {
      EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &old_), 0);
    }
    capped_ = false;
    for (int f : fillers_) ::close(f);
    fillers_.clear();
  }

 private:
  std::vector<int> fillers_;
  rlimit old_{};
  bool capped_ = false;
};

// CPU time this process spends while sleeping for `d`: what its other threads
// burn meanwhile (a thread spinning on a readable socket shows as about d).
inline int64_t process_cpu_ms_during(std::chrono::milliseconds d) {
  timespec c0{}, c1{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  std::this_thread::sleep_for(d);
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  return (int64_t(c1.tv_sec - c0.tv_sec) * 1'000'000'000 + (c1.tv_nsec - c0.tv_nsec)) / 1'000'000;
}

}  // namespace sluice::test
