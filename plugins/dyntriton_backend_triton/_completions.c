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
#include <stddef.h>
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
    /* Signal only an empty queue: events already queued were signalled and not drained yet (dt_drain
     * consumes the signal before it takes the lock, so it copies this event too). Saves a syscall and
     * a wake-up per event under load. */
    int signal = queue_count == 0;
    dt_event *event = &queue_events[queue_count++];
    event->kind = kind;
    event->flags = flags;
    event->object = object;
    event->key = (uint64_t)(uintptr_t)userp;
    int fd = queue_fd;
    pthread_mutex_unlock(&queue_lock);
    uint64_t one = 1;
    while (signal && write(fd, &one, sizeof one) < 0 && errno == EINTR) {
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

/* ==============================================================================================
 * The worker's unary fast path: serialized ModelInferRequest -> Triton request -> serialized
 * ModelInferResponse header + output buffers, with no Python object per field.
 *
 * dt_parse reads the request's wire bytes (a minimal protobuf reader) and says whether the request
 * is a plain one: no parameters (request, input or output level: sequences, priorities, timeouts,
 * classification and shared memory all travel as parameters), inputs only as raw_input_contents
 * (one per input), Triton datatypes, at most DT_MAX_TENSORS inputs and outputs, every field known
 * and each singular field present at most once. Anything else is left to the Python path, so the
 * answers stay exactly the ones it gives. dt_submit then makes the same Triton calls in the same
 * order as the Python path (server.py TritonServer.infer), so a failing call fails the same way.
 *
 * Lifetime of a call (dt_call): three references, one per party: Triton's request-release
 * callback, Triton's final response callback, and Python (dropped by dt_call_free once Triton is
 * done with the call: final response seen and, for a large request, its release event too). Cancel
 * takes the call's lock and cancels only while Triton has not released the request, so it never
 * touches a deleted request. A small request's bytes are copied (Triton reads the copy, freed with
 * the call, and no release event is pushed); a large one's are Python's, kept alive by Python until
 * the call's release event (Triton reads them until then). Outputs of up to DT_INLINE_OUTPUTS bytes
 * in all are copied into the response's bytes, which then is complete. Larger outputs stay in the
 * buffers dt_alloc handed Triton: the response callback adopts each (Python's reference) before
 * deleting the response, so the bytes outlive it and are freed by dt_free when Python's last view goes.
 * ============================================================================================== */

#define DT_FAST_RESPONSE 3
#define DT_FAST_RELEASED 4
#define DT_MAX_TENSORS 16
#define DT_MAX_DIMS 32

typedef struct {
    uint32_t offset; /* of the bytes in the parsed buffer */
    uint32_t length;
} dt_span;

typedef struct {
    dt_span name;
    dt_span datatype;
    dt_span shape;       /* the packed field's contents (or the offsets of unpacked values: see dims) */
    dt_span raw;         /* the matching raw_input_contents entry */
    int32_t type;        /* TRITONSERVER_DataType */
    uint32_t dims;
    int64_t shape_values[DT_MAX_DIMS];
} dt_parsed_input;

typedef struct {
    dt_span model_name;
    dt_span model_version;
    dt_span id;
    uint32_t input_count;
    uint32_t output_count;
    uint32_t raw_count;
    int64_t version; /* -1: latest */
    dt_parsed_input inputs[DT_MAX_TENSORS];
    dt_span outputs[DT_MAX_TENSORS];
} dt_parsed;

/* The Triton functions the fast path calls, looked up once in the library Python loaded. */
static struct {
    void *(*request_new)(void **request, void *server, const char *model, int64_t version);
    void *(*request_delete)(void *request);
    void *(*request_set_id)(void *request, const char *id);
    void *(*add_input)(void *request, const char *name, int datatype, const int64_t *shape, uint64_t dims);
    void *(*append_input_data)(void *request, const char *name, const void *base, size_t size, int memory_type,
                               int64_t memory_type_id);
    void *(*add_requested_output)(void *request, const char *name);
    void *(*set_release_callback)(void *request, void (*fn)(void *, uint32_t, void *), void *userp);
    void *(*set_response_callback)(void *request, void *allocator, void *allocator_userp,
                                   void (*fn)(void *, uint32_t, void *), void *userp);
    void *(*infer_async)(void *server, void *request, void *trace);
    void *(*request_cancel)(void *request);
    void *(*response_delete)(void *response);
    void *(*response_error)(void *response);
    void *(*output_count)(void *response, uint32_t *count);
    void *(*output)(void *response, uint32_t index, const char **name, int *datatype, const int64_t **shape,
                    uint64_t *dims, const void **base, size_t *size, int *memory_type, int64_t *memory_type_id,
                    void **userp);
    int (*error_code)(void *error);
    const char *(*error_message)(void *error);
    void (*error_delete)(void *error);
} triton;

static int bound = 0;

/* Look the Triton functions up in `handle` (ctypes' handle of libtritonserver); 0 on success. */
int dt_bind(void *handle) {
#define DT_SYM(field, symbol)                                                                                         \
    do {                                                                                                              \
        *(void **)(&triton.field) = dlsym(handle, symbol);                                                            \
        if (triton.field == NULL) {                                                                                   \
            return -1;                                                                                                \
        }                                                                                                             \
    } while (0)
    DT_SYM(request_new, "TRITONSERVER_InferenceRequestNew");
    DT_SYM(request_delete, "TRITONSERVER_InferenceRequestDelete");
    DT_SYM(request_set_id, "TRITONSERVER_InferenceRequestSetId");
    DT_SYM(add_input, "TRITONSERVER_InferenceRequestAddInput");
    DT_SYM(append_input_data, "TRITONSERVER_InferenceRequestAppendInputData");
    DT_SYM(add_requested_output, "TRITONSERVER_InferenceRequestAddRequestedOutput");
    DT_SYM(set_release_callback, "TRITONSERVER_InferenceRequestSetReleaseCallback");
    DT_SYM(set_response_callback, "TRITONSERVER_InferenceRequestSetResponseCallback");
    DT_SYM(infer_async, "TRITONSERVER_ServerInferAsync");
    DT_SYM(request_cancel, "TRITONSERVER_InferenceRequestCancel");
    DT_SYM(response_delete, "TRITONSERVER_InferenceResponseDelete");
    DT_SYM(response_error, "TRITONSERVER_InferenceResponseError");
    DT_SYM(output_count, "TRITONSERVER_InferenceResponseOutputCount");
    DT_SYM(output, "TRITONSERVER_InferenceResponseOutput");
    DT_SYM(error_code, "TRITONSERVER_ErrorCode");
    DT_SYM(error_message, "TRITONSERVER_ErrorMessage");
    DT_SYM(error_delete, "TRITONSERVER_ErrorDelete");
#undef DT_SYM
    bound = 1;
    return 0;
}

/* TRITONSERVER_DataType names in enum order (capi.DATATYPE_NAMES). */
static const char *const datatype_names[] = {"INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                             "INT32",   "INT64", "FP16",  "FP32",   "FP64",   "BYTES", "BF16"};
#define DT_DATATYPES ((int)(sizeof datatype_names / sizeof datatype_names[0]))

static int datatype_of(const uint8_t *text, uint32_t length) {
    for (int i = 1; i < DT_DATATYPES; i++) {
        if (strlen(datatype_names[i]) == length && memcmp(datatype_names[i], text, length) == 0) {
            return i;
        }
    }
    return 0;
}

/* -- a minimal protobuf wire reader ------------------------------------------------------------ */

static int read_varint(const uint8_t *buf, size_t end, size_t *pos, uint64_t *value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= end) {
            return -1;
        }
        uint8_t byte = buf[(*pos)++];
        result |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = result;
            return 0;
        }
    }
    return -1;
}

