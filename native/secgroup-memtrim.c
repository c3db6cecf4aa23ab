/*
 * secgroup-memtrim.node: gives the agent's free C heap back to the kernel
 * (glibc malloc_trim), a Node-API addon with one function:
 *
 *   trim() -> boolean   malloc_trim(0): true when memory was released
 *
 * Why: the agent works in bursts (a full apply compiles, V8 compiles code,
 * nft's output is read). What V8 and Node free in the C heap stays in glibc's
 * arenas when a live block sits above it, and free() only gives back the top
 * of the heap (MALLOC_TRIM_THRESHOLD_). An idle agent with 1k rules kept
 * 4.5 MB or 11.5 MB of brk heap depending on where the last live block
 * landed; malloc_trim releases every whole free page of every arena
 * (madvise), so the idle RSS no longer depends on that (bench/README.md,
 * "Issue 18 round 8"). src/agent/memtrim.ts loads it and calls it a few
 * seconds after a burst; without it the agent works the same.
 *
 * Node-API only (ABI-stable across Node.js versions, also inside the single
 * executable); glibc only. Build: scripts/build-native.sh.
 */
#define NAPI_VERSION 8
#include <malloc.h>
#include <node_api.h>

static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  if (napi_get_boolean(env, malloc_trim(0) != 0, &result) != napi_ok) return NULL;
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "trim", fn) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(secgroup_memtrim, init)
