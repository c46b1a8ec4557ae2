// A writer for the Prometheus text exposition format (version 0.0.4): HELP and
// TYPE once per family, then its samples; label values escaped.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

namespace sluice::metrics {

using Labels = std::initializer_list<std::pair<const char *, std::string>>;

class Exposition {
 public:
  // Starts a family; type is "counter", "gauge" or "histogram".
  void family(const std::string &name, const char *type, const char *help);
  void sample(const std::string &name, Labels labels, double value);
  void sample(const std::string &name, Labels labels, uint64_t value);
  const std::string &text() const { return out_; }

 private:
  void head(const std::string &name, Labels labels);
  std::string out_;
};

std::string escape_label_value(const std::string &v);

}  // namespace sluice::metrics
