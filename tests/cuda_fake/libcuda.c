/* A fake CUDA driver for tests on machines without a GPU.
 *
 * Exports the cu* symbols ringxfer's cuda transport uses, backed by host memory:
 * "device" pointers are malloc'd, copies happen at once, and an event recorded on a
 * stream completes after a few queries (so completion is observed asynchronously).
 * As with the real driver, querying an event that was never recorded says
 * CUDA_SUCCESS — which is why a transport must never trust an unrecorded event.
 *
 * Control (found by the tests with dlsym on this library):
 *   fake_cuda_events_live()     events created and not destroyed
 *   fake_cuda_events_created()  events created since load
 *   fake_cuda_host_pins()       host ranges registered (cuMemHostRegister) and not
 *                               unregistered
 *   fake_cuda_fail(what, nth)   make the nth call from now of `what` fail
 *                               (1 cuEventRecord, 2 any cuMemcpy*Async, 3 cuEventQuery,
 *                               4 cuMemcpyBatchAsync*)
 *   fake_cuda_calls(name)       calls of entry point `name` (all of them for "")
 *   fake_cuda_calls_reset()     zeroes those counts
 *   fake_cuda_set_polls(n)      queries an event reads NOT_READY after its record (2)
 *   fake_cuda_hold(on)          while on, no recorded event completes
 *   fake_cuda_copies()          copies made by cuMemcpy*Async calls
 *   fake_cuda_batched()         copies made inside cuMemcpyBatchAsync calls
 *   fake_cuda_ipc_open()        IPC mappings opened (cuIpcOpenMemHandle) and not
 *                               closed, in this process
 *   fake_cuda_ipc_opened()      IPC mappings opened since load, in this process
 *
 * Device memory lives in POSIX shared-memory objects (/dev/shm/rxfake-<pid>-<n>), so
 * that another process can open it through an IPC handle as it would a real GPU's:
 * the 64-byte handle carries the object's name and size. As with the real driver,
 * opening a handle in the process that exported it fails.
 *
 * Built by tests/cuda.rs with `gcc -shared -fPIC`; never part of the library. */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct fake_ctx *CUcontext;
typedef struct fake_stream *CUstream;
typedef struct fake_event *CUevent;

enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_INVALID_CONTEXT = 201,
  CUDA_ERROR_INVALID_HANDLE = 400,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_NOT_READY = 600,
  CUDA_ERROR_ILLEGAL_ADDRESS = 700,
  CUDA_ERROR_LAUNCH_FAILED = 719,
  CUDA_ERROR_NOT_SUPPORTED = 801,
};

struct fake_ctx { int device; };
struct fake_stream { int id; };
struct fake_event { int recorded; int polls_left; unsigned magic; };

#define EVENT_MAGIC 0xE7E7E7E7u

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long events_live, events_created;
static long fail_record, fail_copy, fail_query, fail_batch; /* countdowns; 0 = off */
static int initialised;
static struct fake_ctx the_ctx;

/* Driver calls per entry point since load (or since fake_cuda_calls_reset). */
#define MAX_ENTRY_POINTS 64
static struct { const char *name; long calls; } entry_points[MAX_ENTRY_POINTS];
static long calls_total;

static void count_call(const char *name) {
  pthread_mutex_lock(&lock);
  calls_total++;
  for (int i = 0; i < MAX_ENTRY_POINTS; i++) {
    if (!entry_points[i].name) entry_points[i].name = name;
    if (entry_points[i].name == name || strcmp(entry_points[i].name, name) == 0) {
      entry_points[i].calls++;
      break;
    }
  }
  pthread_mutex_unlock(&lock);
}
/* Calls of `name` (every entry point's for "") since load or the last reset. */
long fake_cuda_calls(const char *name) {
  long n = 0;
  pthread_mutex_lock(&lock);
  if (!name || !*name) n = calls_total;
  for (int i = 0; name && *name && i < MAX_ENTRY_POINTS && entry_points[i].name; i++)
    if (strcmp(entry_points[i].name, name) == 0) n = entry_points[i].calls;
  pthread_mutex_unlock(&lock);
  return n;
}
void fake_cuda_calls_reset(void) {
  pthread_mutex_lock(&lock);
  calls_total = 0;
  for (int i = 0; i < MAX_ENTRY_POINTS; i++) entry_points[i].calls = 0;
  pthread_mutex_unlock(&lock);
}

