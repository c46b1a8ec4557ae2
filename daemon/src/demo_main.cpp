// sluice-demo: the main job for now. Starts sluiced on the built-in policy, drives
// a burst from several C client processes (sluice-burst, over the C ABI) and prints
// what each tier admitted and denied, checked against the shared counters.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "sluice.h"
#include "status.hpp"

extern char **environ;

namespace {

struct Client {
  std::string tier;
  int keys;
  int rate;  // requests per second over all its keys
  pid_t pid = -1;
  FILE *out = nullptr;
  std::string line;
};

pid_t spawn(const std::vector<std::string> &args, int stdout_fd = -1) {
  std::vector<char *> argv;
  for (const auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stdout_fd, 1);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

long field(const std::string &line, const std::string &name) {
  const auto p = line.find(name + "=");
  return p == std::string::npos ? -1 : std::atol(line.c_str() + p + name.size() + 1);
}

}  // namespace

int main(int argc, char **argv) {
  using namespace sluice;
  int millis = 3000;
  std::string segment = "sluice-demo";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--millis" && i + 1 < argc) millis = std::max(200, std::atoi(argv[++i]));
    else if (a == "--segment" && i + 1 < argc) segment = argv[++i];
    else {
      std::cerr << "usage: sluice-demo [--millis N] [--segment NAME]\n";
      return 2;
    }
  }
  const auto dir = std::filesystem::canonical("/proc/self/exe").parent_path();
  const std::string sluiced = (dir / "sluiced").string(), burst = (dir / "sluice-burst").string();

  std::cout << "== Sluice demo: one exact ledger shared by every client process on this host ==\n"
            << "starting sluiced on the built-in policy (segment '" << segment << "')\n";
  const std::string state_dir = "/tmp/sluice-demo-state";
  const pid_t daemon =
      spawn({sluiced, "--segment", segment, "--reset", "--log-level", "error", "--state-dir", state_dir});
  if (daemon < 0) {
    std::cerr << "cannot start " << sluiced << "\n";
    return 1;
  }
  sluice_client *probe = nullptr;
  int rc = SLUICE_ENOSEGMENT;
  for (int i = 0; i < 100 && rc != SLUICE_OK; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    rc = sluice_open(segment.c_str(), &probe);
  }
  if (rc != SLUICE_OK) {
    std::cerr << "sluiced did not come up: " << sluice_strerror(rc) << "\n";
    kill(daemon, SIGTERM);
    return 1;
  }
  sluice_close(probe);

  // Two processes per tier share each tier's keys, each offering about twice the
  // per-key limit: a per-process limiter would admit twice what Sluice does.
  std::vector<Client> clients;
  for (const auto &[tier, keys, rate] : {std::tuple{"enterprise", 4, 60}, {"pro", 4, 32}, {"free", 8, 24}})
    for (int copy = 0; copy < 2; ++copy) {
      Client c;
      c.tier = tier;
      c.keys = keys;
      c.rate = rate;
      clients.push_back(c);
    }
  std::cout << "driving " << clients.size() << " client processes (C, via libsluice) for " << millis << " ms\n";
  for (auto &c : clients) {
    int fds[2];
    if (pipe(fds) != 0) return 1;
    c.pid = spawn({burst, "--segment", segment, "--tier", c.tier, "--keys", std::to_string(c.keys), "--rate",
                   std::to_string(c.rate), "--millis", std::to_string(millis), "--prefix", c.tier + "-customer"},
                  fds[1]);
    close(fds[1]);
    c.out = fdopen(fds[0], "r");
  }
  int failures = 0;
  for (auto &c : clients) {
    char buf[512] = {};
    if (c.out && std::fgets(buf, sizeof buf, c.out)) c.line = buf;
    if (c.out) std::fclose(c.out);
    int st = 0;
    waitpid(c.pid, &st, 0);
    failures += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  daemon::Status status;
  std::string error;
  const bool have_status = daemon::read_status(segment, status, error);
  kill(daemon, SIGTERM);
  int dst = 0;
  waitpid(daemon, &dst, 0);

  std::map<std::string, std::array<long, 3>> by_tier;  // requests, admitted, denied
  for (const auto &c : clients) {
    auto &t = by_tier[c.tier];
    t[0] += field(c.line, "requests");
    t[1] += field(c.line, "admitted");
    t[2] += field(c.line, "denied");
  }
  std::printf("\n%-12s %7s %9s %9s %8s %16s %14s\n", "tier", "limit", "requests", "admitted", "denied",
              "admitted/key/s", "shared ledger");
  bool consistent = have_status;
  for (const auto &t : have_status ? status.tiers : std::vector<daemon::TierStatus>{}) {
    const auto &c = by_tier[t.name];
    const int keys = t.name == "free" ? 8 : 4;
    const double per_key = double(c[1]) / keys / (millis / 1000.0);
    consistent &= uint64_t(c[1]) == t.counters.admitted;
    std::printf("%-12s %5u/s %9ld %9ld %8ld %16.2f %14llu\n", t.name.c_str(), t.limit, c[0], c[1], c[2], per_key,
                (unsigned long long)t.counters.admitted);
  }
  if (!have_status) std::cerr << "cannot read the segment: " << error << "\n";
  std::printf("\nEach key got at most its tier's limit per window although two processes shared it;\n"
              "the clients' own counts %s the daemon's shared counters.\n",
              consistent ? "match" : "DO NOT match");
  std::printf("sluiced stopped %s.\n", WIFEXITED(dst) && WEXITSTATUS(dst) == 0 ? "cleanly" : "with an error");
  return failures || !consistent ? 1 : 0;
}
