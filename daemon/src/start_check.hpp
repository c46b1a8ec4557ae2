// sluiced --check: what a start with these options would do, found without doing
// any of it (nginx -t): no lock taken, no segment created, removed or written, no
// audit store opened, no port bound. Run before restarting sluiced on a changed
// policy, it says whether the pair re-attaches (keys and counters kept) or needs
// --reset (which wipes them), and why a start would fail.
#pragma once
#include <string>

#include "daemon.hpp"

namespace sluice::daemon {

struct StartCheck {
  // none: a start would go ahead (a sluiced running on the segment now is reported,
  // not counted: the check is for the start after it stops). Else what kind of
  // failure the start would be, as Daemon::start names them.
  Daemon::StartFailure failure = Daemon::StartFailure::none;
  std::string report;  // lines for a person, the verdict last
};

StartCheck check_start(const Options &opt);

}  // namespace sluice::daemon
