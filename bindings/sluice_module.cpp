// _sluice: the pybind11 extension over the C ABI (bindings -> capi).
//
// pybind11 defines the module and the Client class (construction, close, context
// manager). The two hot methods, acquire and peek, and the Decision they return
// are plain CPython (vectorcall + a small fixed-layout type): pybind11's argument
// dispatch and object construction cost ~300 ns a call here, several times the
// C call itself. Keys are read without copies (str's cached UTF-8, bytes, any
// buffer); the GIL is kept (the call is shorter than releasing it); every error
// raises its own class from sluice.errors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "sluice.h"

namespace py = pybind11;

namespace {

PyObject *g_error_for = nullptr;  // sluice.errors.error_for, looked up at the first error

// Looked up lazily: importing sluice.errors while _sluice initialises would
// import the sluice package, which imports this half-made module.
PyObject *error_for() {
  if (!g_error_for) {
    PyObject *mod = PyImport_ImportModule("sluice.errors");
    if (!mod) return nullptr;
    g_error_for = PyObject_GetAttrString(mod, "error_for");
    Py_DECREF(mod);
  }
  return g_error_for;
}

PyObject *set_status_error(int status) {
  PyObject *make = error_for();
  if (!make) return nullptr;  // the import's own error is raised
  PyObject *err = PyObject_CallFunction(make, "is", status, sluice_strerror(status));
  if (err) {
    PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(err)), err);
    Py_DECREF(err);
  }
  return nullptr;
}

[[noreturn]] void raise_status(int status) {
  set_status_error(status);
  throw py::error_already_set();
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

// OpenAI-style duration: "20ms", "1s", "1.5s", "6m0s". Rounded up to whole ms
// first, then the unit chosen, so 59.9996 s is "1m0s" and 0.9996 s is "1s".
std::string go_duration(int64_t ns) {
  const long long ms = ns <= 0 ? 0 : (ns + 999999) / 1000000;
  char buf[64];
  if (ms < 1000) {
    std::snprintf(buf, sizeof buf, "%lldms", ms);
  } else if (ms < 60000) {
    std::snprintf(buf, sizeof buf, "%lld.%03lld", ms / 1000, ms % 1000);
    std::string s = buf;
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
    return s + "s";
  } else {
    const long long total = (ms + 999) / 1000;
    if (total >= 3600) std::snprintf(buf, sizeof buf, "%lldh%lldm%llds", total / 3600, total % 3600 / 60, total % 60);
    else std::snprintf(buf, sizeof buf, "%lldm%llds", total / 60, total % 60);
  }
  return buf;
}

// Whole seconds, rounded up (never negative).
long long ceil_secs(int64_t ns) { return ns <= 0 ? 0 : (ns + 999999999) / 1000000000; }

// ---- Decision: a fixed-layout object; attributes are made on access -----------
struct DecisionObject {
  PyObject_HEAD
  sluice_decision d;
  PyObject *tier;  // the tier name the caller passed (a str)
};
PyTypeObject *g_decision_type = nullptr;

double secs(int64_t ns) { return double(ns) / 1e9; }

PyObject *d_allowed(PyObject *o, void *) { return PyBool_FromLong(reinterpret_cast<DecisionObject *>(o)->d.allowed); }
PyObject *d_limit(PyObject *o, void *) { return PyLong_FromUnsignedLong(reinterpret_cast<DecisionObject *>(o)->d.limit); }
PyObject *d_remaining(PyObject *o, void *) {
  return PyLong_FromUnsignedLong(reinterpret_cast<DecisionObject *>(o)->d.remaining);
}
PyObject *d_retry(PyObject *o, void *) {
  return PyFloat_FromDouble(secs(reinterpret_cast<DecisionObject *>(o)->d.retry_after_ns));
}
PyObject *d_reset(PyObject *o, void *) {
  return PyFloat_FromDouble(secs(reinterpret_cast<DecisionObject *>(o)->d.reset_after_ns));
}
PyObject *d_window(PyObject *o, void *) {
  return PyFloat_FromDouble(secs(reinterpret_cast<DecisionObject *>(o)->d.window_ns));
}
PyObject *d_tier(PyObject *o, void *) {
  PyObject *t = reinterpret_cast<DecisionObject *>(o)->tier;
  // Only decide() makes Decisions (instantiation is disallowed); guard anyway.
  if (!t) return PyErr_Format(PyExc_AttributeError, "this Decision has no tier");
  Py_INCREF(t);
  return t;
}
PyObject *d_tier_index(PyObject *o, void *) {
  return PyLong_FromUnsignedLong(reinterpret_cast<DecisionObject *>(o)->d.tier);
}
PyObject *d_reason(PyObject *o, void *) {
  return PyUnicode_FromString(reason_name(reinterpret_cast<DecisionObject *>(o)->d.reason));
}
PyObject *d_reason_code(PyObject *o, void *) { return PyLong_FromLong(reinterpret_cast<DecisionObject *>(o)->d.reason); }

PyObject *d_headers(PyObject *o, PyObject *) {
  const sluice_decision &d = reinterpret_cast<DecisionObject *>(o)->d;
  const std::string limit = std::to_string(d.limit), remaining = std::to_string(d.remaining);
  const std::string reset_s = std::to_string(ceil_secs(d.reset_after_ns));
  const std::string retry_s = std::to_string(std::max(1LL, ceil_secs(d.retry_after_ns)));
  // Both reset headers mean "until the window is back to its initial state";
  // Retry-After alone says when a retry can succeed.
  const std::string reset_go = go_duration(d.reset_after_ns);
  return Py_BuildValue(d.allowed ? "{ssssssssssss}" : "{ssssssssssssss}", "RateLimit-Limit", limit.c_str(),
                       "RateLimit-Remaining", remaining.c_str(), "RateLimit-Reset", reset_s.c_str(),
                       "x-ratelimit-limit-requests", limit.c_str(), "x-ratelimit-remaining-requests",
                       remaining.c_str(), "x-ratelimit-reset-requests", reset_go.c_str(), "Retry-After",
                       retry_s.c_str());
}

PyObject *d_repr(PyObject *o) {
  const auto *x = reinterpret_cast<DecisionObject *>(o);
  const char *tier = x->tier ? PyUnicode_AsUTF8(x->tier) : nullptr;
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "Decision(allowed=%s, limit=%u, remaining=%u, retry_after=%.3f, reset_after=%.3f, tier='%.64s', "
                "reason='%s')",
                x->d.allowed ? "True" : "False", x->d.limit, x->d.remaining, secs(x->d.retry_after_ns),
                secs(x->d.reset_after_ns), tier ? tier : "?", reason_name(x->d.reason));
  if (!tier && x->tier) PyErr_Clear();
  return PyUnicode_FromString(buf);
}

