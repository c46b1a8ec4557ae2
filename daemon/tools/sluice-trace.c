/* sluice-trace: a C client of libsluice that plays a traffic plan for one tier
 * and logs every decision. The demo runs it beside Python clients on the same
 * keys (one ledger for every language on the host).
 *
 *   sluice-trace --segment S --tier T --prefix P --keys N
 *                --plan SECONDS:R0:R1[,SECONDS:R0:R1...]   per-key requests/s, linear R0 -> R1
 *                [--start-ns CLOCK_MONOTONIC_NS] [--seed N] [--log FILE] [--cost N]
 *
 * Arrivals are Poisson in 10 ms steps, keys drawn uniformly (seeded). A log line
 * per request: "<us since start> <key index> <1 allowed | 0 denied>". The last
 * line on stdout: "requests=N admitted=N denied=N errors=N". SIGINT/SIGTERM
 * end the plan early, still flushing the log and the summary. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice.h"

#define MAX_STEPS 64
#define STEP_NS 10000000LL /* 10 ms */

struct step {
  double seconds, r0, r1;
};

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t t_ns) {
  struct timespec ts = {(time_t)(t_ns / 1000000000LL), (long)(t_ns % 1000000000LL)};
  while (!g_stop && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static void die(const char *what, const char *v) {
  fprintf(stderr, "sluice-trace: bad %s '%s'\n", what, v);
  exit(2);
}

static long long arg_ll(const char *name, const char *v, long long lo, long long hi) {
  char *end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || !end || *end || x < lo || x > hi) die(name, v);
  return x;
}

/* "10:5:20,5:20:20" -> steps; returns the count. */
static int parse_plan(const char *text, struct step *out) {
  int n = 0;
  const char *p = text;
  while (*p) {
    if (n == MAX_STEPS) die("--plan (more than 64 steps)", text);
    char *end = NULL;
    out[n].seconds = strtod(p, &end);
    if (end == p || *end != ':') die("--plan", text);
    p = end + 1;
    out[n].r0 = strtod(p, &end);
    if (end == p || *end != ':') die("--plan", text);
    p = end + 1;
    out[n].r1 = strtod(p, &end);
    if (end == p || (*end != ',' && *end)) die("--plan", text);
    if (!(out[n].seconds > 0 && out[n].seconds <= 3600 && out[n].r0 >= 0 && out[n].r1 >= 0 && out[n].r0 <= 1e6 &&
          out[n].r1 <= 1e6))
      die("--plan (seconds 0..3600, rates 0..1e6)", text);
    n++;
    if (*end == ',' && !end[1]) die("--plan (a trailing comma)", text);
    p = *end ? end + 1 : end;
  }
  if (n == 0) die("--plan", text);
  return n;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void) { /* xorshift64* */
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 2685821657736338717ULL;
}
static double uniform(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static int poisson(double lambda) {
  if (lambda > 200) { /* normal approximation; exp(-lambda) underflows */
    double u1 = uniform(), u2 = uniform();
    double z = sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
    long v = lround(lambda + sqrt(lambda) * z);
    return v < 0 ? 0 : (int)v;
  }
  const double limit = exp(-lambda);
  int k = 0;
  for (double p = uniform(); p > limit; p *= uniform()) k++;
  return k;
}

/* The per-key rate at `t` seconds into the plan; negative past its end. */
static double rate_at(const struct step *s, int n, double t) {
  for (int i = 0; i < n; i++) {
    if (t < s[i].seconds) return s[i].r0 + (s[i].r1 - s[i].r0) * (t / s[i].seconds);
    t -= s[i].seconds;
  }
  return -1;
}

int main(int argc, char **argv) {
  const char *segment = NULL, *tier = NULL, *prefix = "key", *log_path = NULL, *plan_text = NULL;
  long long keys = 1, cost = 1, start_ns = 0, seed = 1;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) {
      fprintf(stderr, "sluice-trace: %s needs a value\n", argv[i]);
      return 2;
    }
    const char *a = argv[i], *v = argv[++i];
    if (!strcmp(a, "--segment")) segment = v;
    else if (!strcmp(a, "--tier")) tier = v;
    else if (!strcmp(a, "--prefix")) prefix = v;
    else if (!strcmp(a, "--keys")) keys = arg_ll(a, v, 1, 1000000);
    else if (!strcmp(a, "--plan")) plan_text = v;
    else if (!strcmp(a, "--start-ns")) start_ns = arg_ll(a, v, 0, INT64_MAX);
    else if (!strcmp(a, "--seed")) seed = arg_ll(a, v, 0, INT64_MAX);
    else if (!strcmp(a, "--log")) log_path = v;
    else if (!strcmp(a, "--cost")) cost = arg_ll(a, v, 1, 16383);
    else {
      fprintf(stderr, "sluice-trace: unknown argument '%s'\n", a);
      return 2;
    }
  }
  if (!tier || !plan_text) {
    fprintf(stderr, "sluice-trace: --tier and --plan are required\n");
    return 2;
  }
  if (strlen(prefix) > 100) die("--prefix (at most 100 bytes)", prefix);
  struct step plan[MAX_STEPS];
  const int steps = parse_plan(plan_text, plan);
  for (int i = 0; i < steps; i++) /* arrivals per 10 ms step stay far below INT_MAX */
    if ((plan[i].r0 > plan[i].r1 ? plan[i].r0 : plan[i].r1) * (double)keys > 1e7)
      die("--plan with --keys (at most 1e7 requests/s in all)", plan_text);
  g_rng ^= (uint64_t)seed * 0xD1B54A32D192ED03ULL;
  if (!g_rng) g_rng = 1;

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  sluice_client *c = NULL;
  int rc = sluice_open(segment, &c);
  if (rc != SLUICE_OK) {
    fprintf(stderr, "sluice-trace: sluice_open: %s (%d)\n", sluice_strerror(rc), rc);
    return 1;
  }
  FILE *log = NULL;
  if (log_path && !(log = fopen(log_path, "w"))) {
    fprintf(stderr, "sluice-trace: cannot write %s: %s\n", log_path, strerror(errno));
    return 1;
  }
  if (log) setvbuf(log, NULL, _IOFBF, 1 << 20);

  if (!start_ns) start_ns = mono_ns();
  sleep_until(start_ns);
  long long requests = 0, admitted = 0, denied = 0, errors = 0;
  char key[128];
  for (int64_t step_at = start_ns; !g_stop; step_at += STEP_NS) {
    const double t = (double)(step_at - start_ns) / 1e9;
    const double per_key = rate_at(plan, steps, t);
    if (per_key < 0) break;
    sleep_until(step_at);
    const int n = poisson(per_key * (double)keys * (double)STEP_NS / 1e9);
    for (int i = 0; i < n && !g_stop; i++) {
      const long long k = (long long)(rnd() % (uint64_t)keys);
      const int len = snprintf(key, sizeof key, "%s-%lld", prefix, k);
      sluice_decision d;
      memset(&d, 0, sizeof d);
      d.size = sizeof d;
      rc = sluice_acquire(c, tier, key, (size_t)len, (uint32_t)cost, &d);
      requests++;
      if (rc != SLUICE_OK) {
        if (errors++ == 0) fprintf(stderr, "sluice-trace: sluice_acquire: %s (%d)\n", sluice_strerror(rc), rc);
        continue;
      }
      d.allowed ? admitted++ : denied++;
      if (log) fprintf(log, "%lld %lld %u\n", (long long)((mono_ns() - start_ns) / 1000), k, d.allowed);
    }
  }
  sluice_close(c);
  if (log) fclose(log);
  printf("requests=%lld admitted=%lld denied=%lld errors=%lld\n", requests, admitted, denied, errors);
  return errors ? 1 : 0;
}