/* A length-delimited field's span at *pos (after its tag); advances past it. */
static int read_span(const uint8_t *buf, size_t end, size_t *pos, dt_span *span) {
    uint64_t length;
    if (read_varint(buf, end, pos, &length) || length > end - *pos || *pos > UINT32_MAX) {
        return -1;
    }
    span->offset = (uint32_t)*pos;
    span->length = (uint32_t)length;
    *pos += length;
    return 0;
}

static int parse_input(const uint8_t *buf, dt_span outer, dt_parsed_input *input) {
    size_t pos = outer.offset, end = (size_t)outer.offset + outer.length;
    int seen_name = 0, seen_datatype = 0;
    input->dims = 0;
    while (pos < end) {
        uint64_t tag;
        if (read_varint(buf, end, &pos, &tag)) {
            return -1;
        }
        uint32_t field = (uint32_t)(tag >> 3), wire = (uint32_t)(tag & 7);
        if (field == 1 && wire == 2 && !seen_name++) {
            if (read_span(buf, end, &pos, &input->name)) {
                return -1;
            }
        } else if (field == 2 && wire == 2 && !seen_datatype++) {
            if (read_span(buf, end, &pos, &input->datatype)) {
                return -1;
            }
        } else if (field == 3 && wire == 2) { /* packed shape (may come in several pieces) */
            dt_span packed;
            if (read_span(buf, end, &pos, &packed)) {
                return -1;
            }
            size_t at = packed.offset, stop = (size_t)packed.offset + packed.length;
            while (at < stop) {
                uint64_t value;
                if (input->dims == DT_MAX_DIMS || read_varint(buf, stop, &at, &value)) {
                    return -1;
                }
                input->shape_values[input->dims++] = (int64_t)value;
            }
        } else if (field == 3 && wire == 0) { /* an unpacked shape value */
            uint64_t value;
            if (input->dims == DT_MAX_DIMS || read_varint(buf, end, &pos, &value)) {
                return -1;
            }
            input->shape_values[input->dims++] = (int64_t)value;
        } else {
            return -1; /* parameters, contents or anything unknown: the Python path */
        }
    }
    input->type = datatype_of(buf + input->datatype.offset, input->datatype.length);
    return (input->name.length && input->type) ? 0 : -1;
}