/* Queries an event answers NOT_READY after its record before it completes: 2 by
 * default; 0 makes work complete by the first query (a GPU that is done). While held
 * (fake_cuda_hold(1)) no recorded event completes. */
static int polls_per_event = 2, held;
void fake_cuda_set_polls(int polls) { __atomic_store_n(&polls_per_event, polls, __ATOMIC_SEQ_CST); }
void fake_cuda_hold(int on) { __atomic_store_n(&held, on, __ATOMIC_SEQ_CST); }

long fake_cuda_events_live(void) { return __atomic_load_n(&events_live, __ATOMIC_SEQ_CST); }
long fake_cuda_events_created(void) { return __atomic_load_n(&events_created, __ATOMIC_SEQ_CST); }

void fake_cuda_fail(int what, long nth) {
  pthread_mutex_lock(&lock);
  if (what == 1) fail_record = nth;
  if (what == 2) fail_copy = nth;
  if (what == 3) fail_query = nth;
  if (what == 4) fail_batch = nth;
  pthread_mutex_unlock(&lock);
}

/* Counts a call of a kind down; 1 when this call is the one to fail. */
static int should_fail(long *countdown) {
  int fail = 0;
  pthread_mutex_lock(&lock);
  if (*countdown > 0 && --*countdown == 0) fail = 1;
  pthread_mutex_unlock(&lock);
  return fail;
}

