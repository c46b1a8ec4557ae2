// Control-socket commands: parsing a request line, running it against the policy
// engine with the caller's credentials, and rendering the reply.
// Reply format: first line "ok" or "error", then the body.
#pragma once
#include <string>

#include "control.hpp"
#include "loop_state.hpp"
#include "policy_loop/engine.hpp"

namespace sluice::daemon {

std::string handle_command(policy_loop::PolicyEngine &engine, const std::string &line, const Peer &peer);

std::string json_escape(const std::string &s);
// The policy loop's latest view: per-tier rates, forecast, surge level.
std::string snapshot_json(const policy_loop::PolicyEngine &engine);
// `overview`: the snapshot plus pending approvals, governance counts and the
// advisor's state (what `sluicectl top` shows).
std::string overview_json(const LoopState &loop);

}  // namespace sluice::daemon
