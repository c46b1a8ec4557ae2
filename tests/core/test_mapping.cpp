// Segment mappings ask the kernel for transparent huge pages (segment.cpp): a
// segment of many keys spans tens of thousands of 4 KiB pages, and each call
// touches two of them at random. The advice is a VMA flag ("hg" in smaps), set
// whatever /dev/shm's mount allows, so it is testable on any host.
#include <unistd.h>

#include <cctype>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "sluice/core/segment.hpp"

namespace sluice::core {
namespace {

// The VmFlags line of the smaps entry for the mapping that starts at `base`.
std::string vm_flags_of(const void *base) {
  std::ifstream smaps("/proc/self/smaps");
  std::ostringstream start;
  start << std::hex << reinterpret_cast<uintptr_t>(base) << "-";
  std::string line;
  bool in = false;
  while (std::getline(smaps, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') != std::string::npos &&
        line.find(' ') > line.find('-'))
      in = line.rfind(start.str(), 0) == 0;
    else if (in && line.rfind("VmFlags:", 0) == 0)
      return line;
  }
  return {};
}

bool has_flag(const std::string &flags, const char *f) {
  std::istringstream in(flags.substr(flags.find(':') + 1));
  std::string w;
  while (in >> w)
    if (w == f) return true;
  return false;
}

struct ScopedShm {
  std::string name = "sluicetest-mapping-" + std::to_string(getpid());
  ~ScopedShm() { Mapping::remove(name); }
};

TEST(Mapping, ALargeSegmentIsAdvisedForHugePagesInTheCreatorAndEveryClient) {
  ScopedShm shm;
  Mapping created, opened, read_only;
  std::string detail;
  ASSERT_EQ(Mapping::create(shm.name, 8u << 20, 0600, created, detail), Status::ok) << detail;
  ASSERT_EQ(Mapping::open(shm.name, true, opened, detail), Status::ok) << detail;
  ASSERT_EQ(Mapping::open(shm.name, false, read_only, detail), Status::ok) << detail;
  for (const Mapping *m : {&created, &opened, &read_only}) {
    const std::string flags = vm_flags_of(m->base());
    ASSERT_FALSE(flags.empty()) << "no smaps entry at " << m->base();
    EXPECT_TRUE(has_flag(flags, "hg")) << flags;
  }
}

TEST(Mapping, ASmallSegmentIsLeftOnSmallPages) {
  // Below one huge page the advice could only waste memory: a policy segment is a
  // few KiB.
  ScopedShm shm;
  Mapping m;
  std::string detail;
  ASSERT_EQ(Mapping::create(shm.name, 64u << 10, 0600, m, detail), Status::ok) << detail;
  const std::string flags = vm_flags_of(m.base());
  ASSERT_FALSE(flags.empty());
  EXPECT_FALSE(has_flag(flags, "hg")) << flags;
}

TEST(Mapping, TheHugePageModeIsReadFromTheMountOfDevShm) {
  // Every Linux with a tmpfs /dev/shm lists it; the mode is one of the kernel's.
  const std::string m = shm_huge_mode();
  EXPECT_TRUE(m == "never" || m == "always" || m == "within_size" || m == "advise" || m == "deny" || m == "force")
      << "'" << m << "'";
}

TEST(Mapping, OnlyTheModesThatGrantAdvisedHugePagesCountAsAllowingThem) {
  for (const char *m : {"advise", "within_size", "always", "force"}) EXPECT_TRUE(shm_huge_pages_allowed(m)) << m;
  for (const char *m : {"never", "deny", "", "unknown"}) EXPECT_FALSE(shm_huge_pages_allowed(m)) << m;
}

}  // namespace
}  // namespace sluice::core
