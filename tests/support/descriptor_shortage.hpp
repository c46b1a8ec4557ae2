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
#include <filesystem>
#include <string>
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

}  // namespace sluice::test