// Neither type can be rebuilt from its state (a Decision is only made by a call;
// a Client is a mapping), so pickle and copy refuse them at every protocol. Without
// this, protocols 0 and 1 reach pybind11's tp_new through copyreg and abort.
PyObject *refuse_reduce(PyObject *self, PyObject *) {
  return PyErr_Format(PyExc_TypeError, "cannot pickle or copy a %.100s object", Py_TYPE(self)->tp_name);
}

int d_bool(PyObject *o) { return reinterpret_cast<DecisionObject *>(o)->d.allowed ? 1 : 0; }

void d_dealloc(PyObject *o) {
  PyTypeObject *tp = Py_TYPE(o);
  Py_XDECREF(reinterpret_cast<DecisionObject *>(o)->tier);
  tp->tp_free(o);
  Py_DECREF(tp);
}

PyGetSetDef g_decision_getset[] = {
    {"allowed", d_allowed, nullptr, "True if admitted.", nullptr},
    {"limit", d_limit, nullptr, "Units per window that applied.", nullptr},
    {"remaining", d_remaining, nullptr, "Units left in the window after this call.", nullptr},
    {"retry_after", d_retry, nullptr, "Seconds until a retry can succeed (0 if allowed).", nullptr},
    {"reset_after", d_reset, nullptr, "Seconds until the window holds no admission.", nullptr},
    {"window", d_window, nullptr, "Window length in seconds.", nullptr},
    {"tier", d_tier, nullptr, "Tier name.", nullptr},
    {"tier_index", d_tier_index, nullptr, "Tier index in the segment.", nullptr},
    {"reason", d_reason, nullptr, "'allowed', 'window_full', 'cost_above_limit' or 'tier_closed'.", nullptr},
    {"reason_code", d_reason_code, nullptr, "SLUICE_REASON_* code.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMethodDef g_decision_methods[] = {
    {"headers", d_headers, METH_NOARGS,
     "Response headers: Retry-After (when denied), IETF RateLimit-Limit/-Remaining/-Reset and OpenAI-style "
     "x-ratelimit-limit-requests/-remaining-requests/-reset-requests."},
    {"__reduce_ex__", refuse_reduce, METH_O, "Refused: a Decision cannot be pickled."},
    {"__reduce__", refuse_reduce, METH_NOARGS, "Refused: a Decision cannot be pickled."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot g_decision_slots[] = {{Py_tp_dealloc, reinterpret_cast<void *>(d_dealloc)},
                                  {Py_tp_repr, reinterpret_cast<void *>(d_repr)},
                                  {Py_nb_bool, reinterpret_cast<void *>(d_bool)},
                                  {Py_tp_getset, g_decision_getset},
                                  {Py_tp_methods, g_decision_methods},
                                  {Py_tp_doc, const_cast<char *>("The outcome of one admission check.")},
                                  {0, nullptr}};

// Not instantiable from Python: a Decision only comes from acquire()/peek()
// (object.__new__ would leave `tier` NULL).
PyType_Spec g_decision_spec = {"_sluice.Decision", sizeof(DecisionObject), 0,
                               Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, g_decision_slots};

// ---- Client ------------------------------------------------------------------
class Client {
 public:
  explicit Client(const py::object &segment) {
    std::string name;
    if (!segment.is_none()) {
      // A str only: pybind11's string caster would also take bytes.
      if (!PyUnicode_Check(segment.ptr()))
        throw py::type_error(std::string("segment must be str or None, not ") + Py_TYPE(segment.ptr())->tp_name);
      // Encoded here, not by pybind11's caster, whose failure (a lone surrogate)
      // would surface as a RuntimeError that names no argument.
      Py_ssize_t len = 0;
      const char *utf8 = PyUnicode_AsUTF8AndSize(segment.ptr(), &len);
      if (!utf8) throw py::error_already_set();  // UnicodeEncodeError, a ValueError
      name.assign(utf8, size_t(len));
      // The C API takes a C string: "a\0b" would silently open "a".
      if (name.find('\0') != std::string::npos) throw py::value_error("segment name must not contain a NUL character");
    }
    const int rc = sluice_open(segment.is_none() ? nullptr : name.c_str(), &c_);
    if (rc != SLUICE_OK) raise_status(rc);
  }
  ~Client() { sluice_close(c_); }
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;
  void close() {
    sluice_close(c_);
    c_ = nullptr;
  }
  bool closed() const { return c_ == nullptr; }
  sluice_client *handle() const { return c_; }

 private:
  sluice_client *c_ = nullptr;
};

// The C++ Client inside a pybind11 instance of our class, or nullptr when there is
// none: Client.__new__(Client), or a subclass whose __init__ raised before
// super().__init__(), gives an instance whose holder was never constructed. Every
// method treats that as closed (pybind11's own casts would hand them garbage).
// Callers are our method descriptors, which have already checked self's type.
// A Python class deriving from Client and another pybind11 class has several
// value slots; the Client one is found by its type (set at module init), never
// by position.
py::detail::type_info *g_client_type_info = nullptr;

Client *client_of(PyObject *self) {
  auto *inst = reinterpret_cast<py::detail::instance *>(self);
  if (inst->simple_layout)
    return inst->simple_holder_constructed ? static_cast<Client *>(inst->simple_value_holder[0]) : nullptr;
  auto vh = inst->get_value_and_holder(g_client_type_info, false);
  return vh && vh.holder_constructed() ? vh.value_ptr<Client>() : nullptr;
}

PyObject *client_close(PyObject *self, PyObject *) {
  if (Client *c = client_of(self)) c->close();
  Py_RETURN_NONE;
}
PyObject *client_exit(PyObject *self, PyObject *) { return client_close(self, nullptr); }
PyObject *client_enter(PyObject *self, PyObject *) {
  Py_INCREF(self);
  return self;
}
PyObject *client_closed(PyObject *self, void *) {
  Client *c = client_of(self);
  return PyBool_FromLong(!c || c->closed());
}

// Bytes of a str (UTF-8, cached by CPython), bytes, or any contiguous buffer.
struct KeyView {
  const char *data = nullptr;
  Py_ssize_t len = 0;
  Py_buffer buf{};
  bool has_buf = false;
  ~KeyView() {
    if (has_buf) PyBuffer_Release(&buf);
  }
  bool set(PyObject *key) {
    if (PyUnicode_Check(key)) {
      data = PyUnicode_AsUTF8AndSize(key, &len);
      return data != nullptr;
    }
    if (PyBytes_Check(key)) {
      data = PyBytes_AS_STRING(key);
      len = PyBytes_GET_SIZE(key);
      return true;
    }
    if (PyObject_CheckBuffer(key)) {
      // Keeps the buffer's own error (e.g. BufferError: not C-contiguous).
      if (PyObject_GetBuffer(key, &buf, PyBUF_SIMPLE) != 0) return false;
      has_buf = true;
      data = static_cast<const char *>(buf.buf);
      len = buf.len;
      return true;
    }
    PyErr_Format(PyExc_TypeError, "key must be str or bytes, not %.100s", Py_TYPE(key)->tp_name);
    return false;
  }
};

// acquire(key, tier, cost=1) / peek(...) as METH_FASTCALL | METH_KEYWORDS.
PyObject *decide(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, bool record) {
  const char *fn = record ? "acquire" : "peek";
  PyObject *key = nargs > 0 ? args[0] : nullptr, *tier = nargs > 1 ? args[1] : nullptr,
           *cost_obj = nargs > 2 ? args[2] : nullptr;
  if (nargs > 3) return PyErr_Format(PyExc_TypeError, "%s() takes at most 3 arguments (%zd given)", fn, nargs);
  if (kwnames) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); ++i) {
      // Compared as whole str objects: "key\0x" is not "key".
      PyObject *name = PyTuple_GET_ITEM(kwnames, i);
      PyObject **slot = !PyUnicode_CompareWithASCIIString(name, "key")    ? &key
                        : !PyUnicode_CompareWithASCIIString(name, "tier") ? &tier
                        : !PyUnicode_CompareWithASCIIString(name, "cost") ? &cost_obj
                                                                           : nullptr;
      if (!slot || *slot) return PyErr_Format(PyExc_TypeError, "%s() got an unexpected or repeated argument %R", fn, name);
      *slot = args[nargs + i];
    }
  }
  if (!key || !tier)
    return PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, key ? "tier" : "key");
  if (!PyUnicode_Check(tier)) return PyErr_Format(PyExc_TypeError, "tier must be str, not %.100s", Py_TYPE(tier)->tp_name);
  uint32_t cost = 1;
  if (cost_obj) {
    if (!PyLong_Check(cost_obj))
      return PyErr_Format(PyExc_TypeError, "cost must be an int, not %.100s", Py_TYPE(cost_obj)->tp_name);
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(cost_obj, &overflow);
    if (v == -1 && !overflow && PyErr_Occurred()) return nullptr;
    // An int of the wrong value is a ValueError; 0 goes on to the C call (CostZeroError).
    if (overflow || v < 0 || v > 0xFFFFFFFFLL)
      return PyErr_Format(PyExc_ValueError, "cost must be an int in 1..4294967295");
    cost = uint32_t(v);
  }
  KeyView k;
  if (!k.set(key)) return nullptr;
  Py_ssize_t tier_len = 0;
  const char *tier_s = PyUnicode_AsUTF8AndSize(tier, &tier_len);
  if (!tier_s) return nullptr;
  if (std::strlen(tier_s) != size_t(tier_len)) return set_status_error(SLUICE_ETIER);  // embedded NUL
  // Looked at last, after everything that could reach other code, with the GIL
  // held from here to the C call: a close() cannot come in between.
  Client *c = client_of(self);
  if (!c || c->closed()) return PyErr_Format(PyExc_ValueError, "the client is closed");

  auto *out = PyObject_New(DecisionObject, g_decision_type);
  if (!out) return nullptr;
  out->tier = nullptr;
  out->d.size = sizeof(sluice_decision);
  const int rc = record ? sluice_acquire(c->handle(), tier_s, k.data ? k.data : "", size_t(k.len), cost, &out->d)
                        : sluice_peek(c->handle(), tier_s, k.data ? k.data : "", size_t(k.len), cost, &out->d);
  if (rc != SLUICE_OK) {
    Py_DECREF(out);
    return set_status_error(rc);
  }
  Py_INCREF(tier);
  out->tier = tier;
  return reinterpret_cast<PyObject *>(out);
}