static int parse_output(const uint8_t *buf, dt_span outer, dt_span *name) {
    size_t pos = outer.offset, end = (size_t)outer.offset + outer.length;
    int seen = 0;
    name->length = 0;
    while (pos < end) {
        uint64_t tag;
        if (read_varint(buf, end, &pos, &tag)) {
            return -1;
        }
        if (tag != ((1 << 3) | 2) || seen++ || read_span(buf, end, &pos, name)) {
            return -1; /* parameters (classification, shared memory) or anything unknown */
        }
    }
    return name->length ? 0 : -1;
}

#define DT_MAX_NAME 4095 /* longer names (never seen in practice) take the Python path */

/* 1 when a name cannot be passed on as a C string here: it holds a NUL or is too long. */
static int has_nul(const uint8_t *buf, dt_span span) {
    return span.length > DT_MAX_NAME || memchr(buf + span.offset, 0, span.length) != NULL;
}

/* 1 when `buf` is a plain unary request the fast path serves (filled into `out`), else 0. */
int dt_parse(const uint8_t *buf, size_t size, dt_parsed *out) {
    size_t pos = 0;
    int seen_model = 0, seen_version = 0, seen_id = 0;
    memset(out, 0, offsetof(dt_parsed, inputs));
    if (size > UINT32_MAX) {
        return 0;
    }
    while (pos < size) {
        uint64_t tag;
        dt_span span;
        if (read_varint(buf, size, &pos, &tag) || (tag & 7) != 2 || read_span(buf, size, &pos, &span)) {
            return 0;
        }
        switch (tag >> 3) {
        case 1:
            if (seen_model++) {
                return 0;
            }
            out->model_name = span;
            break;
        case 2:
            if (seen_version++) {
                return 0;
            }
            out->model_version = span;
            break;
        case 3:
            if (seen_id++) {
                return 0;
            }
            out->id = span;
            break;
        case 5:
            if (out->input_count == DT_MAX_TENSORS || parse_input(buf, span, &out->inputs[out->input_count])) {
                return 0;
            }
            out->input_count++;
            break;
        case 6:
            if (out->output_count == DT_MAX_TENSORS || parse_output(buf, span, &out->outputs[out->output_count])) {
                return 0;
            }
            out->output_count++;
            break;
        case 7:
            if (out->raw_count == DT_MAX_TENSORS) {
                return 0;
            }
            out->inputs[out->raw_count++].raw = span;
            break;
        default:
            return 0; /* parameters (4) or unknown fields */
        }
    }
    if (!out->model_name.length || !out->input_count || out->raw_count != out->input_count ||
        has_nul(buf, out->model_name) || memchr(buf + out->id.offset, 0, out->id.length) != NULL) {
        return 0;
    }
    for (uint32_t i = 0; i < out->input_count; i++) {
        if (has_nul(buf, out->inputs[i].name)) {
            return 0;
        }
    }
    for (uint32_t i = 0; i < out->output_count; i++) {
        if (has_nul(buf, out->outputs[i])) {
            return 0;
        }
    }
    /* model_version: empty (latest) or plain decimal digits; anything else gets Python's answer. */
    out->version = -1;
    if (out->model_version.length) {
        if (out->model_version.length > 18) {
            return 0;
        }
        int64_t version = 0;
        for (uint32_t i = 0; i < out->model_version.length; i++) {
            uint8_t digit = buf[out->model_version.offset + i];
            if (digit < '0' || digit > '9') {
                return 0;
            }
            version = version * 10 + (digit - '0');
        }
        out->version = version;
    }
    return 1;
}

