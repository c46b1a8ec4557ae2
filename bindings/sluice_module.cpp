// _sluice: the pybind11 extension over the C ABI (bindings -> capi). The hot path
// takes str/bytes without copies (str's cached UTF-8), releases nothing (the call
// is ~tens of ns, cheaper than dropping the GIL) and raises one exception class
// per status code, imported from sluice.errors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>

#include <cmath>
#include <cstdio>
#include <string>

#include "sluice.h"

namespace py = pybind11;

namespace {

PyObject *g_error_for = nullptr;  // sluice.errors.error_for

[[noreturn]] void raise_status(int status) {
  py::object err = py::reinterpret_borrow<py::object>(g_error_for)(status, sluice_strerror(status));
  PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(err.ptr())), err.ptr());
  throw py::error_already_set();
}

// Bytes of a str (UTF-8, cached by CPython) or bytes-like key without copying.
struct KeyView {
  const char *data = nullptr;
  Py_ssize_t len = 0;
  py::buffer_info buf;  // keeps a buffer alive for bytearray/memoryview
};

void key_view(py::handle key, KeyView &out) {
  if (PyUnicode_Check(key.ptr())) {
    out.data = PyUnicode_AsUTF8AndSize(key.ptr(), &out.len);
    if (!out.data) throw py::error_already_set();
  } else if (PyBytes_Check(key.ptr())) {
    out.data = PyBytes_AS_STRING(key.ptr());
    out.len = PyBytes_GET_SIZE(key.ptr());
  } else if (PyObject_CheckBuffer(key.ptr())) {
    out.buf = py::reinterpret_borrow<py::buffer>(key).request();
    out.data = static_cast<const char *>(out.buf.ptr);
    out.len = out.buf.size * out.buf.itemsize;
  } else {
    throw py::type_error(std::string("key must be str or bytes, not ") + Py_TYPE(key.ptr())->tp_name);
  }
}

const char *reason_name(int32_t r) {
  switch (r) {
    case SLUICE_REASON_ALLOWED: return "allowed";
    case SLUICE_REASON_WINDOW_FULL: return "window_full";
    case SLUICE_REASON_COST_ABOVE_LIMIT: return "cost_above_limit";
    case SLUICE_REASON_TIER_CLOSED: return "tier_closed";
  }
  return "unknown";
}

// OpenAI-style duration: "20ms", "1s", "1.5s", "6m0s".
std::string go_duration(double seconds) {
  char buf[64];
  if (seconds < 1.0) {
    std::snprintf(buf, sizeof buf, "%lldms", (long long)std::ceil(seconds * 1000.0));
  } else if (seconds < 60.0) {
    std::snprintf(buf, sizeof buf, "%.3f", seconds);
    std::string s = buf;
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
    return s + "s";
  } else {
    const long long total = (long long)std::ceil(seconds);
    if (total >= 3600) std::snprintf(buf, sizeof buf, "%lldh%lldm%llds", total / 3600, total % 3600 / 60, total % 60);
    else std::snprintf(buf, sizeof buf, "%lldm%llds", total / 60, total % 60);
  }
  return buf;
}

struct Decision {
  bool allowed;
  uint32_t limit, remaining, tier_index;
  double retry_after, reset_after, window;
  int32_t reason_code;
  py::str tier;

  py::dict headers() const {
    py::dict h;
    const long long reset_s = (long long)std::ceil(reset_after);
    if (!allowed) h["Retry-After"] = std::to_string((long long)std::max(1.0, std::ceil(retry_after)));
    h["RateLimit-Limit"] = std::to_string(limit);
    h["RateLimit-Remaining"] = std::to_string(remaining);
    h["RateLimit-Reset"] = std::to_string(reset_s);
    h["x-ratelimit-limit-requests"] = std::to_string(limit);
    h["x-ratelimit-remaining-requests"] = std::to_string(remaining);
    h["x-ratelimit-reset-requests"] = go_duration(allowed ? reset_after : retry_after);
    return h;
  }
};

class Client {
 public:
  explicit Client(std::optional<std::string> segment) {
    const int rc = sluice_open(segment ? segment->c_str() : nullptr, &c_);
    if (rc != SLUICE_OK) raise_status(rc);
  }
  ~Client() { sluice_close(c_); }
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;

