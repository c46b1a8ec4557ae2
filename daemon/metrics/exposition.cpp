#include "metrics/exposition.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace sluice::metrics {

std::string escape_label_value(const std::string &v) {
  std::string o;
  o.reserve(v.size());
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '"') o += "\\\"";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}

void Exposition::family(const std::string &name, const char *type, const char *help) {
  out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void Exposition::head(const std::string &name, Labels labels) {
  out_ += name;
  if (labels.size() == 0) return;
  out_ += '{';
  bool first = true;
  for (const auto &[k, v] : labels) {
    if (!first) out_ += ',';
    first = false;
    out_ += k;
    out_ += "=\"" + escape_label_value(v) + '"';
  }
  out_ += '}';
}

void Exposition::sample(const std::string &name, Labels labels, double value) {
  head(name, labels);
  char buf[64];
  if (std::isnan(value)) std::snprintf(buf, sizeof buf, " NaN\n");
  else if (std::isinf(value)) std::snprintf(buf, sizeof buf, value > 0 ? " +Inf\n" : " -Inf\n");
  else {
    // The shortest text that reads back as the same double: %.10g lost digits
    // (a counter of seconds or dollars above 1e10, a gauge's small changes).
    buf[0] = ' ';
    char *end = std::to_chars(buf + 1, buf + sizeof buf - 1, value).ptr;
    *end++ = '\n';
    *end = '\0';
  }
  out_ += buf;
}

void Exposition::sample(const std::string &name, Labels labels, uint64_t value) {
  head(name, labels);
  out_ += ' ' + std::to_string(value) + '\n';
}

}  // namespace sluice::metrics