PyObject *acquire_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
  return decide(self, args, nargs, kwnames, true);
}
PyObject *peek_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
  return decide(self, args, nargs, kwnames, false);
}

PyMethodDef g_acquire_def = {
    "acquire", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(acquire_fast)), METH_FASTCALL | METH_KEYWORDS,
    "acquire(key, tier, cost=1) -> Decision\n\nCheck and record `cost` units for (tier, key), all or nothing. "
    "Raises a SluiceError subclass on bad input; a denial is a Decision with allowed False."};
PyMethodDef g_peek_def = {
    "peek", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(peek_fast)), METH_FASTCALL | METH_KEYWORDS,
    "peek(key, tier, cost=1) -> Decision\n\nThe decision acquire() would make now; records nothing."};

PyMethodDef g_client_methods[] = {
    {"close", client_close, METH_NOARGS, "close()\n\nUnmap the segment. Further calls raise ValueError."},
    {"__enter__", client_enter, METH_NOARGS, nullptr},
    {"__exit__", client_exit, METH_VARARGS, nullptr},
    {"__reduce_ex__", refuse_reduce, METH_O, "Refused: a Client cannot be pickled."},
    {"__reduce__", refuse_reduce, METH_NOARGS, "Refused: a Client cannot be pickled."},
};
PyGetSetDef g_client_closed = {"closed", client_closed, nullptr, "True once closed (or never opened).", nullptr};