  Decision decide(py::handle key, py::str tier, uint32_t cost, bool record) {
    if (!c_) throw py::value_error("the client is closed");
    KeyView k;
    key_view(key, k);
    Py_ssize_t tier_len = 0;
    const char *tier_s = PyUnicode_AsUTF8AndSize(tier.ptr(), &tier_len);
    if (!tier_s) throw py::error_already_set();
    if (std::strlen(tier_s) != size_t(tier_len)) raise_status(SLUICE_ETIER);  // embedded NUL
    sluice_decision d;
    d.size = sizeof d;
    const int rc = record ? sluice_acquire(c_, tier_s, k.data ? k.data : "", size_t(k.len), cost, &d)
                          : sluice_peek(c_, tier_s, k.data ? k.data : "", size_t(k.len), cost, &d);
    if (rc != SLUICE_OK) raise_status(rc);
    return Decision{d.allowed != 0, d.limit, d.remaining, d.tier, double(d.retry_after_ns) / 1e9,
                    double(d.reset_after_ns) / 1e9, double(d.window_ns) / 1e9, d.reason, tier};
  }
  void close() {
    sluice_close(c_);
    c_ = nullptr;
  }
  bool closed() const { return c_ == nullptr; }

 private:
  sluice_client *c_ = nullptr;
};

}  // namespace

PYBIND11_MODULE(_sluice, m) {
  m.doc() = "Private extension of the sluice package (C ABI bindings). Use `import sluice`.";
  g_error_for = py::object(py::module_::import("sluice.errors").attr("error_for")).release().ptr();
  m.attr("ABI_VERSION") = sluice_abi_version();

  py::class_<Decision>(m, "Decision", "The outcome of one admission check.")
      .def_readonly("allowed", &Decision::allowed, "True if admitted.")
      .def_readonly("limit", &Decision::limit, "Units per window that applied.")
      .def_readonly("remaining", &Decision::remaining, "Units left in the window after this call.")
      .def_readonly("retry_after", &Decision::retry_after, "Seconds until a retry can succeed (0 if allowed).")
      .def_readonly("reset_after", &Decision::reset_after, "Seconds until the window holds no admission.")
      .def_readonly("window", &Decision::window, "Window length in seconds.")
      .def_readonly("tier", &Decision::tier, "Tier name.")
      .def_readonly("tier_index", &Decision::tier_index)
      .def_property_readonly("reason", [](const Decision &d) { return reason_name(d.reason_code); },
                             "'allowed', 'window_full', 'cost_above_limit' or 'tier_closed'.")
      .def_readonly("reason_code", &Decision::reason_code)
      .def("headers", &Decision::headers,
           "Response headers: Retry-After (when denied), IETF RateLimit-Limit/-Remaining/-Reset and "
           "OpenAI-style x-ratelimit-limit-requests/-remaining-requests/-reset-requests.")
      .def("__bool__", [](const Decision &d) { return d.allowed; })
      .def("__repr__", [](const Decision &d) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "Decision(allowed=%s, limit=%u, remaining=%u, retry_after=%.3f, reset_after=%.3f, "
                      "tier='%s', reason='%s')",
                      d.allowed ? "True" : "False", d.limit, d.remaining, d.retry_after, d.reset_after,
                      std::string(py::str(d.tier)).c_str(), reason_name(d.reason_code));
        return std::string(buf);
      });

  py::class_<Client>(m, "Client",
                     "A handle on the host's Sluice segment. Thread-safe; share one per process.")
      .def(py::init<std::optional<std::string>>(), py::arg("segment") = py::none(),
           "Open the segment pair (None: $SLUICE_SEGMENT or 'sluice').")
      .def(
          "acquire",
          [](Client &c, py::handle key, py::str tier, uint32_t cost) { return c.decide(key, tier, cost, true); },
          py::arg("key"), py::arg("tier"), py::arg("cost") = 1,
          "Check and record `cost` units for (tier, key), all or nothing. Raises a SluiceError on bad input.")
      .def(
          "peek",
          [](Client &c, py::handle key, py::str tier, uint32_t cost) { return c.decide(key, tier, cost, false); },
          py::arg("key"), py::arg("tier"), py::arg("cost") = 1, "The decision acquire() would make; records nothing.")
      .def("close", &Client::close, "Unmap the segment. Further calls raise ValueError.")
      .def_property_readonly("closed", &Client::closed)
      .def("__enter__", [](Client &c) -> Client & { return c; }, py::return_value_policy::reference)
      .def("__exit__", [](Client &c, py::args) { c.close(); });
}
