#include "sluice/core/segment.hpp"
#include "sluice/core/tsc_clock.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "sluice/core/clock.hpp"

namespace bip = boost::interprocess;

namespace sluice::core {

static_assert(sizeof(StateHeader) % 64 == 0);
static_assert(sizeof(PolicyHeader) % 64 == 0);

std::string state_segment_name(const std::string &name) { return name + ".state"; }
std::string policy_segment_name(const std::string &name) { return name + ".policy"; }

std::string resolve_segment_name(const char *name) {
  if (name && *name) return name;
  const char *env = std::getenv("SLUICE_SEGMENT");
  if (env && *env) return env;
  return "sluice";
}

bool valid_segment_name(const std::string &name) {
  if (name.empty() || name.size() > 200) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return name[0] != '.';
}

static uint64_t align64(uint64_t v) { return (v + 63) & ~uint64_t(63); }
static uint32_t table_slots(uint32_t max_keys) { return std::max<uint32_t>(16, max_keys + max_keys / 4); }

Geometry plan_geometry(const LayoutSpec &spec) {
  Geometry g;
  g.tier_count = uint32_t(std::min<size_t>(spec.tiers.size(), kMaxTiers));
  g.max_key_bytes = spec.max_key_bytes;
  g.entry_stride = entry_stride_for(spec.max_key_bytes);
  uint64_t off = sizeof(StateHeader);
  for (uint32_t i = 0; i < g.tier_count; ++i) {
    TierInfo &t = g.tiers[i];
    std::memcpy(t.name, spec.tiers[i].name.data(), std::min<size_t>(spec.tiers[i].name.size(), kTierNameBytes - 1));
    t.capacity = spec.tiers[i].capacity;
    t.slots = table_slots(spec.max_keys);
    t.entries_offset = off;
    off = align64(off + uint64_t(t.slots) * g.entry_stride);
    t.rings_offset = off;
    off = align64(off + uint64_t(t.slots) * t.capacity * 8);
  }
  g.segment_bytes = off;
  return g;
}

uint64_t state_segment_bytes(const LayoutSpec &spec) { return plan_geometry(spec).segment_bytes; }

bool read_boot_id(uint8_t out[16]) {
  std::memset(out, 0, 16);
  FILE *f = std::fopen("/proc/sys/kernel/random/boot_id", "r");
  if (!f) return false;
  char buf[64] = {};
  bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  std::fclose(f);
  if (!ok) return false;
  int n = 0;
  for (const char *p = buf; *p && n < 32; ++p) {
    int v;
    if (*p >= '0' && *p <= '9') v = *p - '0';
    else if (*p >= 'a' && *p <= 'f') v = *p - 'a' + 10;
    else continue;
    out[n / 2] = uint8_t(out[n / 2] | (n % 2 ? v : v << 4));
    ++n;
  }
  return n == 32;
}

// ---- Mapping -----------------------------------------------------------------
struct Mapping::Impl {
  bip::mapped_region region;
};

Mapping::Mapping() = default;
Mapping::~Mapping() = default;
Mapping::Mapping(Mapping &&o) noexcept
    : impl_(std::move(o.impl_)), base_(o.base_), size_(o.size_), dev_(o.dev_), ino_(o.ino_) {
  o.base_ = nullptr;
  o.size_ = 0;
}
Mapping &Mapping::operator=(Mapping &&o) noexcept {
  impl_ = std::move(o.impl_);
  base_ = o.base_;
  size_ = o.size_;
  dev_ = o.dev_;
  ino_ = o.ino_;
  o.base_ = nullptr;
  o.size_ = 0;
  return *this;
}

static Status from_errno(int err, const std::string &what, std::string &detail) {
  detail = what + ": " + std::strerror(err);
  if (err == ENOENT) return Status::no_segment;
  if (err == EACCES || err == EPERM) return Status::permission;
  return Status::internal;
}

// Ask for transparent huge pages on a mapping. A 1M-key segment spans tens of
// thousands of 4 KiB pages, and each call touches two of them at random: a TLB miss
// per call. Only where tmpfs allows it (/dev/shm mounted huge=advise or
// huge=within_size); elsewhere the advice is refused or ignored and costs nothing.
static void advise_huge_pages(void *base, size_t size) {
#ifdef MADV_HUGEPAGE
  if (base && size >= (2u << 20)) (void)::madvise(base, size, MADV_HUGEPAGE);
#else
  (void)base, (void)size;
#endif
}

std::string shm_huge_mode() {
  FILE *f = std::fopen("/proc/mounts", "re");
  if (!f) return {};
  std::string mode;
  char dev[256], dir[256], type[64], opts[1024];
  while (std::fscanf(f, "%255s %255s %63s %1023s %*d %*d", dev, dir, type, opts) == 4) {
    if (std::string_view(dir) != "/dev/shm") continue;
    mode = "never";  // the last mount on /dev/shm wins, as the kernel sees it
    const std::string o = std::string(",") + opts + ",";
    const size_t at = o.find(",huge=");
    if (at != std::string::npos) mode = o.substr(at + 6, o.find(',', at + 6) - at - 6);
  }
  std::fclose(f);
  return mode;
}

bool shm_huge_pages_allowed(const std::string &mode) {
  return mode == "advise" || mode == "within_size" || mode == "always" || mode == "force";
}

Status Mapping::open(const std::string &shm_name, bool writable, Mapping &out, std::string &detail,
                     FileOwner *owner) {
  try {
    const auto mode = writable ? bip::read_write : bip::read_only;
    bip::shared_memory_object shm(bip::open_only, shm_name.c_str(), mode);
    struct stat st {};
    if (::fstat(shm.get_mapping_handle().handle, &st) != 0)
      return from_errno(errno, "stat /dev/shm/" + shm_name, detail);
    if (owner) *owner = FileOwner{uint32_t(st.st_uid), uint32_t(st.st_mode & 07777)};
    bip::offset_t size = 0;
    if (!shm.get_size(size) || size <= 0) {
      detail = "segment /dev/shm/" + shm_name + " is empty";
      return Status::not_ready;
    }
    auto impl = std::make_unique<Impl>();
    impl->region = bip::mapped_region(shm, mode);
    out.base_ = impl->region.get_address();
    out.size_ = impl->region.get_size();
    advise_huge_pages(out.base_, out.size_);
    out.dev_ = uint64_t(st.st_dev);
    out.ino_ = uint64_t(st.st_ino);
    out.impl_ = std::move(impl);
    return Status::ok;
  } catch (const bip::interprocess_exception &e) {
    return from_errno(e.get_native_error() ? e.get_native_error() : ENOENT, "open /dev/shm/" + shm_name, detail);
  } catch (const std::bad_alloc &) {
    detail = "out of memory";
    return Status::internal;
  }
}

// "175 TiB": a size as a person reads it, for errors about sizes.
static std::string human_bytes(uint64_t bytes) {
  const char *units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  size_t u = 0;
  double v = double(bytes);
  while (v >= 1024 && u + 1 < sizeof units / sizeof *units) v /= 1024, ++u;
  char buf[48];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

uint64_t shm_free_bytes() {
  struct statvfs fs {};
  if (::statvfs("/dev/shm", &fs) != 0) return UINT64_MAX;  // cannot tell: the create itself will say
  return uint64_t(fs.f_bavail) * fs.f_frsize;
}

Status Mapping::create(const std::string &shm_name, uint64_t bytes, unsigned mode, Mapping &out,
                       std::string &detail, bool reserve) {
  const std::string size = std::to_string(bytes) + " bytes (" + human_bytes(bytes) + ")";
  if (bytes > uint64_t(INT64_MAX)) {  // off_t would wrap it to a negative size
    detail = "cannot create /dev/shm/" + shm_name + " of " + size + ": larger than a file can be";
    return Status::internal;
  }
  // tmpfs allocates on first touch: an object larger than /dev/shm's free space
  // is made and mapped fine, then kills every process that maps it with SIGBUS
  // once its keys fill it. Refused here, on every path that makes one.
  if (const uint64_t room = shm_free_bytes(); bytes > room) {
    detail = "cannot create /dev/shm/" + shm_name + " of " + size + ": /dev/shm has " + human_bytes(room) +
             " free (lower segment.max_keys or the tiers' max_limit)";
    return Status::internal;
  }
  // Once the object exists, any failure removes it: a name left behind (say, sized
  // but not mappable) would make every later start fail the same way until --reset.
  bool made = false;
  struct stat st {};
  std::string what = "create /dev/shm/" + shm_name;  // the step that failed, for the error
  auto discard = [&] {
    if (!made) return;
    // Only the object this call made (its name could have been replaced since).
    struct stat now {};
    if (::stat(shm_path(shm_name).c_str(), &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino)
      bip::shared_memory_object::remove(shm_name.c_str());
  };
  try {
    bip::permissions perm(mode);
    bip::shared_memory_object shm(bip::create_only, shm_name.c_str(), bip::read_write, perm);
    if (::fstat(shm.get_mapping_handle().handle, &st) != 0) {
      const int err = errno;
      bip::shared_memory_object::remove(shm_name.c_str());  // just made, O_EXCL: ours
      return from_errno(err, "stat /dev/shm/" + shm_name, detail);
    }
    made = true;
    what = "cannot size /dev/shm/" + shm_name + " to " + size;
    shm.truncate(bip::offset_t(bytes));
    // The check above is a moment's view: other objects may fill /dev/shm later,
    // and a client that then touches a page no one allocated dies of SIGBUS
    // mid-admission. Every page is reserved now, so a shortage fails the start
    // (ENOSPC) instead. A filesystem without fallocate keeps the check alone.
    if (reserve && ::fallocate(shm.get_mapping_handle().handle, 0, 0, off_t(bytes)) != 0 && errno != EOPNOTSUPP &&
        errno != ENOSYS) {
      const int err = errno;
      discard();
      return from_errno(err, "cannot reserve " + size + " of /dev/shm/" + shm_name +
                                 (err == ENOSPC ? " (/dev/shm is full: lower segment.max_keys or the tiers' max_limit)"
                                                : ""),
                        detail);
    }
    what = "cannot map " + size + " of /dev/shm/" + shm_name;
    auto impl = std::make_unique<Impl>();
    impl->region = bip::mapped_region(shm, bip::read_write);
    out.base_ = impl->region.get_address();
    out.size_ = impl->region.get_size();
    advise_huge_pages(out.base_, out.size_);
    out.dev_ = uint64_t(st.st_dev);
    out.ino_ = uint64_t(st.st_ino);
    out.impl_ = std::move(impl);
    return Status::ok;
  } catch (const bip::interprocess_exception &e) {
    discard();
    const int err = e.get_native_error() ? e.get_native_error() : EIO;
    if (!made && err == EEXIST) {  // it was there and could not be removed: someone else's
      detail = shm_path(shm_name) + " already exists and is not this daemon's to remove (another user created "
               "it); remove it as that user or root, or use another --segment";
      return Status::permission;
    }
    return from_errno(err, what, detail);
  } catch (const std::bad_alloc &) {
    discard();
    detail = "out of memory creating /dev/shm/" + shm_name + " of " + size;
    return Status::internal;
  }
}

Status check_adoptable(const std::string &shm_name, const Mapping::FileOwner &o, uint32_t uid, uint32_t forbidden,
                       std::string &detail) {
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", o.mode);
  if (o.uid != uid) {
    detail = shm_path(shm_name) + " belongs to uid " + std::to_string(o.uid) + ", not to this daemon's uid " +
             std::to_string(uid) + "; another user created it first. Remove it (as that user or root) or use "
             "another --segment";
    return Status::permission;
  }
  if (o.mode & forbidden) {
    detail = shm_path(shm_name) + " has mode " + mode + ", open to users the daemon never grants it to; someone " +
             "changed it. Check who, then remove it or use --reset";
    return Status::permission;
  }
  return Status::ok;
}

bool Mapping::still_named(const std::string &shm_name) const {
  struct stat st {};
  if (::stat(shm_path(shm_name).c_str(), &st) != 0) return errno != ENOENT;  // cannot tell: assume so
  return uint64_t(st.st_dev) == dev_ && uint64_t(st.st_ino) == ino_;
}

bool Mapping::discard_contents() {
  // MADV_REMOVE punches the pages out of the shmem file itself (fallocate's
  // PUNCH_HOLE), not only out of this mapping.
  return base_ && ::madvise(base_, size_, MADV_REMOVE) == 0;
}

bool Mapping::remove(const std::string &shm_name) { return bip::shared_memory_object::remove(shm_name.c_str()); }

// ---- validation ---------------------------------------------------------------
static Status wait_format(const AtomicU64 &format, uint64_t expected, int wait_ms, const char *what,
                          std::string &detail) {
  const int64_t deadline = mono_ns() + int64_t(wait_ms) * 1'000'000;
  uint64_t f = format.load(std::memory_order_acquire);
  while (f == 0 && mono_ns() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    f = format.load(std::memory_order_acquire);
  }
  if (f == 0) {
    detail = std::string(what) + " segment is not initialised yet (no ready word)";
    return Status::not_ready;
  }
  if (format_major(f) != format_major(expected)) {
    detail = std::string(what) + " segment has layout major version " + std::to_string(format_major(f)) +
             ", this library speaks " + std::to_string(format_major(expected));
    return Status::version_mismatch;
  }
  if (f != expected) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s segment format word %016llx differs from this library's %016llx", what,
                  (unsigned long long)f, (unsigned long long)expected);
    detail = buf;
    return Status::version_mismatch;
  }
  return Status::ok;
}

Status validate_state(const Mapping &m, int wait_ms, std::string &detail) {
  if (m.size() < sizeof(StateHeader)) {
    detail = "state segment is smaller than its header";
    return m.size() == 0 ? Status::not_ready : Status::corrupt_header;
  }
  const auto *h = static_cast<const StateHeader *>(m.base());
  if (h->magic != kStateMagic) {
    if (h->magic == 0) {  // creator has not written anything yet
      Status st = wait_format(h->format, kStateFormat, wait_ms, "state", detail);
      if (st != Status::ok) return st;
    }
    if (h->magic != kStateMagic) {
      detail = "state segment has a bad magic number (not a sluice segment)";
      return Status::corrupt_header;
    }
  }
  if (Status st = wait_format(h->format, kStateFormat, wait_ms, "state", detail); st != Status::ok) return st;
  if (h->segment_bytes != m.size()) {
    detail = "state segment size " + std::to_string(m.size()) + " differs from its header's " +
             std::to_string(h->segment_bytes);
    return Status::corrupt_header;
  }
  if (h->probe_window != kProbeWindow) {
    detail = "state segment header has out-of-range sizes";
    return Status::corrupt_header;
  }
  Geometry g;
  if (Status st = read_geometry(m, g, detail); st != Status::ok) return st;
  uint8_t boot[16];
  if (read_boot_id(boot) && std::memcmp(boot, h->boot_id, 16) != 0) {
    detail = "state segment was created in another boot";
    return Status::corrupt_header;
  }
  return Status::ok;
}

Status read_geometry(const Mapping &m, Geometry &g, std::string &detail) {
  if (m.size() < sizeof(StateHeader)) {
    detail = "state segment is smaller than its header";
    return Status::corrupt_header;
  }
  const auto *h = static_cast<const StateHeader *>(m.base());
  g = Geometry{};
  g.segment_bytes = m.size();  // the mapping's own size, not the header's word
  g.tier_count = h->tier_count;
  g.max_key_bytes = h->max_key_bytes;
  g.entry_stride = h->entry_stride;
  if (g.tier_count == 0 || g.tier_count > kMaxTiers || g.max_key_bytes == 0 || g.max_key_bytes > kMaxKeyBytes ||
      g.entry_stride != entry_stride_for(g.max_key_bytes)) {
    detail = "state segment header has out-of-range sizes";
    return Status::corrupt_header;
  }
  std::memcpy(g.tiers, h->tiers, sizeof(TierInfo) * g.tier_count);
  const uint64_t size = g.segment_bytes;
  uint64_t end = sizeof(StateHeader);  // where the previous table ended
  for (uint32_t i = 0; i < g.tier_count; ++i) {
    TierInfo &t = g.tiers[i];
    // Each bound is checked by subtraction from the size, so no sum can wrap
    // (slots x stride < 2^43 and slots x capacity x 8 < 2^55).
    const uint64_t entries_bytes = uint64_t(t.slots) * g.entry_stride;
    const uint64_t rings_bytes = uint64_t(t.slots) * t.capacity * 8;
    const bool ok = t.capacity != 0 && t.capacity <= kMaxCapacity && t.slots != 0 && t.entries_offset % 64 == 0 &&
                    t.rings_offset % 64 == 0 && t.entries_offset >= end && t.entries_offset <= size &&
                    entries_bytes <= size - t.entries_offset && t.rings_offset >= t.entries_offset + entries_bytes &&
                    t.rings_offset <= size && rings_bytes <= size - t.rings_offset &&
                    std::memchr(t.name, 0, kTierNameBytes) != nullptr && t.name[0] != 0;
    if (!ok) {
      detail = "state segment tier " + std::to_string(i) + " has an invalid descriptor";
      return Status::corrupt_header;
    }
    end = t.rings_offset + rings_bytes;
  }
  return Status::ok;
}

Status validate_policy(const Mapping &m, int wait_ms, std::string &detail) {
  if (m.size() < sizeof(PolicyHeader)) {
    detail = "policy segment is smaller than its header";
    return m.size() == 0 ? Status::not_ready : Status::corrupt_header;
  }
  const auto *h = static_cast<const PolicyHeader *>(m.base());
  if (h->magic != kPolicyMagic && h->magic != 0) {
    detail = "policy segment has a bad magic number";
    return Status::corrupt_header;
  }
  if (Status st = wait_format(h->format, kPolicyFormat, wait_ms, "policy", detail); st != Status::ok) return st;
  if (h->magic != kPolicyMagic) {
    detail = "policy segment has a bad magic number";
    return Status::corrupt_header;
  }
  return Status::ok;
}

// ---- formatting ---------------------------------------------------------------
void format_state(Mapping &m, const LayoutSpec &spec, const uint8_t boot_id[16]) {
  auto *h = static_cast<StateHeader *>(m.base());
  h->magic = kStateMagic;
  h->segment_bytes = m.size();
  std::memcpy(h->boot_id, boot_id, 16);
  const Geometry g = plan_geometry(spec);
  h->tier_count = g.tier_count;
  h->max_key_bytes = g.max_key_bytes;
  h->entry_stride = g.entry_stride;
  h->probe_window = kProbeWindow;
  h->created_ns = mono_ns();
  std::memcpy(h->tiers, g.tiers, sizeof(TierInfo) * g.tier_count);
  h->format.store(kStateFormat, std::memory_order_release);  // ready: last
}

static uint64_t to_micros(double dollars) { return dollars <= 0 ? 0 : uint64_t(dollars * 1e6 + 0.5); }

void format_policy(Mapping &m, const LayoutSpec &spec, const uint8_t boot_id[16]) {
  auto *h = static_cast<PolicyHeader *>(m.base());
  h->magic = kPolicyMagic;
  std::memcpy(h->boot_id, boot_id, 16);
  TierTable &t = h->tables[1];
  t.count.store(uint32_t(spec.tiers.size()), std::memory_order_relaxed);
  for (size_t i = 0; i < spec.tiers.size(); ++i) {
    TierRow &r = t.rows[i];
    r.limit.store(spec.tiers[i].limit, std::memory_order_relaxed);
    r.window_ns.store(spec.tiers[i].window_ns, std::memory_order_relaxed);
    r.revenue_micros.store(to_micros(spec.tiers[i].revenue_per_request), std::memory_order_relaxed);
    r.flags.store(spec.tiers[i].adaptive ? kTierAdaptive : 0, std::memory_order_relaxed);
  }
  t.published_ns.store(mono_ns(), std::memory_order_relaxed);
  calibrate_clock(h->clock);
  h->generation.store(1, std::memory_order_release);
  h->format.store(kPolicyFormat, std::memory_order_release);
}

bool state_matches(const Geometry &h, const LayoutSpec &spec, std::string &why) {
  if (h.tier_count != spec.tiers.size()) {
    why = "segment has " + std::to_string(h.tier_count) + " tiers, policy has " + std::to_string(spec.tiers.size());
    return false;
  }
  if (h.max_key_bytes != spec.max_key_bytes) {
    why = "segment max_key_bytes " + std::to_string(h.max_key_bytes) + " differs from policy's " +
          std::to_string(spec.max_key_bytes);
    return false;
  }
  const Geometry want = plan_geometry(spec);
  for (size_t i = 0; i < spec.tiers.size(); ++i) {
    const TierInfo &t = h.tiers[i];
    if (spec.tiers[i].name != t.name || t.capacity != want.tiers[i].capacity || t.slots != want.tiers[i].slots) {
      why = "tier " + std::to_string(i) + " (" + t.name + ") differs in name, max_limit or max_keys";
      return false;
    }
    if (t.entries_offset != want.tiers[i].entries_offset || t.rings_offset != want.tiers[i].rings_offset) {
      why = "tier " + std::to_string(i) + " (" + t.name + ") is not where this version places it";
      return false;
    }
  }
  if (h.segment_bytes != want.segment_bytes) {
    why = "segment is " + std::to_string(h.segment_bytes) + " bytes, the policy's layout takes " +
          std::to_string(want.segment_bytes);
    return false;
  }
  return true;
}

}  // namespace sluice::core
