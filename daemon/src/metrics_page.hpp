// The /metrics page: the shared counters and tier tables (read live from the
// segment) and the loop's latest state, in Prometheus' text format.
// Every family is prefixed sluice_; docs/METRICS.md lists them.
#pragma once
#include <string>

#include "loop_state.hpp"
#include "status.hpp"

namespace sluice::daemon {

std::string render_metrics(const Status &status, const LoopState &loop);

}  // namespace sluice::daemon