CUresult cuInit(unsigned flags) {
  count_call(__func__);
  (void)flags;
  initialised = 1;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int *count) {
  count_call(__func__);
  if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
  *count = 2;
  return CUDA_SUCCESS;
}
/* Two devices, each reaching the other (memory is host memory either way). */
CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  count_call(__func__);
  if (ordinal < 0 || ordinal > 1) return CUDA_ERROR_INVALID_VALUE;
  *device = ordinal;
  return CUDA_SUCCESS;
}
CUresult cuDeviceCanAccessPeer(int *can, CUdevice device, CUdevice peer) {
  count_call(__func__);
  if (device < 0 || device > 1 || peer < 0 || peer > 1) return CUDA_ERROR_INVALID_VALUE;
  *can = 1;
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device) {
  count_call(__func__);
  the_ctx.device = device;
  *ctx = &the_ctx;
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
  count_call(__func__);
  (void)device;
  return CUDA_SUCCESS;
}
static __thread CUcontext current;
CUresult cuCtxSetCurrent(CUcontext ctx) {
  count_call(__func__);
  if (ctx != &the_ctx && ctx != NULL) return CUDA_ERROR_INVALID_VALUE;
  current = ctx;
  return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext *ctx) {
  count_call(__func__);
  *ctx = current;
  return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream *stream, unsigned flags) {
  count_call(__func__);
  (void)flags;
  *stream = calloc(1, sizeof **stream);
  return *stream ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuStreamDestroy_v2(CUstream stream) {
  count_call(__func__);
  free(stream);
  return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream stream) {
  count_call(__func__);
  (void)stream;
  return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent *event, unsigned flags) {
  count_call(__func__);
  (void)flags;
  struct fake_event *e = calloc(1, sizeof *e);
  if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
  e->magic = EVENT_MAGIC;
  __atomic_add_fetch(&events_live, 1, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&events_created, 1, __ATOMIC_SEQ_CST);
  *event = e;
  return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(CUevent event) {
  count_call(__func__);
  if (!event || event->magic != EVENT_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
  event->magic = 0;
  free(event);
  __atomic_sub_fetch(&events_live, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent event, CUstream stream) {
  count_call(__func__);
  (void)stream;
  if (!event || event->magic != EVENT_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
  if (should_fail(&fail_record)) return CUDA_ERROR_LAUNCH_FAILED;
  __atomic_store_n(&event->polls_left, __atomic_load_n(&polls_per_event, __ATOMIC_SEQ_CST), __ATOMIC_SEQ_CST);
  __atomic_store_n(&event->recorded, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
CUresult cuEventQuery(CUevent event) {
  count_call(__func__);
  if (!event || event->magic != EVENT_MAGIC) return CUDA_ERROR_INVALID_HANDLE;
  if (should_fail(&fail_query)) return CUDA_ERROR_ILLEGAL_ADDRESS;
  /* Like the real driver: an event never recorded reads as complete. */
  if (__atomic_load_n(&event->recorded, __ATOMIC_SEQ_CST) == 0) return CUDA_SUCCESS;
  if (__atomic_load_n(&held, __ATOMIC_SEQ_CST)) return CUDA_ERROR_NOT_READY;
  if (__atomic_load_n(&event->polls_left, __ATOMIC_SEQ_CST) > 0) {
    __atomic_sub_fetch(&event->polls_left, 1, __ATOMIC_SEQ_CST);
    return CUDA_ERROR_NOT_READY;
  }
  return CUDA_SUCCESS;
}

/* Device allocations and IPC mappings of this process: (base, size, object name). */
#define MAX_MAPS 4096
struct mapping { CUdeviceptr base; size_t size; char name[40]; };
static struct mapping allocs[MAX_MAPS], opened[MAX_MAPS];
static long alloc_seq, ipc_open, ipc_opened;

long fake_cuda_ipc_open(void) { return __atomic_load_n(&ipc_open, __ATOMIC_SEQ_CST); }
long fake_cuda_ipc_opened(void) { return __atomic_load_n(&ipc_opened, __ATOMIC_SEQ_CST); }

/* Maps `size` bytes of shared-memory object `name`; NULL on failure. */
static void *map_object(const char *name, size_t size, int create) {
  int fd = shm_open(name, create ? O_CREAT | O_EXCL | O_RDWR : O_RDWR, 0600);
  if (fd < 0) return NULL;
  if (create && ftruncate(fd, (off_t)size) != 0) {
    close(fd);
    shm_unlink(name);
    return NULL;
  }
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    if (create) shm_unlink(name);
    return NULL;
  }
  return p;
}

/* A free entry of `table`, or NULL (call with `lock` held). */
static struct mapping *free_entry(struct mapping *table) {
  for (int i = 0; i < MAX_MAPS; i++)
    if (table[i].base == 0) return &table[i];
  return NULL;
}

/* The entry of `table` whose range holds `p`, or NULL (call with `lock` held). */
static struct mapping *entry_of(struct mapping *table, CUdeviceptr p) {
  for (int i = 0; i < MAX_MAPS; i++)
    if (table[i].base && p >= table[i].base && p < table[i].base + table[i].size) return &table[i];
  return NULL;
}

/* The VMM API: a physical allocation (cuMemCreate) is an unlinked shared-memory
   object held by a file descriptor; its handle is its index + 1 in `phys`. A
   shareable handle (POSIX fd) is a dup of that descriptor, so another process that
   fetched it (pidfd_getfd) imports the same memory. Address ranges are reserved
   PROT_NONE and mapped over with the object. An imported allocation counts as an
   IPC open until its last reference (the handle, each mapping) goes. */
typedef unsigned long long CUmemGenericAllocationHandle;
struct phys { int fd; size_t size; int refs; int imported; int types; };
static struct phys phys[MAX_MAPS];
struct vmap { CUdeviceptr base; size_t size; int phys; };
static struct vmap vmaps[MAX_MAPS];
static long vmm_seq, vmm_imports;
long fake_cuda_vmm_imports(void) { return __atomic_load_n(&vmm_imports, __ATOMIC_SEQ_CST); }

/* A new physical allocation over `fd` (owned); 0 if the table is full (lock held). */
static CUmemGenericAllocationHandle new_phys(int fd, size_t size, int imported, int types) {
  for (int i = 0; i < MAX_MAPS; i++)
    if (phys[i].refs == 0) {
      phys[i] = (struct phys){fd, size, 1, imported, types};
      if (imported) {
        __atomic_add_fetch(&ipc_open, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&ipc_opened, 1, __ATOMIC_SEQ_CST);
      }
      return (CUmemGenericAllocationHandle)i + 1;
    }
  return 0;
}
static struct phys *phys_of(CUmemGenericAllocationHandle h) {
  return h >= 1 && h <= MAX_MAPS && phys[h - 1].refs > 0 ? &phys[h - 1] : NULL;
}
static void unref_phys(struct phys *p) {
  if (--p->refs == 0) {
    close(p->fd);
    if (p->imported) __atomic_sub_fetch(&ipc_open, 1, __ATOMIC_SEQ_CST);
  }
}
static struct vmap *vmap_of(CUdeviceptr p) {
  for (int i = 0; i < MAX_MAPS; i++)
    if (vmaps[i].base && p >= vmaps[i].base && p < vmaps[i].base + vmaps[i].size) return &vmaps[i];
  return NULL;
}

CUresult cuMemGetAllocationGranularity(size_t *granularity, const void *prop, int option) {
  count_call(__func__);
  (void)prop, (void)option;
  *granularity = 65536;
  return CUDA_SUCCESS;
}
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const void *prop,
                     unsigned long long flags) {
  count_call(__func__);
  (void)flags;
  if (size == 0 || size % 65536) return CUDA_ERROR_INVALID_VALUE;
  int types = ((const int *)prop)[1]; /* CUmemAllocationProp.requestedHandleTypes */
  char name[48];
  snprintf(name, sizeof name, "/rxfake-vmm-%d-%ld", (int)getpid(), __atomic_add_fetch(&vmm_seq, 1, __ATOMIC_SEQ_CST));
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  shm_unlink(name);
  if (ftruncate(fd, (off_t)size) != 0) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  pthread_mutex_lock(&lock);
  *handle = new_phys(fd, size, 0, types);
  pthread_mutex_unlock(&lock);
  if (!*handle) close(fd);
  return *handle ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct phys *p = phys_of(handle);
  if (p) unref_phys(p);
  pthread_mutex_unlock(&lock);
  return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                             unsigned long long flags) {
  count_call(__func__);
  (void)align, (void)addr, (void)flags;
  void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  *ptr = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}
CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  count_call(__func__);
  return munmap((void *)(uintptr_t)ptr, size) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags) {
  count_call(__func__);
  (void)flags;
  pthread_mutex_lock(&lock);
  struct phys *p = phys_of(handle);
  struct vmap *v = NULL;
  for (int i = 0; p && i < MAX_MAPS && !v; i++)
    if (!vmaps[i].base) v = &vmaps[i];
  void *m = v && offset + size <= p->size
                ? mmap((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, p->fd, (off_t)offset)
                : MAP_FAILED;
  if (m != MAP_FAILED) {
    *v = (struct vmap){ptr, size, (int)(handle - 1)};
    p->refs++;
  }
  pthread_mutex_unlock(&lock);
  return m != MAP_FAILED ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct vmap *v = vmap_of(ptr);
  int ok = v && v->base == ptr && v->size == size;
  if (ok) {
    mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    unref_phys(&phys[v->phys]);
    v->base = 0;
  }
  pthread_mutex_unlock(&lock);
  return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const void *desc, size_t count) {
  count_call(__func__);
  (void)desc;
  pthread_mutex_lock(&lock);
  struct vmap *v = vmap_of(ptr);
  pthread_mutex_unlock(&lock);
  return v && count >= 1 && ptr + size <= v->base + v->size ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct vmap *v = vmap_of((CUdeviceptr)(uintptr_t)addr);
  if (v) {
    phys[v->phys].refs++;
    *handle = (CUmemGenericAllocationHandle)v->phys + 1;
  }
  pthread_mutex_unlock(&lock);
  return v ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
/* The first 16 bytes of CUmemAllocationProp: pinned, the requested handle types,
   on device 0. */
CUresult cuMemGetAllocationPropertiesFromHandle(void *prop, CUmemGenericAllocationHandle handle) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct phys *p = phys_of(handle);
  if (p) {
    int *fields = prop;
    fields[0] = 1, fields[1] = p->types, fields[2] = 1, fields[3] = 0;
  }
  pthread_mutex_unlock(&lock);
  return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
/* CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1; only an allocation created asking
   for it exports one. */
CUresult cuMemExportToShareableHandle(void *shareable, CUmemGenericAllocationHandle handle, int type,
                                      unsigned long long flags) {
  count_call(__func__);
  (void)flags;
  if (type != 1) return CUDA_ERROR_NOT_SUPPORTED;
  pthread_mutex_lock(&lock);
  struct phys *p = phys_of(handle);
  int fd = p && (p->types & 1) ? dup(p->fd) : -1;
  pthread_mutex_unlock(&lock);
  if (fd < 0) return CUDA_ERROR_INVALID_VALUE;
  *(int *)shareable = fd;
  return CUDA_SUCCESS;
}
CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *os_handle, int type) {
  count_call(__func__);
  if (type != 1) return CUDA_ERROR_NOT_SUPPORTED;
  int fd = dup((int)(intptr_t)os_handle);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0) {
    if (fd >= 0) close(fd);
    return CUDA_ERROR_INVALID_VALUE;
  }
  __atomic_add_fetch(&vmm_imports, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_lock(&lock);
  *handle = new_phys(fd, (size_t)st.st_size, 1, 1);
  pthread_mutex_unlock(&lock);
  if (!*handle) close(fd);
  return *handle ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t bytes) {
  count_call(__func__);
  size_t size = bytes ? bytes : 1;
  pthread_mutex_lock(&lock);
  struct mapping *m = free_entry(allocs);
  if (!m) {
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  snprintf(m->name, sizeof m->name, "/rxfake-%d-%ld", (int)getpid(), ++alloc_seq);
  void *p = map_object(m->name, size, 1);
  if (!p) {
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  m->base = (CUdeviceptr)(uintptr_t)p;
  m->size = size;
  pthread_mutex_unlock(&lock);
  *ptr = m->base;
  return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr ptr) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct mapping *m = entry_of(allocs, ptr);
  if (!m || m->base != ptr) {
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
  }
  munmap((void *)(uintptr_t)m->base, m->size);
  shm_unlink(m->name);
  m->base = 0;
  pthread_mutex_unlock(&lock);
  return CUDA_SUCCESS;
}
CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr ptr) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct mapping *m = entry_of(allocs, ptr);
  if (!m) m = entry_of(opened, ptr);
  if (m) {
    if (base) *base = m->base;
    if (size) *size = m->size;
  }
  struct vmap *v = m ? NULL : vmap_of(ptr);
  if (v) {
    if (base) *base = v->base;
    if (size) *size = v->size;
  }
  pthread_mutex_unlock(&lock);
  return m || v ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

/* The IPC handle: "rxfake1\0", the size (8 bytes), the object's name (48 bytes). */
typedef struct { char reserved[64]; } CUipcMemHandle;
static const char HANDLE_MAGIC[8] = "rxfake1";

CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr ptr) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct mapping *m = entry_of(allocs, ptr);
  if (m) {
    memset(handle, 0, sizeof *handle);
    memcpy(handle->reserved, HANDLE_MAGIC, 8);
    memcpy(handle->reserved + 8, &m->size, 8);
    memcpy(handle->reserved + 16, m->name, sizeof m->name);
  }
  pthread_mutex_unlock(&lock);
  return m ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *ptr, CUipcMemHandle handle, unsigned flags) {
  count_call(__func__);
  (void)flags;
  if (memcmp(handle.reserved, HANDLE_MAGIC, 8) != 0) return CUDA_ERROR_INVALID_VALUE;
  size_t size;
  char name[40];
  memcpy(&size, handle.reserved + 8, 8);
  memcpy(name, handle.reserved + 16, sizeof name);
  name[sizeof name - 1] = 0;
  int pid = 0;
  if (sscanf(name, "/rxfake-%d-", &pid) != 1) return CUDA_ERROR_INVALID_VALUE;
  /* The real driver refuses to open a handle in the process that made it. */
  if (pid == (int)getpid()) return CUDA_ERROR_INVALID_CONTEXT;
  pthread_mutex_lock(&lock);
  struct mapping *m = free_entry(opened);
  void *p = m ? map_object(name, size, 0) : NULL;
  if (p) {
    m->base = (CUdeviceptr)(uintptr_t)p;
    m->size = size;
    memcpy(m->name, name, sizeof name);
    __atomic_add_fetch(&ipc_open, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&ipc_opened, 1, __ATOMIC_SEQ_CST);
  }
  pthread_mutex_unlock(&lock);
  if (!p) return CUDA_ERROR_INVALID_HANDLE;
  *ptr = m->base;
  return CUDA_SUCCESS;
}
CUresult cuIpcCloseMemHandle(CUdeviceptr ptr) {
  count_call(__func__);
  pthread_mutex_lock(&lock);
  struct mapping *m = entry_of(opened, ptr);
  if (!m || m->base != ptr) {
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
  }
  munmap((void *)(uintptr_t)m->base, m->size);
  m->base = 0;
  __atomic_sub_fetch(&ipc_open, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&lock);
  return CUDA_SUCCESS;
}
typedef struct { char bytes[16]; } CUuuid;
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice device) {
  count_call(__func__);
  if (device < 0 || device > 1) return CUDA_ERROR_INVALID_VALUE;
  memcpy(uuid->bytes, device ? "rxfake-gpu-0001" : "rxfake-gpu-0000", 16);
  return CUDA_SUCCESS;
}

/* Copies launched (every cuMemcpy*Async call), for tests that count driver calls. */
static long copies;
long fake_cuda_copies(void) { return __atomic_load_n(&copies, __ATOMIC_SEQ_CST); }

static CUresult copy(void *dst, const void *src, size_t n) {
  __atomic_add_fetch(&copies, 1, __ATOMIC_SEQ_CST);
  if (should_fail(&fail_copy)) return CUDA_ERROR_ILLEGAL_ADDRESS;
  if (n) memmove(dst, src, n);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
  count_call(__func__);
  (void)s;
  return copy((void *)(uintptr_t)dst, src, n);
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
  count_call(__func__);
  (void)s;
  return copy(dst, (const void *)(uintptr_t)src, n);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  count_call(__func__);
  (void)s;
  return copy((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
}
static long host_pins;
long fake_cuda_host_pins(void) { return __atomic_load_n(&host_pins, __ATOMIC_SEQ_CST); }
CUresult cuMemHostRegister_v2(void *p, size_t bytes, unsigned flags) {
  count_call(__func__);
  (void)flags;
  if (!p || !bytes) return CUDA_ERROR_INVALID_VALUE;
  __atomic_add_fetch(&host_pins, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
CUresult cuMemHostUnregister(void *p) {
  count_call(__func__);
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  __atomic_sub_fetch(&host_pins, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult error, const char **text) {
  count_call(__func__);
  (void)error;
  *text = "fake CUDA error";
  return CUDA_SUCCESS;
}

/* cuMemcpyBatchAsync (CUDA 12.8's, with failIdx) and its CUDA 13 form: `count`
 * copies in one call, each between any two pointers (the fake's device memory is host
 * memory). The attributes must be given (one at least, the first applying from copy
 * 0), as the real driver asks. */
typedef struct { int type; int id; } CUmemLocation;
typedef struct { int srcAccessOrder; CUmemLocation srcLocHint, dstLocHint; unsigned flags; } CUmemcpyAttributes;
static long batched;
long fake_cuda_batched(void) { return __atomic_load_n(&batched, __ATOMIC_SEQ_CST); }
static CUresult batch(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                      CUmemcpyAttributes *attrs, size_t *attrs_idxs, size_t num_attrs, size_t *fail_idx) {
  if (!dsts || !srcs || !sizes || !count || !attrs || !attrs_idxs || num_attrs == 0 || attrs_idxs[0] != 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (attrs[0].srcAccessOrder < 1 || attrs[0].srcAccessOrder > 3) return CUDA_ERROR_INVALID_VALUE;
  if (should_fail(&fail_batch)) {
    if (fail_idx) *fail_idx = 0;
    return CUDA_ERROR_INVALID_VALUE;
  }
  for (size_t i = 0; i < count; i++) {
    if (sizes[i]) memmove((void *)(uintptr_t)dsts[i], (const void *)(uintptr_t)srcs[i], sizes[i]);
  }
  __atomic_add_fetch(&batched, (long)count, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                            CUmemcpyAttributes *attrs, size_t *attrs_idxs, size_t num_attrs, size_t *fail_idx,
                            CUstream s) {
  count_call(__func__);
  (void)s;
  return batch(dsts, srcs, sizes, count, attrs, attrs_idxs, num_attrs, fail_idx);
}
CUresult cuMemcpyBatchAsync_v2(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                               CUmemcpyAttributes *attrs, size_t *attrs_idxs, size_t num_attrs, CUstream s) {
  count_call(__func__);
  (void)s;
  return batch(dsts, srcs, sizes, count, attrs, attrs_idxs, num_attrs, NULL);
}
