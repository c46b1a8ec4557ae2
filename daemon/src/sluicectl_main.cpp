// sluicectl [--segment NAME] status [--json]
#include <cstring>
#include <iostream>

#include "status.hpp"

int main(int argc, char **argv) {
  using namespace sluice;
  std::string segment = core::resolve_segment_name(nullptr);
  std::string command;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--segment" && i + 1 < argc) segment = argv[++i];
    else if (a == "--json") json = true;
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: sluicectl [--segment NAME] status [--json]\n";
      return 0;
    } else if (command.empty() && a[0] != '-') command = a;
    else {
      std::cerr << "sluicectl: unknown argument '" << a << "'\n";
      return 2;
    }
  }
  if (command != "status") {
    std::cerr << "sluicectl: " << (command.empty() ? "missing command" : "unknown command '" + command + "'")
              << " (commands: status)\n";
    return 2;
  }
  daemon::Status st;
  std::string error;
  if (!daemon::read_status(segment, st, error)) {
    std::cerr << "sluicectl: segment '" << segment << "': " << error << "\n";
    return 1;
  }
  std::cout << (json ? daemon::render_status_json(st) + "\n" : daemon::render_status_text(st));
  return 0;
}
