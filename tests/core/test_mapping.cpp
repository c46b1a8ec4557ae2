// Segment mappings ask the kernel for transparent huge pages (segment.cpp): a
// segment of many keys spans tens of thousands of 4 KiB pages, and each call
// touches two of them at random. The advice is a VMA flag ("hg" in smaps), set
// whatever /dev/shm's mount allows, so it is testable on any host.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>

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

// A reserved segment has every page allocated in /dev/shm from the start (a full
// /dev/shm later cannot SIGBUS a client); an unreserved one only what is touched.
TEST(Mapping, ACreateReservesEveryPageUnlessAskedNotTo) {
  for (const bool reserve : {true, false}) {
    ScopedShm shm;
    Mapping m;
    std::string detail;
    ASSERT_EQ(Mapping::create(shm.name, 64u << 20, 0600, m, detail, reserve), Status::ok) << detail;
    struct stat st {};
    ASSERT_EQ(::stat(("/dev/shm/" + shm.name).c_str(), &st), 0);
    const uint64_t allocated = uint64_t(st.st_blocks) * 512;
    if (reserve)
      EXPECT_GE(allocated, 64u << 20) << "reserved: every page allocated";
    else
      EXPECT_LT(allocated, 1u << 20) << "not reserved: only the header's pages";
  }
}

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

bool exists(const std::string &shm_name) { return ::access(shm_path(shm_name).c_str(), F_OK) == 0; }

// A size tmpfs takes (sparse) but no address space holds: the map step fails. A
// 175 TB rev3-4.state left behind that way made every later start fail (ENOMEM)
// until --reset, so a failed create removes what it made.
TEST(Mapping, ACreateLargerThanDevShmCanHoldLeavesNoObjectAndNamesBothSizes) {
  // Refused before the object is made (it used to be made, then fail to map, then
  // be removed; one that did map would SIGBUS its users once filled).
  ScopedShm shm;
  Mapping m;
  std::string detail;
  const uint64_t bytes = uint64_t(1) << 62;  // 4 EiB
  EXPECT_NE(Mapping::create(shm.name, bytes, 0600, m, detail), Status::ok);
  EXPECT_FALSE(m);
  EXPECT_FALSE(exists(shm.name)) << shm_path(shm.name) << " was left behind";
  EXPECT_NE(detail.find("cannot create " + shm_path(shm.name) + " of 4611686018427387904 bytes (4.0 EiB): /dev/shm has "),
            std::string::npos)
      << detail;
  // The name is free for the next attempt.
  EXPECT_EQ(Mapping::create(shm.name, 64u << 10, 0600, m, detail), Status::ok) << detail;
}

TEST(Mapping, ACreateThatCannotSizeLeavesNoObjectAndNamesTheSize) {
  // RLIMIT_FSIZE makes ftruncate fail (EFBIG; SIGXFSZ ignored) after shm_open made the object.
  ScopedShm shm;
  rlimit was{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &was), 0);
  const auto old_handler = signal(SIGXFSZ, SIG_IGN);
  rlimit low = was;
  low.rlim_cur = 1u << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &low), 0);
  Mapping m;
  std::string detail;
  const Status st = Mapping::create(shm.name, 8u << 20, 0600, m, detail);
  setrlimit(RLIMIT_FSIZE, &was);
  signal(SIGXFSZ, old_handler);
  EXPECT_NE(st, Status::ok);
  EXPECT_FALSE(exists(shm.name)) << shm_path(shm.name) << " was left behind";
  EXPECT_NE(detail.find("cannot size " + shm_path(shm.name) + " to 8388608 bytes (8.0 MiB)"), std::string::npos)
      << detail;
}

TEST(Mapping, ASizeNoFileCanHaveIsRefusedBeforeAnythingIsMade) {
  ScopedShm shm;
  Mapping m;
  std::string detail;
  EXPECT_NE(Mapping::create(shm.name, UINT64_MAX, 0600, m, detail), Status::ok);
  EXPECT_FALSE(exists(shm.name));
  EXPECT_NE(detail.find("18446744073709551615 bytes"), std::string::npos) << detail;
}

}  // namespace
}  // namespace sluice::core
