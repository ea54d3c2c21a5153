/*
 * Triton's callbacks for dyntriton, in C, so Triton's threads never take Python's GIL.
 *
 * Triton calls four functions per request on its own threads: the response allocator's
 * alloc and release, the response-complete callback and the request-release callback. As
 * ctypes callbacks each took the GIL from the event loop thread (a contended handoff, several
 * per request). Here they take no Python lock at all:
 *
 *   - alloc hands out malloc'ed memory behind a small header holding a reference count: one
 *     reference for Triton (dropped by release), one more for Python once it adopts the buffer
 *     to hand the tensor on without copying (dropped by dt_free when its last view goes). The
 *     buffer is freed by whichever comes last, on whatever thread: Python may drop a view
 *     (a classified output replaced by its top-K) before Triton releases the response.
 *   - an output the request asked into a shared-memory region (the alloc userp lists them, see
 *     dt_regions) is written straight into the region: alloc returns the region's pointer, marked
 *     by a non-NULL buffer userp so that release leaves it alone.
 *   - response-complete and request-release append an event to a queue and signal an eventfd;
 *     the event loop watches the eventfd and drains the queue in batches with dt_drain, on its
 *     own thread, with the GIL it already holds.
 *
 * Pure C: no Python API and no link against libtritonserver (TRITONSERVER_ErrorNew is found at
 * run time, only to report a failed allocation). Loaded with ctypes by completions.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define DT_RESPONSE 1
#define DT_RELEASED 2

typedef struct {
    int32_t kind;     /* DT_RESPONSE or DT_RELEASED */
    uint32_t flags;   /* Triton's flags for the callback */
    void *object;     /* the TRITONSERVER_InferenceResponse or TRITONSERVER_InferenceRequest */
    uint64_t key;     /* the userp given when the request was set up */
} dt_event;

#define DT_MAGIC 0x64747269u /* "dtri": marks a buffer dt_alloc handed out */

typedef struct {
    uint32_t magic;
    uint32_t refs; /* Triton's (until release) + Python's (from dt_adopt until dt_free); atomic */
    uint64_t size;
} dt_header; /* 16 bytes: keeps the buffer after it 16-byte aligned */

