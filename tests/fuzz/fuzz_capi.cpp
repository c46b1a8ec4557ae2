// The C ABI against a model, on arbitrary call sequences. Each input is a fresh
// segment pair and a list of calls (acquire, peek, bad arguments, made-up tiers).
// Windows are an hour long, so nothing expires during a run and the model is
// exact: every call must give the model's status, and every decision the model's
// allowed, reason, remaining and limit, with times in range. An error never says
// allowed. This checks invariant 1 (never more than the limit) and its converse
// (never a denial with room left) on sequences no hand-written test lists.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "fuzz_check.hpp"
#include "sluice.h"
#include "sluice/core/owner.hpp"
#include "sluice/core/key_table.hpp"
#include "sluice/core/segment.hpp"

namespace {

using namespace sluice;

constexpr int64_t kWindowNs = 3'600'000'000'000;  // 1 h
constexpr uint32_t kMaxKeyBytes = 16;
constexpr uint32_t kTableSlots = 16;  // max_keys 8 gets the table's minimum, 16 slots

struct Tier {
  const char *name;
  uint32_t limit, capacity;
};
constexpr Tier kTiers[] = {{"pro", 3, 8}, {"free", 1, 2}, {"big", 40, 64}};
constexpr int kTierCount = 3;

core::LayoutSpec layout() {
  core::LayoutSpec s;
  for (const Tier &t : kTiers) {
    core::TierSpec ts;
    ts.name = t.name;
    ts.limit = t.limit;
    ts.capacity = t.capacity;
    ts.window_ns = kWindowNs;
    s.tiers.push_back(ts);
  }
  s.max_keys = 8;
  s.max_key_bytes = kMaxKeyBytes;
  return s;
}

struct Input {
  const uint8_t *p, *end;
  bool empty() const { return p == end; }
  uint8_t byte() { return p < end ? *p++ : 0; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | byte();
    return v;
  }
};

struct Model {
  std::map<std::pair<int, std::string>, uint32_t> units;  // (tier, key) -> units admitted
  std::set<std::string> keys[kTierCount];
};

int tier_index(const char *name) {
  for (int i = 0; i < kTierCount; ++i)
    if (std::strcmp(name, kTiers[i].name) == 0) return i;
  return -1;
}

void check_decision(const sluice_decision &d, int t, bool allowed, int32_t reason, uint32_t remaining) {
  FUZZ_CHECK(d.allowed == (allowed ? 1u : 0u), "allowed %u, the model says %d", d.allowed, allowed);
  FUZZ_CHECK(d.reason == reason, "reason %d, the model says %d", d.reason, reason);
  FUZZ_CHECK(d.remaining == remaining, "remaining %u, the model says %u", d.remaining, remaining);
  FUZZ_CHECK(d.limit == kTiers[t].limit && d.tier == uint32_t(t) && d.window_ns == kWindowNs, "limit/tier/window");
  if (allowed)
    FUZZ_CHECK(d.retry_after_ns == 0, "allowed with retry_after %lld", (long long)d.retry_after_ns);
  else
    FUZZ_CHECK(d.retry_after_ns > 0 && d.retry_after_ns <= kWindowNs, "retry_after %lld", (long long)d.retry_after_ns);
  FUZZ_CHECK(d.reset_after_ns >= 0 && d.reset_after_ns <= kWindowNs, "reset_after %lld", (long long)d.reset_after_ns);
}

// One call of the ABI with the model's expectation.
void one_call(sluice_client *c, Model &m, Input &in) {
  const uint8_t op = in.byte();
  const uint8_t kind = op % 8;
  const bool record = kind != 4 && kind != 5;
  char tier_buf[12] = {0};
  int t = in.byte() % (kTierCount + 1);
  if (kind == 6) {  // a tier name from the input (a NUL ends it)
    for (size_t i = 0; i + 1 < sizeof tier_buf; ++i) tier_buf[i] = char(in.byte());
    t = tier_index(tier_buf);
  } else {
    std::strcpy(tier_buf, t < kTierCount ? kTiers[t].name : "pro ");
    if (t == kTierCount) t = -1;
  }
  const uint8_t len_byte = in.byte();
  const size_t key_len = len_byte % (kMaxKeyBytes + 3);
  std::string key(key_len, '\0');
  for (char &ch : key) ch = char(len_byte & 0x80 ? 'a' + in.byte() % 3 : in.byte());  // few keys, or any bytes
  const uint32_t cost = op & 0x80 ? in.u32() : in.byte() % 70;

  sluice_decision d;
  std::memset(&d, 0xA5, sizeof d);
  d.size = sizeof d;
  d.allowed = 1;  // must be cleared on any error
  int want = 0;
  int rc;
  if (kind == 7) {  // bad arguments: nothing may change
    const uint8_t which = in.byte() % 5;
    if (which == 4) d.size = in.u32();
    want = which < 4 ? SLUICE_ENULL : (d.size == sizeof d ? 0 : SLUICE_ESIZE);
    if (want == 0) d.size = 0;  // a right size by chance: make it wrong
    if (want == 0) want = SLUICE_ESIZE;
    rc = sluice_acquire(which == 0 ? nullptr : c, which == 1 ? nullptr : tier_buf, which == 2 ? nullptr : key.data(),
                        key_len, cost, which == 3 ? nullptr : &d);
    FUZZ_CHECK(rc == want, "bad arguments (%u): status %d, want %d", which, rc, want);
    // allowed is cleared only where the caller's size says the field exists.
    if (which != 3 && d.size >= offsetof(sluice_decision, allowed) + sizeof d.allowed)
      FUZZ_CHECK(d.allowed == 0, "an error left allowed set");
    else if (which != 3)
      FUZZ_CHECK(d.allowed == 1, "wrote allowed past the caller's size %u", d.size);
    return;
  }
  const auto entry = std::make_pair(t, key);
  const bool known = t >= 0 && m.keys[t].count(key);
  if (t < 0) want = SLUICE_ETIER;
  else if (key_len == 0) want = SLUICE_EEMPTYKEY;
  else if (key_len > kMaxKeyBytes) want = SLUICE_EKEYTOOLONG;
  else if (cost == 0) want = SLUICE_ECOSTZERO;
  else if (cost > kTiers[t].capacity) want = SLUICE_ECOST;
  else if (record && !known && m.keys[t].size() == kTableSlots) want = SLUICE_EFULL;

  rc = record ? sluice_acquire(c, tier_buf, key.data(), key_len, cost, &d)
              : sluice_peek(c, tier_buf, key.data(), key_len, cost, &d);
  FUZZ_CHECK(rc == want, "status %d (%s), the model says %d; tier %d, key_len %zu, cost %u", rc, sluice_strerror(rc),
             want, t, key_len, cost);
  FUZZ_CHECK(sluice_strerror(rc) && *sluice_strerror(rc), "no message for %d", rc);
  if (rc != 0) {
    FUZZ_CHECK(d.allowed == 0, "an error left allowed set");
    return;
  }
  if (record) m.keys[t].insert(key);
  const uint32_t limit = kTiers[t].limit, used = known ? m.units[entry] : 0;
  if (cost > limit) {
    check_decision(d, t, false, SLUICE_REASON_COST_ABOVE_LIMIT, limit - std::min(limit, used));
  } else if (used + cost > limit) {
    check_decision(d, t, false, SLUICE_REASON_WINDOW_FULL, limit - used);
  } else {
    check_decision(d, t, true, SLUICE_REASON_ALLOWED, limit - used - cost);
    if (record) m.units[entry] = used + cost;
  }
}


// One segment pair for the process (making one calibrates the clock: 10 ms). Each
// input starts from a fresh ledger: zeroed entries and rings are exactly what a new
// pair holds (every slot empty, every ring empty at generation 0).
struct Fixture {
  std::string name = "sluicefuzz-" + std::to_string(getpid());
  std::unique_ptr<core::Owner> owner;
  sluice_client *client = nullptr;
  Fixture() {
    bool created = false;
    std::string detail;
    FUZZ_CHECK(core::Owner::create_or_attach(name, layout(), true, owner, created, detail) == core::Status::ok, "%s",
               detail.c_str());
    FUZZ_CHECK(sluice_open(name.c_str(), &client) == SLUICE_OK, "open");
  }
  ~Fixture() {
    sluice_close(client);
    owner.reset();
    core::Owner::remove(name);
  }
  void wipe() {
    for (uint32_t i = 0; i < owner->tier_count(); ++i) {
      const core::TierView tv = owner->tier_view(i);
      std::memset(static_cast<void *>(tv.entries), 0, size_t(tv.slots) * tv.stride);
      std::memset(static_cast<void *>(tv.rings), 0, size_t(tv.slots) * tv.capacity * sizeof(core::AtomicU64));
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static Fixture f;
  f.wipe();
  Model m;
  Input in{data, data + size};
  for (int calls = 0; calls < 256 && !in.empty(); ++calls) one_call(f.client, m, in);
  return 0;
}
