#include "sluice/core/status.hpp"

namespace sluice::core {

const char *status_message(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::null_argument: return "a required pointer argument is NULL";
    case Status::bad_struct_size: return "the struct's size field does not match any version this library knows";
    case Status::empty_key: return "the key is empty";
    case Status::key_too_long: return "the key is longer than the segment's max_key_bytes";
    case Status::unknown_tier: return "no tier of that name in the segment";
    case Status::cost_zero: return "cost must be at least 1";
    case Status::cost_above_capacity: return "cost is above the tier's capacity (max_limit) or the per-call maximum";
    case Status::no_segment: return "the shared-memory segment does not exist (is sluiced running?)";
    case Status::version_mismatch: return "the segment's layout version differs from this library's";
    case Status::table_full: return "the tier's key table has no free slot for a new key";
    case Status::corrupt_header: return "the segment header is invalid or inconsistent";
    case Status::busy: return "the key is being reclaimed and the reclaim did not finish in time; retry";
    case Status::permission: return "permission denied opening the segment";
    case Status::not_ready: return "the segment exists but its creator has not finished initialising it";
    case Status::internal: return "internal error";
    case Status::retired: return "the segment was retired by sluiced (--reset) and must be reopened";
    case Status::name_check: return "the segment's name must be checked (an internal step, never returned)";
  }
  return "unknown status code";
}

}  // namespace sluice::core
