/*
 * sluice.h - the stable C ABI of Sluice, a host-local rate limiter.
 *
 * A client maps the segment pair owned by `sluiced` and decides each request in
 * process: no lock, no syscall, no network. Link with -lsluice.
 *
 * Conventions (libgit2/LMDB style):
 *  - every call returns an int status: 0 (SLUICE_OK) or a negative SLUICE_E* code;
 *    sluice_strerror() names each one;
 *  - a denied admission is an answer, not an error: status 0 with allowed = 0;
 *  - output parameters come last; public structs begin with a size field the caller
 *    sets to sizeof(struct) and only ever grow at the end;
 *  - no C++ exception ever crosses this boundary.
 *
 * Reset: a handle follows its segment name. When sluiced removes the pair
 * (--reset), the next call reopens the name and decides in the new pair; while
 * none exists, calls fail with SLUICE_ENOSEGMENT (never an answer from the old);
 * a pair made by another user is not followed (SLUICE_EPERM). Each reset keeps
 * the old pair mapped until sluice_close.
 * Threads: a sluice_client may be shared by any number of threads. Fork: a child
 * inherits the mappings (MAP_SHARED), so a handle opened before fork() keeps working
 * in both processes; each process calls sluice_close() on its own copy once.
 * Signals: sluice_acquire/sluice_peek are lock-free but not async-signal-safe on the
 * first use of a key (it may allocate an error message); do not call them from a
 * signal handler.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SLUICE_BUILDING_LIBRARY)
#define SLUICE_API __attribute__((visibility("default")))
#else
#define SLUICE_API
#endif

/* ABI version: major << 16 | minor. A new minor only adds functions or struct tails. */
#define SLUICE_ABI_VERSION_MAJOR 1
#define SLUICE_ABI_VERSION_MINOR 0
#define SLUICE_ABI_VERSION ((SLUICE_ABI_VERSION_MAJOR << 16) | SLUICE_ABI_VERSION_MINOR)

/* Status codes. */
#define SLUICE_OK 0
#define SLUICE_ENULL (-1)        /* a required pointer argument is NULL */
#define SLUICE_ESIZE (-2)        /* out->size is not sizeof(sluice_decision) of a known version */
#define SLUICE_EEMPTYKEY (-3)    /* key_len is 0 */
#define SLUICE_EKEYTOOLONG (-4)  /* key_len is above the segment's max_key_bytes */
#define SLUICE_ETIER (-5)        /* no tier of that name */
#define SLUICE_ECOSTZERO (-6)    /* cost is 0 */
#define SLUICE_ECOST (-7)        /* cost is above the tier's capacity (max_limit) or 16383 */
#define SLUICE_ENOSEGMENT (-8)   /* no such segment (is sluiced running?) or a bad name */
#define SLUICE_EVERSION (-9)     /* the segment's layout version is not this library's */
#define SLUICE_EFULL (-10)       /* the tier's key table has no room for a new key */
#define SLUICE_ECORRUPT (-11)    /* the segment header is invalid */
#define SLUICE_EBUSY (-12)       /* the key is being reclaimed by sluiced; retry */
#define SLUICE_EPERM (-13)       /* permission denied opening the segment */
#define SLUICE_ENOTREADY (-14)   /* the segment is still being created */
#define SLUICE_EINTERNAL (-15)   /* out of memory or an unexpected failure */

/* Why a decision came out as it did (sluice_decision.reason). */
#define SLUICE_REASON_ALLOWED 0
#define SLUICE_REASON_WINDOW_FULL 1       /* the window already holds `limit` units */
#define SLUICE_REASON_COST_ABOVE_LIMIT 2  /* cost is above the current limit */
#define SLUICE_REASON_TIER_CLOSED 3       /* the tier's limit is 0 */

typedef struct sluice_client sluice_client;

typedef struct sluice_decision {
  uint32_t size;           /* caller sets sizeof(sluice_decision) */
  uint32_t allowed;        /* 1 admitted, 0 denied */
  uint32_t limit;          /* units per window that applied */
  uint32_t remaining;      /* units left in the window after this call */
  int64_t window_ns;
  int64_t retry_after_ns;  /* 0 when allowed */
  int64_t reset_after_ns;  /* until the window holds no admission */
  uint32_t tier;           /* index of the tier that applied */
  int32_t reason;          /* SLUICE_REASON_* */
} sluice_decision;

/* Opens the segment pair "<segment>.state" / "<segment>.policy" in /dev/shm.
 * segment: NULL or "" means $SLUICE_SEGMENT, else "sluice".
 * Returns SLUICE_OK and sets *out, or ENULL, ENOSEGMENT, EPERM, EVERSION,
 * ECORRUPT, ENOTREADY (waits up to 1 s for a segment being created), EINTERNAL.
 * Thread-safe. */
SLUICE_API int sluice_open(const char *segment, sluice_client **out);

/* Unmaps and frees the handle. NULL is a no-op. No other thread may use it after. */
SLUICE_API void sluice_close(sluice_client *client);

/* Checks and records `cost` units for (tier, key), all or nothing.
 * key: key_len bytes, any content (embedded NULs allowed).
 * Returns SLUICE_OK with out filled (allowed or denied), or ENULL, ESIZE, EEMPTYKEY,
 * EKEYTOOLONG, ETIER, ECOSTZERO, ECOST, EFULL, EBUSY, EINTERNAL; on error `out` is
 * untouched except that nothing is ever reported as allowed.
 * Thread-safe, lock-free; a process killed inside it leaves the key usable. */
SLUICE_API int sluice_acquire(sluice_client *client, const char *tier, const char *key, size_t key_len,
                              uint32_t cost, sluice_decision *out);

/* The decision sluice_acquire would make now, recording nothing. Same codes. */
SLUICE_API int sluice_peek(sluice_client *client, const char *tier, const char *key, size_t key_len,
                           uint32_t cost, sluice_decision *out);

/* A static message for any status code (also for unknown ones). Never NULL. */
SLUICE_API const char *sluice_strerror(int status);

/* The library's SLUICE_ABI_VERSION, to compare with the header's at run time. */
SLUICE_API uint32_t sluice_abi_version(void);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_H */