/* Drop one reference; the last one frees the buffer. */
static void unref(dt_header *header) {
    if (__atomic_sub_fetch(&header->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        header->magic = 0;
        free(header);
    }
}

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static dt_event *queue_events = NULL;
static size_t queue_count = 0;
static size_t queue_capacity = 0;
static int queue_fd = -1;
static uint64_t dropped = 0;

/* Create (once) and return the eventfd the event loop watches; -1 with errno on failure. */
int dt_init(void) {
    pthread_mutex_lock(&queue_lock);
    if (queue_fd < 0) {
        queue_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    }
    int fd = queue_fd;
    pthread_mutex_unlock(&queue_lock);
    return fd;
}

static void push(int32_t kind, void *object, uint32_t flags, void *userp) {
    pthread_mutex_lock(&queue_lock);
    if (queue_count == queue_capacity) {
        size_t capacity = queue_capacity ? queue_capacity * 2 : 256;
        dt_event *grown = realloc(queue_events, capacity * sizeof(dt_event));
        if (grown == NULL) { /* cannot happen in practice; counted so Python can report it */
            dropped++;
            pthread_mutex_unlock(&queue_lock);
            return;
        }
        queue_events = grown;
        queue_capacity = capacity;
    }
    dt_event *event = &queue_events[queue_count++];
    event->kind = kind;
    event->flags = flags;
    event->object = object;
    event->key = (uint64_t)(uintptr_t)userp;
    int fd = queue_fd;
    pthread_mutex_unlock(&queue_lock);
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

/* Move up to `max` events into `out`; returns how many. Call after the eventfd turned readable. */
size_t dt_drain(dt_event *out, size_t max) {
    uint64_t signals;
    /* Consume the signal first: an event pushed after the copy below signals again. */
    while (read(queue_fd, &signals, sizeof signals) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&queue_lock);
    size_t n = queue_count < max ? queue_count : max;
    memcpy(out, queue_events, n * sizeof(dt_event));
    memmove(queue_events, queue_events + n, (queue_count - n) * sizeof(dt_event));
    queue_count -= n;
    size_t left = queue_count;
    pthread_mutex_unlock(&queue_lock);
    if (left) { /* more than `max` waiting: stay readable */
        uint64_t one = 1;
        while (write(queue_fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
    return n;
}

uint64_t dt_dropped(void) {
    pthread_mutex_lock(&queue_lock);
    uint64_t value = dropped;
    pthread_mutex_unlock(&queue_lock);
    return value;
}

/* TRITONSERVER_InferenceResponseCompleteFn_t */
void dt_response_complete(void *response, uint32_t flags, void *userp) { push(DT_RESPONSE, response, flags, userp); }

/* TRITONSERVER_InferenceRequestReleaseFn_t */
void dt_request_release(void *request, uint32_t flags, void *userp) { push(DT_RELEASED, request, flags, userp); }

typedef void *(*error_new_fn)(int code, const char *message);

/* One output a request asked into a shared-memory region: where it goes and how much room there is. */
typedef struct {
    const char *name;
    void *base;
    uint64_t size;
} dt_region;

/* The alloc userp of a request with outputs in regions (NULL for every other request). */
typedef struct {
    uint64_t count;
    dt_region *regions;
} dt_regions;

static void *error_new(int code, const char *message) {
    error_new_fn make = (error_new_fn)dlsym(RTLD_DEFAULT, "TRITONSERVER_ErrorNew");
    return make ? make(code, message) : NULL;
}

/* TRITONSERVER_ResponseAllocatorAllocFn_t: CPU memory, always. */
void *dt_alloc(void *allocator, const char *name, size_t byte_size, int memory_type, int64_t memory_type_id,
               void *userp, void **buffer, void **buffer_userp, int *actual_memory_type,
               int64_t *actual_memory_type_id) {
    (void)allocator, (void)memory_type, (void)memory_type_id;
    *actual_memory_type = 0; /* TRITONSERVER_MEMORY_CPU */
    *actual_memory_type_id = 0;
    *buffer_userp = NULL;
    if (userp != NULL) {
        dt_regions *wanted = (dt_regions *)userp;
        for (uint64_t i = 0; i < wanted->count; i++) {
            dt_region *region = &wanted->regions[i];
            if (strcmp(region->name, name) != 0) {
                continue;
            }
            if (byte_size > region->size) {
                char message[512];
                snprintf(message, sizeof message,
                         "shared memory size specified with the request for output '%s' (%llu bytes) should be at "
                         "least %llu bytes to hold the results",
                         name, (unsigned long long)region->size, (unsigned long long)byte_size);
                *buffer = NULL;
                return error_new(1 /* TRITONSERVER_ERROR_INTERNAL */, message);
            }
            *buffer = region->base;
            *buffer_userp = region; /* non-NULL: not ours to free */
            return NULL;
        }
    }
    if (byte_size == 0) {
        *buffer = NULL;
        return NULL;
    }
    dt_header *header = malloc(sizeof(dt_header) + byte_size);
    if (header == NULL) {
        *buffer = NULL;
        return error_new(1 /* TRITONSERVER_ERROR_INTERNAL */, "dyntriton: out of memory for an output");
    }
    header->magic = DT_MAGIC;
    header->refs = 1; /* Triton's, until it calls release */
    header->size = byte_size;
    *buffer = header + 1;
    return NULL;
}

/* TRITONSERVER_ResponseAllocatorReleaseFn_t */
void *dt_release(void *allocator, void *buffer, void *buffer_userp, size_t byte_size, int memory_type,
                 int64_t memory_type_id) {
    (void)allocator, (void)byte_size, (void)memory_type, (void)memory_type_id;
    if (buffer != NULL && buffer_userp == NULL) { /* a region's memory (buffer_userp set) is the client's */
        unref((dt_header *)buffer - 1);
    }
    return NULL;
}

/* Python takes a reference to an output buffer of a live response (it came from dt_alloc and
 * Triton has not released it yet); dt_free gives it back. May be called more than once. */
void dt_adopt(void *buffer) { __atomic_add_fetch(&((dt_header *)buffer - 1)->refs, 1, __ATOMIC_ACQ_REL); }

void dt_free(void *buffer) {
    if (buffer != NULL) {
        unref((dt_header *)buffer - 1);
    }
}

/* 1 when `buffer` came from dt_alloc and holds at least `size` bytes. Only asked about output
 * buffers Triton reports for a live response, which our allocator handed out. */
int dt_owns(void *buffer, uint64_t size) {
    if (buffer == NULL) {
        return 0;
    }
    dt_header *header = (dt_header *)buffer - 1;
    return header->magic == DT_MAGIC && header->size >= size;
}
