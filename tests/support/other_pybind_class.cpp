// A test-only pybind11 module with one class of its own, so a test can derive a
// Python class from it and sluice.Client together: an instance then has two
// pybind11 value slots, and Client's methods must find theirs by type.
#include <pybind11/pybind11.h>

namespace {
struct Other {
  // Bytes that would be a wild pointer if read as the Client's handle.
  long long a = 0x4141414141414141LL;
  long long b = 0x4242424242424242LL;
};
}  // namespace

PYBIND11_MODULE(_other_pybind_class, m) {
  pybind11::class_<Other>(m, "Other").def(pybind11::init<>()).def_readonly("a", &Other::a);
}
