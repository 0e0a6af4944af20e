/*
 * A persistent ggml thread pool for node-llama-cpp's contexts, preloaded into
 * the engine process (LD_PRELOAD; see src/engine/thread-pool.ts).
 *
 * node-llama-cpp's prebuilt addon attaches no thread pool to its contexts, so
 * every llama_decode with n threads makes ggml start n - 1 threads and join
 * them when the graph is done: a thread start and a cold core per token. This
 * library stands in for llama_decode and llama_free: before a context's decode
 * it makes sure a pool of exactly the context's thread count is attached (a
 * new one when the count changed, as the engine's thread tuner does), then
 * calls the real llama_decode of the library the caller links to; after
 * llama_free it frees the context's pool. Nothing else changes: the pool
 * takes ggml's default parameters (as llama.cpp's own server does), and a
 * context with one thread gets none (ggml then runs on the calling thread).
 *
 * The real functions are found in the libllama loaded from the caller's own
 * folder (node-llama-cpp keeps each build's addon and libraries together, and
 * a process may hold a CPU and a GPU build): the addon loads its libraries
 * locally, where dlsym(RTLD_NEXT) would not see them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

typedef int32_t (*decode_fn)(struct llama_context *, struct llama_batch);

/** One libllama build's functions, found from a caller in its folder. */
struct build {
  char dir[4096];
  decode_fn decode;
  void (*free_context)(struct llama_context *);
  int32_t (*n_threads)(struct llama_context *);
  void (*attach)(struct llama_context *, ggml_threadpool_t, ggml_threadpool_t);
  void (*detach)(struct llama_context *);
  struct ggml_threadpool_params (*params_default)(int);
  struct ggml_threadpool *(*pool_new)(struct ggml_threadpool_params *);
  void (*pool_free)(struct ggml_threadpool *);
};

/** A context's pool, and the thread count it was made for. */
struct pool {
  struct llama_context *ctx;
  struct ggml_threadpool *pool;
  int threads;
  struct build *build;
};