// Our descriptors check self's type before the call, which client_of relies on.
void set_descriptor(py::handle cls, const char *name, PyObject *descr) {
  if (!descr || PyObject_SetAttrString(cls.ptr(), name, descr) != 0) {
    Py_XDECREF(descr);
    throw py::error_already_set();
  }
  Py_DECREF(descr);
}
void add_method(py::handle cls, PyMethodDef *def) {
  set_descriptor(cls, def->ml_name, PyDescr_NewMethod(reinterpret_cast<PyTypeObject *>(cls.ptr()), def));
}

}  // namespace

PYBIND11_MODULE(_sluice, m) {
  m.doc() = "Private extension of the sluice package (C ABI bindings). Use `import sluice`.";
  m.attr("ABI_VERSION") = sluice_abi_version();

  g_decision_type = reinterpret_cast<PyTypeObject *>(PyType_FromSpec(&g_decision_spec));
  if (!g_decision_type) throw py::error_already_set();
  m.attr("Decision") = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject *>(g_decision_type));

  py::class_<Client> cls(m, "Client", "A handle on the host's Sluice segment. Thread-safe; share one per process.");
  g_client_type_info = py::detail::get_type_info(typeid(Client));
  cls.def(py::init<const py::object &>(), py::arg("segment") = py::none(),
          "Open the segment pair (None: $SLUICE_SEGMENT or 'sluice').");
  for (PyMethodDef &def : g_client_methods) add_method(cls, &def);
  set_descriptor(cls, g_client_closed.name,
                 PyDescr_NewGetSet(reinterpret_cast<PyTypeObject *>(cls.ptr()), &g_client_closed));
  add_method(cls, &g_acquire_def);
  add_method(cls, &g_peek_def);

  // Private, for the tests' boundary values: real decisions cannot be steered to them.
  m.def(
      "_format_duration",
      [](double seconds) {
        if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e9)
          throw py::value_error("seconds must be finite and in 0..1e9");
        return go_duration(std::llround(seconds * 1e9));
      },
      py::arg("seconds"), "Private: x-ratelimit-reset-requests' duration text for `seconds`.");
}
