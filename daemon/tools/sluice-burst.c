/* sluice-burst: a plain C client of libsluice. Sends a paced burst of requests
 * for one tier over several keys and prints what was admitted and denied.
 * Used by the demo and by tests; it exists to prove the C ABI from C. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long arg_long(const char *name, const char *v, long lo, long hi) {
  char *end = NULL;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || !end || *end || x < lo || x > hi) {
    fprintf(stderr, "sluice-burst: %s must be %ld..%ld, got '%s'\n", name, lo, hi, v);
    exit(2);
  }
  return x;
}

int main(int argc, char **argv) {
  const char *segment = NULL, *tier = "free", *prefix = "key";
  long keys = 4, rate = 100, millis = 2000, cost = 1;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) {
      fprintf(stderr, "sluice-burst: %s needs a value\n", argv[i]);
      return 2;
    }
    const char *a = argv[i], *v = argv[++i];
    if (!strcmp(a, "--segment")) segment = v;
    else if (!strcmp(a, "--tier")) tier = v;
    else if (!strcmp(a, "--prefix")) prefix = v;
    else if (!strcmp(a, "--keys")) keys = arg_long(a, v, 1, 1000000);
    else if (!strcmp(a, "--rate")) rate = arg_long(a, v, 1, 10000000); /* requests per second, all keys */
    else if (!strcmp(a, "--millis")) millis = arg_long(a, v, 1, 600000);
    else if (!strcmp(a, "--cost")) cost = arg_long(a, v, 1, 16383);
    else {
      fprintf(stderr, "sluice-burst: unknown argument '%s'\n", a);
      return 2;
    }
  }
  sluice_client *c = NULL;
  int rc = sluice_open(segment, &c);
  if (rc != SLUICE_OK) {
    fprintf(stderr, "sluice-burst: sluice_open: %s (%d)\n", sluice_strerror(rc), rc);
    return 1;
  }
  long requests = 0, admitted = 0, denied = 0, errors = 0;
  const double start = now_s(), end = start + (double)millis / 1000.0;
  for (;;) {
    const double t = now_s();
    if (t >= end) break;
    const double due = start + (double)requests / (double)rate;
    if (t < due) {
      struct timespec ts = {0, (long)((due - t) * 1e9)};
      nanosleep(&ts, NULL);
      continue;
    }
    char key[96];
    const int n = snprintf(key, sizeof key, "%s-%ld", prefix, requests % keys);
    sluice_decision d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    rc = sluice_acquire(c, tier, key, (size_t)n, (uint32_t)cost, &d);
    requests++;
    if (rc != SLUICE_OK) {
      if (errors++ == 0) fprintf(stderr, "sluice-burst: sluice_acquire: %s (%d)\n", sluice_strerror(rc), rc);
    } else if (d.allowed) {
      admitted++;
    } else {
      denied++;
    }
  }
  sluice_close(c);
  printf("tier=%s keys=%ld seconds=%.3f requests=%ld admitted=%ld denied=%ld errors=%ld\n", tier, keys,
         now_s() - start, requests, admitted, denied, errors);
  return errors ? 1 : 0;
}