#define MAX_BUILDS 4
#define MAX_CONTEXTS 64
static struct build builds[MAX_BUILDS];
static struct pool pools[MAX_CONTEXTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* The engine reads this to say in its load line that the pool is in place (the name comes from
 * src/engine/protocol.ts, passed as -DPRELOADED_MARK by the build). */
__attribute__((constructor)) static void announce(void) { setenv(PRELOADED_MARK, "1", 1); }

struct search {
  const char *dir;
  size_t dir_length;
  char found[4096];
};

static int find_libllama(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  struct search *search = data;
  const char *name = info->dlpi_name;
  if (name == NULL || strncmp(name, search->dir, search->dir_length) != 0) return 0;
  const char *file = name + search->dir_length;
  if (strncmp(file, "/libllama.", 10) != 0 && strcmp(file, "/libllama.so") != 0) return 0;
  snprintf(search->found, sizeof search->found, "%s", name);
  return 1;
}

static void *need(void *library, const char *symbol) {
  void *found = dlsym(library, symbol);
  if (found == NULL) {
    fprintf(stderr, "persistent-thread-pool: %s is not in the loaded libllama\n", symbol);
    abort();
  }
  return found;
}

/** The build the code at `caller` belongs to, found or loaded (call with the lock held). */
static struct build *find_build(const void *caller) {
  Dl_info info;
  if (dladdr(caller, &info) == 0 || info.dli_fname == NULL) {
    fprintf(stderr, "persistent-thread-pool: cannot tell which library called llama\n");
    abort();
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", info.dli_fname);
  char *slash = strrchr(dir, '/');
  if (slash != NULL) *slash = '\0';
  for (int i = 0; i < MAX_BUILDS; i++) {
    if (builds[i].decode != NULL && strcmp(builds[i].dir, dir) == 0) return &builds[i];
  }
  struct search search = {.dir = dir, .dir_length = strlen(dir), .found = ""};
  dl_iterate_phdr(find_libllama, &search);
  void *library = search.found[0] != '\0' ? dlopen(search.found, RTLD_NOLOAD | RTLD_LAZY) : NULL;
  if (library == NULL) {
    fprintf(stderr, "persistent-thread-pool: no libllama loaded from %s\n", dir);
    abort();
  }
  for (int i = 0; i < MAX_BUILDS; i++) {
    struct build *b = &builds[i];
    if (b->decode != NULL) continue;
    snprintf(b->dir, sizeof b->dir, "%s", dir);
    b->free_context = need(library, "llama_free");
    b->n_threads = need(library, "llama_n_threads");
    b->attach = need(library, "llama_attach_threadpool");
    b->detach = need(library, "llama_detach_threadpool");
    b->params_default = need(library, "ggml_threadpool_params_default");
    // The pool's own functions live in the CPU backend, which ggml may have loaded as a module.
    ggml_backend_dev_t (*dev_by_type)(enum ggml_backend_dev_type) = need(library, "ggml_backend_dev_by_type");
    ggml_backend_reg_t (*dev_reg)(ggml_backend_dev_t) = need(library, "ggml_backend_dev_backend_reg");
    void *(*proc)(ggml_backend_reg_t, const char *) = need(library, "ggml_backend_reg_get_proc_address");
    ggml_backend_dev_t cpu = dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu != NULL) {
      b->pool_new = proc(dev_reg(cpu), "ggml_threadpool_new");
      b->pool_free = proc(dev_reg(cpu), "ggml_threadpool_free");
    }
    b->decode = need(library, "llama_decode");
    return b;
  }
  fprintf(stderr, "persistent-thread-pool: more than %d llama builds in one process\n", MAX_BUILDS);
  abort();
}

/** find_build, remembering the last answer: one addon calls, from a few places (call with the lock held). */
static struct build *build_of(const void *caller) {
  static const void *last_caller;
  static struct build *last_build;
  if (caller != last_caller) {
    last_build = find_build(caller);
    last_caller = caller;
  }
  return last_build;
}

/** Makes `ctx`'s pool match its thread count now (call with the lock held). */
static void fit_pool(struct build *b, struct llama_context *ctx) {
  if (b->pool_new == NULL || b->pool_free == NULL) return;
  struct pool *slot = NULL;
  for (int i = 0; i < MAX_CONTEXTS && slot == NULL; i++) {
    if (pools[i].ctx == ctx) slot = &pools[i];
  }
  for (int i = 0; i < MAX_CONTEXTS && slot == NULL; i++) {
    if (pools[i].ctx == NULL) {
      slot = &pools[i];
      *slot = (struct pool){.ctx = ctx, .pool = NULL, .threads = 1, .build = b};
    }
  }
  if (slot == NULL) return;  // More contexts than slots: the rest decode as before.
  int threads = b->n_threads(ctx);
  if (threads == slot->threads) return;
  if (slot->pool != NULL) {
    b->detach(ctx);
    b->pool_free(slot->pool);
    slot->pool = NULL;
  }
  slot->threads = threads;
  if (threads > 1) {
    struct ggml_threadpool_params params = b->params_default(threads);
    slot->pool = b->pool_new(&params);
    if (slot->pool != NULL) b->attach(ctx, slot->pool, NULL);
  }
}

int32_t llama_decode(struct llama_context *ctx, struct llama_batch batch) {
  pthread_mutex_lock(&lock);
  struct build *b = build_of(__builtin_return_address(0));
  fit_pool(b, ctx);
  pthread_mutex_unlock(&lock);
  return b->decode(ctx, batch);
}

void llama_free(struct llama_context *ctx) {
  pthread_mutex_lock(&lock);
  struct build *b = build_of(__builtin_return_address(0));
  pthread_mutex_unlock(&lock);
  b->free_context(ctx);
  pthread_mutex_lock(&lock);
  for (int i = 0; i < MAX_CONTEXTS; i++) {
    if (pools[i].ctx != ctx) continue;
    if (pools[i].pool != NULL) pools[i].build->pool_free(pools[i].pool);
    pools[i] = (struct pool){0};
  }
  pthread_mutex_unlock(&lock);
}