/* -- a growing byte buffer for the response header ---------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t size;
    size_t capacity;
    int failed;
} dt_bytes;

static void put(dt_bytes *out, const void *data, size_t size) {
    if (out->failed) {
        return;
    }
    if (out->size + size > out->capacity) {
        size_t capacity = out->capacity ? out->capacity : 128;
        while (capacity < out->size + size) {
            capacity *= 2;
        }
        uint8_t *grown = realloc(out->data, capacity);
        if (grown == NULL) {
            out->failed = 1;
            return;
        }
        out->data = grown;
        out->capacity = capacity;
    }
    memcpy(out->data + out->size, data, size);
    out->size += size;
}

static size_t varint_size(uint64_t value) {
    size_t size = 1;
    while (value >= 0x80) {
        value >>= 7;
        size++;
    }
    return size;
}

static void put_varint(dt_bytes *out, uint64_t value) {
    uint8_t bytes[10];
    size_t n = 0;
    while (value >= 0x80) {
        bytes[n++] = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    bytes[n++] = (uint8_t)value;
    put(out, bytes, n);
}

/* A string field as protobuf writes it: left out when empty (proto3). */
static void put_string(dt_bytes *out, uint32_t field, const void *text, size_t length) {
    if (length == 0) {
        return;
    }
    put_varint(out, (field << 3) | 2);
    put_varint(out, length);
    put(out, text, length);
}

/* -- calls ---------------------------------------------------------------------------------------- */

typedef struct {
    pthread_mutex_t lock;
    uint32_t refs;     /* atomic: release callback + final response callback + Python */
    int released;      /* under lock: Triton released (and we deleted) the request */
    void *request;     /* under lock: NULL once released */
    uint64_t key;      /* Python's key for the call's events */
    int notify;        /* push a release event (Triton read Python's bytes; else it read our copy) */
    uint8_t *copy;     /* a small request's bytes, copied: Python need not keep them */
    dt_bytes prefix;   /* the response header's model_name, model_version and id fields */
} dt_call;

/* Outputs up to this many bytes in all are copied into the response's bytes (one Python object). */
#define DT_INLINE_OUTPUTS 65536

