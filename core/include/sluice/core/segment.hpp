// Creating, sizing, mapping and validating the two segments (Boost.Interprocess is
// used for exactly this, never for locking). Names: "<name>.state" (0660, rw for
// clients) and "<name>.policy" (0640, mapped read-only by clients).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sluice/core/layout.hpp"
#include "sluice/core/status.hpp"

namespace sluice::core {

struct TierSpec {
  std::string name;
  uint32_t capacity = 1;      // ring slots per key (the tier's max_limit)
  uint32_t limit = 1;
  int64_t window_ns = 1'000'000'000;
  double revenue_per_request = 0;
  bool adaptive = true;
};

struct LayoutSpec {
  std::vector<TierSpec> tiers;
  uint32_t max_keys = 100000;   // per tier
  uint32_t max_key_bytes = 64;
  bool reserve_memory = true;   // allocate the state's pages at creation (Mapping::create)
};

std::string state_segment_name(const std::string &name);
// Where shm_open keeps an object of that name: /dev/shm/<shm_name>.
inline std::string shm_path(const std::string &shm_name) { return "/dev/shm/" + shm_name; }
std::string policy_segment_name(const std::string &name);
// The segment name from an argument, else $SLUICE_SEGMENT, else "sluice".
std::string resolve_segment_name(const char *name);
bool valid_segment_name(const std::string &name);
// The huge= option /dev/shm is mounted with ("never" when absent, "" when /dev/shm
// is not in /proc/mounts). Mappings always advise huge pages; only "advise",
// "within_size" and "always" let the kernel use them.
std::string shm_huge_mode();
// True for the modes under which the kernel may put an advised mapping on huge pages.
bool shm_huge_pages_allowed(const std::string &mode);
// Bytes /dev/shm can still allocate (UINT64_MAX if it cannot be told).
uint64_t shm_free_bytes();
// Bytes a state segment for this spec takes (sparse on tmpfs until touched).
uint64_t state_segment_bytes(const LayoutSpec &spec);
bool read_boot_id(uint8_t out[16]);

// One mapped shared-memory object. Move-only; unmaps on destruction.
class Mapping {
 public:
  Mapping();
  ~Mapping();
  Mapping(Mapping &&) noexcept;
  Mapping &operator=(Mapping &&) noexcept;
  void *base() const { return base_; }
  uint64_t size() const { return size_; }
  explicit operator bool() const { return base_ != nullptr; }
  // Is /dev/shm/<shm_name> still the object this maps? (false once it was unlinked,
  // or replaced by another object of that name)
  bool still_named(const std::string &shm_name) const;
  // Frees the object's memory (tmpfs pages) for every process that maps it; they
  // read zeros after. Only for an object no one may use any more (a retired state
  // segment): its pages would otherwise stay allocated until every mapper unmaps it.
  // Needs a writable mapping. False when the kernel refuses.
  bool discard_contents();

  // `owner`, when given, gets the object's owner uid and mode bits, from the same
  // descriptor that was mapped (no window for a swap between check and use).
  struct FileOwner {
    uint32_t uid = 0;
    uint32_t mode = 0;
  };
  static Status open(const std::string &shm_name, bool writable, Mapping &out, std::string &detail,
                     FileOwner *owner = nullptr);
  // reserve: allocate every page now (fallocate), so a full /dev/shm fails this
  // call rather than a later first touch (SIGBUS).
  static Status create(const std::string &shm_name, uint64_t bytes, unsigned mode, Mapping &out,
                       std::string &detail, bool reserve = true);
  static bool remove(const std::string &shm_name);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  void *base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t dev_ = 0, ino_ = 0;  // the object mapped, from fstat at open/create
};

// Checks magic, format, size and every offset of a mapped state segment. Waits up to
// `wait_ms` for the creator's ready (format) word.
Status validate_state(const Mapping &m, int wait_ms, std::string &detail);
Status validate_policy(const Mapping &m, int wait_ms, std::string &detail);

// Lays out a fresh state/policy segment (zeroed memory) and publishes the format
// word last. The policy segment gets the spec's limits as generation 1.
void format_state(Mapping &m, const LayoutSpec &spec, const uint8_t boot_id[16]);
void format_policy(Mapping &m, const LayoutSpec &spec, const uint8_t boot_id[16]);

// Is a mapped object safe for a daemon running as `uid` to adopt? It must be that
// uid's own and writable by no one it did not mean to (`forbidden` mode bits).
// /dev/shm is world-writable: another local user can create the names first.
Status check_adoptable(const std::string &shm_name, const Mapping::FileOwner &o, uint32_t uid, uint32_t forbidden,
                       std::string &detail);

// A private copy of the layout a state header describes. The state segment is
// writable by every client, so nothing that sizes or places a table (tier count,
// offsets, slots, capacity) is ever read from it after this copy is taken: a
// process that re-read it could be steered outside the mapping.
struct Geometry {
  uint64_t segment_bytes = 0;
  uint32_t tier_count = 0;
  uint32_t max_key_bytes = 0;
  uint32_t entry_stride = 0;
  TierInfo tiers[kMaxTiers] = {};
};
// Copies the layout out of a mapped state and checks the copy: every tier's tables
// inside the mapping, after the header, in order, without overlap (in arithmetic
// that cannot wrap). validate_state runs the same check.
Status read_geometry(const Mapping &m, Geometry &out, std::string &detail);
// The layout create gives a spec (format_state writes it).
Geometry plan_geometry(const LayoutSpec &spec);

// Does an existing state segment have exactly the layout this spec makes? (re-attach)
bool state_matches(const Geometry &g, const LayoutSpec &spec, std::string &why);

}  // namespace sluice::core
