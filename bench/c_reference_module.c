/* _sluice_cref: "C alone" for bench/bench_python.py, measured in the same process,
 * on the same segment and the same key objects as the Python calls it is set
 * against. time_acquire(segment, tier, keys) opens its own client, takes every
 * key's bytes (a str's UTF-8, as the binding does, or a bytes object's) before the
 * clock starts, then times one sluice_acquire per key in a plain C loop. Returns
 * (elapsed ns, admitted count). Benchmark support only: never installed. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <time.h>

#include "sluice.h"

typedef struct {
  const char *data;
  size_t len;
} key_ref;

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PyObject *time_acquire(PyObject *self, PyObject *args) {
  (void)self;
  const char *segment, *tier;
  PyObject *keys;
  if (!PyArg_ParseTuple(args, "ssO!", &segment, &tier, &PyList_Type, &keys)) return NULL;
  const Py_ssize_t n = PyList_GET_SIZE(keys);
  key_ref *refs = malloc(sizeof(key_ref) * (size_t)(n ? n : 1));
  if (!refs) return PyErr_NoMemory();
  for (Py_ssize_t i = 0; i < n; ++i) {  /* the list holds the objects alive meanwhile */
    PyObject *k = PyList_GET_ITEM(keys, i);
    Py_ssize_t len = 0;
    if (PyUnicode_Check(k)) {
      refs[i].data = PyUnicode_AsUTF8AndSize(k, &len);
      if (!refs[i].data) {
        free(refs);
        return NULL;
      }
    } else if (PyBytes_Check(k)) {
      refs[i].data = PyBytes_AS_STRING(k);
      len = PyBytes_GET_SIZE(k);
    } else {
      free(refs);
      return PyErr_Format(PyExc_TypeError, "key %zd is %s, not str or bytes", i, Py_TYPE(k)->tp_name);
    }
    refs[i].len = (size_t)len;
  }
  sluice_client *c = NULL;
  int rc = sluice_open(segment, &c);
  if (rc != 0) {
    free(refs);
    return PyErr_Format(PyExc_RuntimeError, "sluice_open(%s): %s", segment, sluice_strerror(rc));
  }
  sluice_decision d = {.size = sizeof d};
  long long admitted = 0;
  const long long t0 = mono_ns();
  for (Py_ssize_t i = 0; i < n && rc == 0; ++i) {
    rc = sluice_acquire(c, tier, refs[i].data, refs[i].len, 1, &d);
    admitted += d.allowed;
  }
  const long long elapsed = mono_ns() - t0;
  sluice_close(c);
  free(refs);
  if (rc != 0) return PyErr_Format(PyExc_RuntimeError, "sluice_acquire: %s", sluice_strerror(rc));
  return Py_BuildValue("LL", elapsed, admitted);
}

static PyMethodDef methods[] = {
    {"time_acquire", time_acquire, METH_VARARGS,
     "time_acquire(segment, tier, keys) -> (ns, admitted): one sluice_acquire per key, timed in C"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_sluice_cref", .m_doc = NULL, .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__sluice_cref(void) { return PyModule_Create(&module); }