/* What a response callback hands Python (event object of DT_FAST_RESPONSE); freed by dt_result_free. */
typedef struct {
    int32_t error_code; /* -1: no error */
    uint32_t output_count;
    char *error_message;
    uint8_t *header; /* serialized ModelInferResponse without its raw_output_contents */
    uint64_t header_size;
    void *data[DT_MAX_TENSORS]; /* output buffers (Python holds one reference each; NULL: empty) */
    uint64_t size[DT_MAX_TENSORS];
} dt_result;

static void call_unref(dt_call *call) {
    if (__atomic_sub_fetch(&call->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        pthread_mutex_destroy(&call->lock);
        free(call->prefix.data);
        free(call->copy);
        free(call);
    }
}

static void fast_release(void *request, uint32_t flags, void *userp) {
    dt_call *call = userp;
    pthread_mutex_lock(&call->lock);
    call->released = 1;
    call->request = NULL;
    pthread_mutex_unlock(&call->lock);
    void *error = triton.request_delete(request);
    if (error) {
        triton.error_delete(error);
    }
    if (call->notify) {
        push(DT_FAST_RELEASED, call, flags, (void *)(uintptr_t)call->key);
    }
    call_unref(call);
}

static char *copy_text(const char *text) {
    size_t length = strlen(text ? text : "");
    char *copy = malloc(length + 1);
    if (copy) {
        memcpy(copy, text ? text : "", length + 1);
    }
    return copy;
}

/* Read `response` into a result: its error, or its header and its outputs' buffers (adopted). */
static void read_response(dt_call *call, void *response, dt_result *result) {
    dt_bytes header = {0};
    put(&header, call->prefix.data, call->prefix.size);
    if (response != NULL) {
        void *error = triton.response_error(response); /* owned by the response */
        if (error != NULL) {
            result->error_code = triton.error_code(error);
            result->error_message = copy_text(triton.error_message(error));
            free(header.data);
            return;
        }
        uint32_t count = 0;
        error = triton.output_count(response, &count);
        if (error == NULL && count > DT_MAX_TENSORS) {
            result->error_code = 1; /* INTERNAL */
            result->error_message = copy_text("reading Triton's response failed: too many outputs");
            free(header.data);
            return;
        }
        for (uint32_t i = 0; error == NULL && i < count; i++) {
            const char *name = NULL;
            int datatype = 0, memory_type = 0;
            const int64_t *shape = NULL;
            uint64_t dims = 0;
            const void *base = NULL;
            size_t size = 0;
            int64_t memory_type_id = 0;
            void *userp = NULL;
            error = triton.output(response, i, &name, &datatype, &shape, &dims, &base, &size, &memory_type,
                                  &memory_type_id, &userp);
            if (error != NULL) {
                break;
            }
            /* InferOutputTensor: name (1), datatype (2), shape (3, packed int64) */
            const char *type = datatype >= 0 && datatype < DT_DATATYPES ? datatype_names[datatype] : "INVALID";
            size_t name_length = strlen(name ? name : ""), type_length = strlen(type), packed = 0;
            for (uint64_t d = 0; d < dims; d++) {
                packed += varint_size((uint64_t)shape[d]);
            }
            size_t inner = (name_length ? 1 + varint_size(name_length) + name_length : 0) + 1 +
                           varint_size(type_length) + type_length + (dims ? 1 + varint_size(packed) + packed : 0);
            put_varint(&header, (5 << 3) | 2);
            put_varint(&header, inner);
            put_string(&header, 1, name, name_length);
            put_string(&header, 2, type, type_length);
            if (dims) {
                put_varint(&header, (3 << 3) | 2);
                put_varint(&header, packed);
                for (uint64_t d = 0; d < dims; d++) {
                    put_varint(&header, (uint64_t)shape[d]);
                }
            }
            result->size[i] = size;
            result->output_count = i + 1;
            if (size == 0 || base == NULL) {
                result->data[i] = NULL;
                result->size[i] = 0;
            } else {
                result->data[i] = (void *)base; /* adopted or copied below, once all are read */
            }
        }
        uint64_t total = 0;
        for (uint32_t i = 0; error == NULL && i < result->output_count; i++) {
            total += result->size[i];
        }
        if (error == NULL && total <= DT_INLINE_OUTPUTS) { /* small: the whole response in one buffer */
            for (uint32_t i = 0; i < result->output_count; i++) {
                put_varint(&header, (6 << 3) | 2);
                put_varint(&header, result->size[i]);
                put(&header, result->data[i], result->size[i]);
            }
            result->output_count = 0;
        }
        for (uint32_t i = 0; error == NULL && i < result->output_count; i++) {
            const void *base = result->data[i];
            size_t size = result->size[i];
            if (base == NULL) {
                continue;
            }
            if (dt_owns((void *)base, size)) {
                dt_adopt((void *)base);
            } else { /* memory Triton kept for itself: copy it into a buffer of ours */
                dt_header *copy = malloc(sizeof(dt_header) + size);
                if (copy == NULL) {
                    for (uint32_t j = 0; j < i; j++) { /* give back what was taken so far */
                        dt_free(result->data[j]);
                    }
                    result->output_count = 0;
                    result->error_code = 1;
                    result->error_message = copy_text("reading Triton's response failed: out of memory");
                    free(header.data);
                    return;
                }
                copy->magic = DT_MAGIC;
                copy->refs = 1;
                copy->size = size;
                memcpy(copy + 1, base, size);
                result->data[i] = copy + 1;
            }
        }
        if (error != NULL) {
            result->output_count = 0; /* nothing was adopted */
            result->error_code = 1; /* INTERNAL, as the Python path says */
            const char *message = triton.error_message(error);
            size_t length = strlen(message ? message : "") + 64;
            result->error_message = malloc(length);
            if (result->error_message) {
                snprintf(result->error_message, length, "reading Triton's response failed: %s", message ? message : "");
            }
            triton.error_delete(error);
            free(header.data);
            return;
        }
    }
    if (header.failed) {
        for (uint32_t i = 0; i < result->output_count; i++) {
            dt_free(result->data[i]); /* give back the adopted buffers */
        }
        result->output_count = 0;
        result->error_code = 1;
        result->error_message = copy_text("reading Triton's response failed: out of memory");
        free(header.data);
        return;
    }
    result->header = header.data;
    result->header_size = header.size;
}

static void fast_response(void *response, uint32_t flags, void *userp) {
    dt_call *call = userp;
    int final = (flags & 1) != 0; /* TRITONSERVER_RESPONSE_COMPLETE_FINAL */
    if (response == NULL && !final) {
        return;
    }
    dt_result *result = calloc(1, sizeof(dt_result));
    if (result != NULL) {
        result->error_code = -1;
        read_response(call, response, result);
    }
    if (response != NULL) {
        void *error = triton.response_delete(response);
        if (error) {
            triton.error_delete(error);
        }
    }
    /* A NULL result (out of memory) still tells Python the call ended: it answers INTERNAL. */
    push(DT_FAST_RESPONSE, result, flags, (void *)(uintptr_t)call->key);
    if (final) {
        call_unref(call);
    }
}

/* Build and submit the request `parsed` describes (its spans point into `buf`, which Python keeps
 * alive until the call's DT_FAST_RELEASED event). `version` is the model_version the response names.
 * Returns NULL with *out set (a call Python frees with dt_call_free after its release event), or
 * Triton's error (nothing was submitted; *out is NULL). */
void *dt_submit(void *server, void *allocator, const uint8_t *buf, size_t size, size_t copy_limit,
                const dt_parsed *parsed, const char *version, uint64_t key, dt_call **out) {
    char name[4096];
    *out = NULL;
    dt_call *call = calloc(1, sizeof(dt_call));
    if (call == NULL || !bound) {
        free(call);
        return error_new(1, "dyntriton: the fast path cannot start a request (out of memory)");
    }
    pthread_mutex_init(&call->lock, NULL);
    call->refs = 3;
    call->key = key;
    call->notify = 1;
    if (size <= copy_limit) { /* Triton reads a copy: Python need not wait for the release */
        call->copy = malloc(size ? size : 1);
        if (call->copy != NULL) {
            memcpy(call->copy, buf, size);
            buf = call->copy;
            call->notify = 0;
        }
    }
    put_string(&call->prefix, 1, buf + parsed->model_name.offset, parsed->model_name.length);
    put_string(&call->prefix, 2, version, strlen(version));
    put_string(&call->prefix, 3, buf + parsed->id.offset, parsed->id.length);
    void *request = NULL;
    void *error = NULL;
#define DT_TEXT(span)                                                                                                 \
    (span.length < sizeof name ? (memcpy(name, buf + span.offset, span.length), name[span.length] = 0, name) : NULL)
    const char *model = DT_TEXT(parsed->model_name);
    if (model == NULL || call->prefix.failed) {
        error = error_new(3 /* INVALID_ARG */, "dyntriton: a name in the request is too long");
        goto failed;
    }
    error = triton.request_new(&request, server, model, parsed->version);
    if (error) {
        goto failed;
    }
    if (parsed->id.length) {
        char *id = malloc(parsed->id.length + 1);
        if (id == NULL) {
            error = error_new(1, "dyntriton: out of memory");
            goto failed;
        }
        memcpy(id, buf + parsed->id.offset, parsed->id.length);
        id[parsed->id.length] = 0;
        error = triton.request_set_id(request, id);
        free(id);
        if (error) {
            goto failed;
        }
    }
    for (uint32_t i = 0; i < parsed->input_count; i++) {
        const dt_parsed_input *input = &parsed->inputs[i];
        const char *input_name = DT_TEXT(input->name);
        if (input_name == NULL) {
            error = error_new(3, "dyntriton: a name in the request is too long");
            goto failed;
        }
        error = triton.add_input(request, input_name, input->type, input->shape_values, input->dims);
        if (error) {
            goto failed;
        }
        const void *base = input->raw.length ? buf + input->raw.offset : NULL;
        error = triton.append_input_data(request, input_name, base, input->raw.length, 0, 0);
        if (error) {
            goto failed;
        }
    }
    for (uint32_t i = 0; i < parsed->output_count; i++) {
        const char *output_name = DT_TEXT(parsed->outputs[i]);
        if (output_name == NULL) {
            error = error_new(3, "dyntriton: a name in the request is too long");
            goto failed;
        }
        error = triton.add_requested_output(request, output_name);
        if (error) {
            goto failed;
        }
    }
#undef DT_TEXT
    error = triton.set_release_callback(request, fast_release, call);
    if (error) {
        goto failed;
    }
    error = triton.set_response_callback(request, allocator, NULL, fast_response, call);
    if (error) {
        goto failed;
    }
    call->request = request;
    error = triton.infer_async(server, request, NULL);
    if (error) {
        call->request = NULL;
        goto failed;
    }
    *out = call;
    return NULL;
failed:
    if (request != NULL) {
        void *deleted = triton.request_delete(request);
        if (deleted) {
            triton.error_delete(deleted);
        }
    }
    pthread_mutex_destroy(&call->lock);
    free(call->prefix.data);
    free(call->copy);
    free(call);
    return error;
}

/* Ask Triton to cancel the call's request, if it still holds it. */
void dt_call_cancel(dt_call *call) {
    pthread_mutex_lock(&call->lock);
    if (!call->released && call->request != NULL) {
        void *error = triton.request_cancel(call->request);
        if (error) {
            triton.error_delete(error);
        }
    }
    pthread_mutex_unlock(&call->lock);
}

/* Python's reference to the call, given back once it saw the call's release event. */
void dt_call_free(dt_call *call) { call_unref(call); }

/* Free a result (not the output buffers: Python holds those and frees them with dt_free). */
void dt_result_free(dt_result *result) {
    if (result != NULL) {
        free(result->error_message);
        free(result->header);
        free(result);
    }
}
