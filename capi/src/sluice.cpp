// libsluice: the C ABI over core::Ledger. Validates every argument, maps core
// statuses 1:1 to SLUICE_E*, and lets no exception out.
#define SLUICE_BUILDING_LIBRARY 1
#include "sluice.h"

#include <cstddef>
#include <new>
#include <string>

#include "sluice/core/ledger_handle.hpp"

using sluice::core::Decision;
using sluice::core::LedgerHandle;
using sluice::core::Status;

struct sluice_client {
  std::unique_ptr<LedgerHandle> handle;  // follows the segment name across a sluiced --reset
};

static_assert(int(Status::null_argument) == SLUICE_ENULL && int(Status::bad_struct_size) == SLUICE_ESIZE &&
              int(Status::empty_key) == SLUICE_EEMPTYKEY && int(Status::key_too_long) == SLUICE_EKEYTOOLONG &&
              int(Status::unknown_tier) == SLUICE_ETIER && int(Status::cost_zero) == SLUICE_ECOSTZERO &&
              int(Status::cost_above_capacity) == SLUICE_ECOST && int(Status::no_segment) == SLUICE_ENOSEGMENT &&
              int(Status::version_mismatch) == SLUICE_EVERSION && int(Status::table_full) == SLUICE_EFULL &&
              int(Status::corrupt_header) == SLUICE_ECORRUPT && int(Status::busy) == SLUICE_EBUSY &&
              int(Status::permission) == SLUICE_EPERM && int(Status::not_ready) == SLUICE_ENOTREADY &&
              int(Status::internal) == SLUICE_EINTERNAL);
static_assert(int(sluice::core::Reason::window_full) == SLUICE_REASON_WINDOW_FULL &&
              int(sluice::core::Reason::cost_above_limit) == SLUICE_REASON_COST_ABOVE_LIMIT &&
              int(sluice::core::Reason::tier_closed) == SLUICE_REASON_TIER_CLOSED);
static_assert(sizeof(sluice_decision) == 48, "sluice_decision v1 layout is frozen");

namespace {

constexpr uint32_t kDecisionV1Size = sizeof(sluice_decision);

int decide(sluice_client *client, const char *tier, const char *key, size_t key_len, uint32_t cost,
           sluice_decision *out, bool record) noexcept {
  if (!out) return SLUICE_ENULL;
  // A caller that reuses one struct must never read the last call's "allowed"
  // after an error (sluice.h: nothing is ever reported as allowed).
  if (out->size >= offsetof(sluice_decision, allowed) + sizeof out->allowed) out->allowed = 0;
  if (!client || !tier || !key) return SLUICE_ENULL;
  if (out->size != kDecisionV1Size) return SLUICE_ESIZE;
  try {
    Decision d;
    std::string detail;
    const Status s = client->handle->decide(tier, key, key_len, cost, record, d, detail);
    if (s != Status::ok) return int(s);
    out->allowed = d.allowed ? 1 : 0;
    out->limit = d.limit;
    out->remaining = d.remaining;
    out->window_ns = d.window_ns;
    out->retry_after_ns = d.retry_after_ns;
    out->reset_after_ns = d.reset_after_ns;
    out->tier = d.tier;
    out->reason = int32_t(d.reason);
    return SLUICE_OK;
  } catch (...) {
    return SLUICE_EINTERNAL;
  }
}

}  // namespace

extern "C" {

int sluice_open(const char *segment, sluice_client **out) {
  if (!out) return SLUICE_ENULL;
  *out = nullptr;
  try {
    auto *c = new (std::nothrow) sluice_client();
    if (!c) return SLUICE_EINTERNAL;
    std::string detail;
    const Status s = LedgerHandle::open(sluice::core::resolve_segment_name(segment), c->handle, detail);
    if (s != Status::ok) {
      delete c;
      return int(s);
    }
    *out = c;
    return SLUICE_OK;
  } catch (...) {
    return SLUICE_EINTERNAL;
  }
}

void sluice_close(sluice_client *client) { delete client; }

int sluice_acquire(sluice_client *client, const char *tier, const char *key, size_t key_len, uint32_t cost,
                   sluice_decision *out) {
  return decide(client, tier, key, key_len, cost, out, true);
}

int sluice_peek(sluice_client *client, const char *tier, const char *key, size_t key_len, uint32_t cost,
                sluice_decision *out) {
  return decide(client, tier, key, key_len, cost, out, false);
}

const char *sluice_strerror(int status) { return sluice::core::status_message(Status(status)); }

uint32_t sluice_abi_version(void) { return SLUICE_ABI_VERSION; }

}  // extern "C"
