/*
 * keymesh._ext - the hot path of the Python binding in C (CPython API).
 *
 * Two types with exactly the interface of keymesh/_hot.py (the ctypes
 * fallback), so that keymesh._pool builds SyncKeyPool and KeyPool on either:
 *
 *   Core   base type of SyncKeyPool / KeyPool: acquire(), release(),
 *          lease(), and the primitives the Python code builds on
 *          (_try_lease, _wait_lease, _acquire_lease, _take, _finish, ...).
 *   Lease  one key handed out; a context manager (with / async with).
 *
 * Only include/keymesh.h is used.  The module does not load libkeymesh
 * itself: keymesh._lib loads it first with RTLD_GLOBAL (its discovery
 * rules: KEYMESH_LIBRARY, KM_BUILD, ...), and this module's reference to
 * libkeymesh.so.0 binds to that copy; keymesh._pool checks it did
 * (acquire_fn_address) before using the module.
 *
 * The GIL: a non-blocking acquire (km_acquire: lock-free, no system call,
 * ~100 ns) and a release hold it.  A blocking acquire releases it around
 * each km_acquire_wait(), which sleeps at most WAIT_CHUNK_MS at a time so
 * that between two sleeps the waiter sees a signal (Ctrl-C), a pool closed
 * under it, and (for asyncio's helper thread) a cancelled task.
 *
 * An HTTP answer (status, headers, body) becomes a km_outcome here
 * (http_outcome: km_http_response straight from the Python objects, then
 * km_outcome_from_http), for report(), _release_http() (keymesh.httpx) and
 * an exception that carries one; the outcome is kept in the Lease as a
 * km_outcome until km_release.
 *
 * Slow or rare work calls back into Python helpers handed over by setup()
 * (raising the binding's exceptions, finding the HTTP answer an exception
 * carries or what its text says, asyncio entry and exit) and into methods of the Python
 * subclass (_reattach after fork or close, _check_segment once a second,
 * _exhausted_check after a failure when exhaust_on_max_failures is set).
 *
 * Outcomes made in Python cross into C as an 11-tuple in km_outcome's
 * field order (keymesh._hot.OTUPLE_FIELDS).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "keymesh.h"

/* Must equal keymesh._hot.WAIT_CHUNK_MS (the Python side passes its own
 * chunk to _wait_lease; this one is for acquire() with a timeout). */
#define WAIT_CHUNK_MS 200u
#define NS_PER_S 1000000000ull

/* ------------------------------------------------------- Python helpers */

static PyObject *H_KeyMeshError, *H_raise, *H_raise_closed, *H_strategy_code,
    *H_meta_loads, *H_exc_http, *H_cancelled, *H_aenter, *H_aexit;

static PyObject *S_reattach, *S_check_segment, *S_exhausted_check, *S_busy, *S_closing,
    *S_ptr, *S_pool_name;

/* Bumped in the child after fork() (pthread_atfork): a Core bound, or a
 * Lease acquired, under another generation belongs to the parent.  Only
 * read and written with the GIL held, except by the atfork handler, which
 * runs in the single-threaded child before any Python code. */
static unsigned long fork_gen;

static void on_fork_child(void)
{
    fork_gen++;
}

/* --------------------------------------------------------------- types */

typedef struct Lease Lease;

typedef struct {
    PyObject_HEAD
    km_env *env;        /* borrowed from envobj.ptr; NULL: unbound */
    int pool;
    unsigned long gen;  /* fork_gen at _bind */
    PyObject *envobj;   /* keymesh._pool._Env, or NULL */
    PyObject *tracked;  /* dict: secret -> Lease (head of a chain by ->next) */
    uint64_t *last;     /* start_ns of the last lease per key index */
    size_t nlast;
    uint64_t checked_ns;
    double acquire_timeout;
    char exhaust;
} Core;

struct Lease {
    PyObject_HEAD
    km_lease c;
    PyObject *pool;      /* Core */
    PyObject *model;     /* str or None */
    PyObject *secret;    /* str, made on first use */
    PyObject *next;      /* next lease of the same secret in Core.tracked */
    PyObject *req_timeout, *req_key_id, *req_strategy; /* until entered */
    PyObject *weakreflist;
    unsigned long gen;
    uint32_t tokens;
    char done, acquired, tracked;
    char has_oc;         /* oc holds what report()/_set_outcome() recorded */
    /* A lease a blocking wait got: when km_acquire_wait returned and when
     * this thread held the GIL again (km_now_ns; 0: it did not wait).
     * bench/py splits the asyncio wake-up latency with them. */
    uint64_t woke_ns, gil_ns;
    km_outcome oc;       /* else the lease ends as a success */
};

static PyTypeObject CoreType, LeaseType;

/* ------------------------------------------------------------- helpers */

/* Call H_raise(rc, what, retry_at): it raises the binding's exception. */
static PyObject *raise_rc(int rc, const char *what, Core *self, uint64_t retry_at)
{
    PyObject *w;
    if (self) {
        PyObject *name = PyObject_GetAttr((PyObject *)self, S_pool_name);
        if (!name)
            PyErr_Clear();
        w = PyUnicode_FromFormat("%s from pool '%S'", what, name ? name : Py_None);
        Py_XDECREF(name);
    } else {
        w = PyUnicode_FromString(what);
    }
    if (!w)
        return NULL;
    PyObject *r = PyObject_CallFunction(H_raise, "iOK", rc, w, (unsigned long long)retry_at);
    Py_DECREF(w);
    if (r) { /* it always raises; never let a call "succeed" silently */
        Py_DECREF(r);
        PyErr_SetString(PyExc_RuntimeError, "keymesh: the error helper did not raise");
    }
    return NULL;
}

static PyObject *kmerror(const char *msg)
{
    PyErr_SetString(H_KeyMeshError ? H_KeyMeshError : PyExc_RuntimeError, msg);
    return NULL;
}

/* self->env after the fork and close checks; NULL with an exception. */
static km_env *core_env(Core *self)
{
    if (self->gen != fork_gen || !self->env) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, S_reattach);
        if (!r)
            return NULL;
        Py_DECREF(r);
        if (!self->env) {
            kmerror("pool is closed");
            return NULL;
        }
    }
    return self->env;
}

static int check_tokens(PyObject *o, uint32_t *out)
{
    if (!o || o == Py_None) {
        *out = 0;
        return 0;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "estimated_tokens must be < 2**32");
        }
        return -1;
    }
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "estimated_tokens must be >= 0 (got %lld)", v);
        return -1;
    }
    if (v > 0xFFFFFFFFll) {
        PyErr_Format(PyExc_ValueError, "estimated_tokens must be < 2**32 (got %lld)", v);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* latency in seconds: None (-1 out), or finite >= 0. */
static int check_latency(PyObject *o, double *out)
{
    if (!o || o == Py_None) {
        *out = -1.0;
        return 0;
    }
    double x = PyFloat_AsDouble(o);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!isfinite(x) || x < 0) {
        PyObject *r = PyObject_Repr(o);
        PyErr_Format(PyExc_ValueError,
                     "latency must be a finite number of seconds >= 0 (got %S)", r);
        Py_XDECREF(r);
        return -1;
    }
    *out = x;
    return 0;
}

static int strategy_code(PyObject *s, int *out)
{
    if (!s || s == Py_None) {
        *out = 0;
        return 0;
    }
    PyObject *r = PyObject_CallOneArg(H_strategy_code, s);
    if (!r)
        return -1;
    long v = PyLong_AsLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int)v;
    return 0;
}

/* UTF-8 of an optional str argument (None: NULL). */
static int opt_utf8(PyObject *o, const char *what, const char **out)
{
    if (!o || o == Py_None) {
        *out = NULL;
        return 0;
    }
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or None", what);
        return -1;
    }
    *out = PyUnicode_AsUTF8(o);
    if (!*out)
        return -1;
    if (!**out)
        *out = NULL; /* "" is no model / no pin, as in the ctypes path */
    return 0;
}

static void outcome_success(km_outcome *o);

static int outcome_from_tuple(PyObject *t, km_outcome *o)
{
    memset(o, 0, sizeof *o);
    if (!t || t == Py_None) {
        outcome_success(o);
        return 0;
    }
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 11) {
        PyErr_SetString(PyExc_TypeError, "keymesh: an outcome is an 11-tuple");
        return -1;
    }
    long long v[11];
    for (int i = 0; i < 11; i++) {
        if (i == 3)
            continue;
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(t, i));
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    double ra = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 3));
    if (ra == -1.0 && PyErr_Occurred())
        return -1;
    o->kind = (int)v[0];
    o->latency_us = v[1];
    o->tokens = v[2];
    o->retry_after_s = ra;
    o->view_flags = (uint32_t)v[4];
    o->requests_remaining = (uint64_t)v[5];
    o->tokens_remaining = (uint64_t)v[6];
    o->requests_reset_ms = (uint64_t)v[7];
    o->tokens_reset_ms = (uint64_t)v[8];
    o->input_tokens = v[9];
    o->output_tokens = v[10];
    return 0;
}

/* A success with nothing known (what a lease without report() ends with). */
static void outcome_success(km_outcome *o)
{
    memset(o, 0, sizeof *o);
    o->kind = KM_OUT_SUCCESS;
    o->latency_us = o->tokens = o->input_tokens = o->output_tokens = -1;
}

/* One header name or value as km_http_response takes it (bytes, 8 bits a
 * character): a new reference to an ASCII str or to bytes, whose text
 * hdr_ptr() gives.  A str with other characters is encoded as latin-1 ('?'
 * for what it cannot hold), anything else goes through str() first: as
 * keymesh._pool._headers_list does for the ctypes path. */
static PyObject *hdr_text(PyObject *x)
{
    if (PyBytes_Check(x) || (PyUnicode_Check(x) && PyUnicode_IS_ASCII(x)))
        return Py_NewRef(x);
    PyObject *s = PyUnicode_Check(x) ? Py_NewRef(x) : PyObject_Str(x);
    if (!s)
        return NULL;
    if (PyUnicode_IS_ASCII(s))
        return s;
    PyObject *b = PyUnicode_AsEncodedString(s, "latin-1", "replace");
    Py_DECREF(s);
    return b;
}

static const char *hdr_ptr(PyObject *t)
{
    /* An ASCII str's UTF-8 is its own (NUL-terminated) storage. */
    return PyBytes_Check(t) ? PyBytes_AS_STRING(t) : PyUnicode_AsUTF8(t);
}

static int hdr_pair(PyObject *keep, PyObject *k, PyObject *v)
{
    PyObject *tk = hdr_text(k);
    if (!tk)
        return -1;
    int rc = PyList_Append(keep, tk);
    Py_DECREF(tk);
    if (rc < 0)
        return -1;
    PyObject *tv = hdr_text(v);
    if (!tv)
        return -1;
    rc = PyList_Append(keep, tv);
    Py_DECREF(tv);
    return rc;
}

/* keep: a new list of 2n header texts (name, value, ...) from `headers`:
 * None, a dict, an object with multi_items() (httpx.Headers: every value
 * of a repeated header) or items() (a mapping), or an iterable of (name,
 * value) pairs such as httpx.Headers.raw. */
static PyObject *hdr_list(PyObject *headers)
{
    PyObject *keep = PyList_New(0);
    if (!keep || headers == Py_None)
        return keep;
    if (PyDict_CheckExact(headers)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(headers, &pos, &k, &v)) {
            /* hdr_text() may run str(): hold the pair meanwhile. */
            Py_INCREF(k);
            Py_INCREF(v);
            int rc = hdr_pair(keep, k, v);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0)
                goto fail;
        }
        return keep;
    }
    PyObject *items, *it;
    if (PyObject_HasAttrString(headers, "multi_items"))
        items = PyObject_CallMethod(headers, "multi_items", NULL);
    else if (PyObject_HasAttrString(headers, "items"))
        items = PyObject_CallMethod(headers, "items", NULL);
    else
        items = Py_NewRef(headers);
    if (!items)
        goto fail;
    it = PyObject_GetIter(items);
    Py_DECREF(items);
    if (!it)
        goto fail;
    PyObject *item;
    while ((item = PyIter_Next(it))) {
        PyObject *f = PySequence_Fast(item, "keymesh: a header is a (name, value) pair");
        Py_DECREF(item);
        if (!f)
            break;
        int rc = -1;
        if (PySequence_Fast_GET_SIZE(f) != 2)
            PyErr_SetString(PyExc_ValueError, "keymesh: a header is a (name, value) pair");
        else
            rc = hdr_pair(keep, PySequence_Fast_GET_ITEM(f, 0), PySequence_Fast_GET_ITEM(f, 1));
        Py_DECREF(f);
        if (rc < 0)
            break;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        goto fail;
    return keep;
fail:
    Py_DECREF(keep);
    return NULL;
}

/* km_outcome_from_http() on a provider's answer given as Python objects:
 * status (int(), None: 200), headers (hdr_list), body (bytes, bytearray,
 * str as UTF-8, or None) and error_code (str or None).  latency_us, tokens,
 * input_tokens and output_tokens come out unknown (-1).  The header texts
 * live in a list held until the call returns, so the pointers handed to
 * the library stay valid: nothing runs Python code between building the
 * array and the call. */
static int http_outcome(PyObject *status, PyObject *headers, PyObject *body, PyObject *ecode,
                        km_outcome *o)
{
    km_http_response resp;
    memset(&resp, 0, sizeof resp);
    resp.status = 200;
    if (status && status != Py_None) {
        PyObject *n = PyNumber_Long(status);
        if (!n)
            return -1;
        long st = PyLong_AsLong(n);
        Py_DECREF(n);
        if (st == -1 && PyErr_Occurred())
            return -1;
        if (st < INT32_MIN || st > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "status out of range (got %ld)", st);
            return -1;
        }
        resp.status = (int)st;
    }
    if (ecode && ecode != Py_None) {
        if (!PyUnicode_Check(ecode)) {
            PyErr_SetString(PyExc_TypeError, "error_code must be a str or None");
            return -1;
        }
        if (!(resp.error_code = PyUnicode_AsUTF8(ecode)))
            return -1;
    }
    if (body && body != Py_None) {
        Py_ssize_t n = 0;
        if (PyBytes_Check(body)) {
            resp.body = PyBytes_AS_STRING(body);
            n = PyBytes_GET_SIZE(body);
        } else if (PyByteArray_Check(body)) {
            resp.body = PyByteArray_AS_STRING(body);
            n = PyByteArray_GET_SIZE(body);
        } else if (PyUnicode_Check(body)) {
            if (!(resp.body = PyUnicode_AsUTF8AndSize(body, &n)))
                return -1;
        } else {
            PyErr_SetString(PyExc_TypeError, "body must be bytes, str or None");
            return -1;
        }
        resp.body_len = (size_t)n;
    }
    PyObject *keep = hdr_list(headers);
    if (!keep)
        return -1;
    Py_ssize_t nh = PyList_GET_SIZE(keep);
    const char *stackv[64], **hv = stackv;
    if (nh > (Py_ssize_t)(sizeof stackv / sizeof stackv[0])) {
        hv = PyMem_Malloc((size_t)nh * sizeof *hv);
        if (!hv) {
            Py_DECREF(keep);
            PyErr_NoMemory();
            return -1;
        }
    }
    int rc = 0;
    for (Py_ssize_t i = 0; i < nh; i++)
        if (!(hv[i] = hdr_ptr(PyList_GET_ITEM(keep, i))))
            rc = -1;
    if (rc == 0) {
        resp.headers = hv;
        resp.n_headers = (size_t)nh / 2;
        outcome_success(o);
        o->kind = KM_OUT_FAILURE;
        km_outcome_from_http(&resp, o); /* KM_EINVAL only for NULL pointers */
    }
    if (hv != stackv)
        PyMem_Free(hv);
    Py_DECREF(keep);
    return rc;
}

/* tokens=, input_tokens=, output_tokens=: None (-1: unknown) or an int >= 0. */
static int opt_count(PyObject *v, const char *name, long long *out)
{
    *out = -1;
    if (!v || v == Py_None)
        return 0;
    PyObject *n = PyNumber_Long(v);
    if (!n)
        return -1;
    long long x = PyLong_AsLongLong(n);
    Py_DECREF(n);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0 (got %lld)", name, x);
        return -1;
    }
    *out = x;
    return 0;
}

/* report()'s outcome: the answer mapped, then the tokens (as
 * keymesh._pool._report_tuple on the ctypes path). */
static int report_outcome(PyObject *st, PyObject *h, PyObject *b, PyObject *ec, PyObject *tk,
                          PyObject *in, PyObject *out, km_outcome *o)
{
    long long tokens, ni, no;
    if (opt_count(tk, "tokens", &tokens) < 0 || opt_count(in, "input_tokens", &ni) < 0 ||
        opt_count(out, "output_tokens", &no) < 0)
        return -1;
    if (http_outcome(st, h, b, ec, o) < 0)
        return -1;
    if (ni >= 0 || no >= 0) {
        o->input_tokens = ni;
        o->output_tokens = no;
        if (tokens < 0)
            tokens = (ni > 0 ? ni : 0) + (no > 0 ? no : 0);
    }
    o->tokens = tokens;
    return 0;
}

/* The outcome for an exception leaving a lease (or given to fail()):
 * H_exc_http says what it carries, either (status, headers, body), mapped
 * here, or an outcome tuple (cancelled, rate limited by its text,
 * failure). */
static int exc_outcome(PyObject *exc, km_outcome *o)
{
    PyObject *r = PyObject_CallOneArg(H_exc_http, exc);
    if (!r)
        return -1;
    int rc;
    if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 3)
        rc = http_outcome(PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1), PyTuple_GET_ITEM(r, 2),
                          NULL, o);
    else
        rc = outcome_from_tuple(r, o);
    Py_DECREF(r);
    return rc;
}

static PyObject *lease_secret(Lease *L)
{
    if (!L->secret) {
        uint32_t n = L->c.secret_len <= KM_SECRET_MAX ? L->c.secret_len : KM_SECRET_MAX;
        L->secret = PyUnicode_DecodeUTF8(L->c.secret, n, "replace");
    }
    return L->secret;
}

/* ------------------------------------------------------ Lease: lifecycle */

static Lease *lease_new(Core *pool, PyObject *model, uint32_t tokens)
{
    Lease *L = PyObject_GC_New(Lease, &LeaseType);
    if (!L)
        return NULL;
    /* Only the header fields are set before km_acquire fills the rest. */
    L->c.secret_len = 0;
    L->c.key = 0;
    L->c.start_ns = 0;
    L->pool = (PyObject *)pool;
    Py_INCREF(pool);
    L->model = model ? model : Py_None;
    Py_INCREF(L->model);
    L->secret = L->next = NULL;
    L->req_timeout = L->req_key_id = L->req_strategy = NULL;
    L->weakreflist = NULL;
    L->gen = fork_gen;
    L->tokens = tokens;
    L->done = L->acquired = L->tracked = L->has_oc = 0;
    L->woke_ns = L->gil_ns = 0;
    PyObject_GC_Track(L);
    return L;
}

static int lease_traverse(Lease *L, visitproc visit, void *arg)
{
    Py_VISIT(L->pool);
    Py_VISIT(L->model);
    Py_VISIT(L->next);
    Py_VISIT(L->req_timeout);
    Py_VISIT(L->req_key_id);
    Py_VISIT(L->req_strategy);
    return 0;
}

static int lease_clear(Lease *L)
{
    Py_CLEAR(L->pool);
    Py_CLEAR(L->model);
    Py_CLEAR(L->secret);
    Py_CLEAR(L->next);
    Py_CLEAR(L->req_timeout);
    Py_CLEAR(L->req_key_id);
    Py_CLEAR(L->req_strategy);
    return 0;
}

static void lease_dealloc(Lease *L)
{
    PyObject_GC_UnTrack(L);
    if (L->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)L);
    lease_clear(L);
    PyObject_GC_Del(L);
}

/* ------------------------------------------------------ Core: tracking */

static int track(Core *self, Lease *L)
{
    PyObject *key = lease_secret(L);
    if (!key)
        return -1;
    PyObject *head = PyDict_GetItemWithError(self->tracked, key); /* borrowed */
    if (!head) {
        if (PyErr_Occurred())
            return -1;
        if (PyDict_SetItem(self->tracked, key, (PyObject *)L) < 0)
            return -1;
    } else {
        Lease *t = (Lease *)head;
        while (t->next)
            t = (Lease *)t->next;
        Py_INCREF(L);
        t->next = (PyObject *)L;
    }
    L->tracked = 1;
    return 0;
}

/* Pop the oldest lease of `key`: a new reference, or NULL (no exception
 * when none is held). */
static Lease *take(Core *self, PyObject *key)
{
    PyObject *head = PyDict_GetItemWithError(self->tracked, key);
    if (!head)
        return NULL;
    Lease *L = (Lease *)head;
    Py_INCREF(L);
    PyObject *next = L->next;
    L->next = NULL;
    int rc = next ? PyDict_SetItem(self->tracked, key, next) : PyDict_DelItem(self->tracked, key);
    Py_XDECREF(next);
    L->tracked = 0;
    if (rc < 0) {
        Py_DECREF(L);
        return NULL;
    }
    return L;
}

/* Remove L from its chain (it is being finished some other way). */
static int untrack(Core *self, Lease *L)
{
    PyObject *key = lease_secret(L);
    if (!key)
        return -1;
    PyObject *head = PyDict_GetItemWithError(self->tracked, key);
    L->tracked = 0;
    if (!head)
        return PyErr_Occurred() ? -1 : 0;
    if (head == (PyObject *)L) {
        PyObject *next = L->next;
        L->next = NULL;
        int rc = next ? PyDict_SetItem(self->tracked, key, next)
                      : PyDict_DelItem(self->tracked, key);
        Py_XDECREF(next);
        return rc;
    }
    for (Lease *t = (Lease *)head; t->next; t = (Lease *)t->next) {
        if (t->next == (PyObject *)L) {
            t->next = L->next; /* L's reference to next moves to t */
            L->next = NULL;
            Py_DECREF(L);      /* t's reference to L */
            return 0;
        }
    }
    return 0;
}

/* --------------------------------------------------------- Core: acquire */

/* After km_acquire filled L->c: bookkeeping; -1 with an exception (the
 * lease is then given back). */
static int made(Core *self, km_env *env, Lease *L, int do_track)
{
    L->acquired = 1;
    L->gen = fork_gen;
    uint32_t k = L->c.key;
    if (k >= self->nlast) {
        size_t n = self->nlast ? self->nlast : 16;
        while (n <= k)
            n *= 2;
        uint64_t *p = PyMem_Realloc(self->last, n * sizeof *p);
        if (p) {
            memset(p + self->nlast, 0, (n - self->nlast) * sizeof *p);
            self->last = p;
            self->nlast = n;
        }
    }
    if (k < self->nlast)
        self->last[k] = L->c.start_ns;
    if (L->c.start_ns - self->checked_ns > NS_PER_S) {
        self->checked_ns = L->c.start_ns;
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, S_check_segment);
        if (!r)
            goto giveback;
        Py_DECREF(r);
    }
    if (do_track && track(self, L) < 0)
        goto giveback;
    return 0;
giveback:
    km_release(env, &L->c, NULL); /* cancelled: never sent */
    L->done = 1;
    return -1;
}

static int env_busy(Core *self, PyObject *envobj, long delta)
{
    (void)self;
    PyObject *b = PyObject_GetAttr(envobj, S_busy);
    if (!b)
        return -1;
    long v = PyLong_AsLong(b);
    Py_DECREF(b);
    if (v == -1 && PyErr_Occurred())
        return -1;
    PyObject *nv = PyLong_FromLong(v + delta);
    if (!nv)
        return -1;
    int rc = PyObject_SetAttr(envobj, S_busy, nv);
    Py_DECREF(nv);
    return rc;
}

static int env_closing(PyObject *envobj)
{
    PyObject *c = PyObject_GetAttr(envobj, S_closing);
    if (!c)
        return -1;
    int r = PyObject_IsTrue(c);
    Py_DECREF(c);
    return r;
}

/* One km_acquire_wait() of at most `ms`, GIL released.  Returns the km
 * code, or KM_OK + 1 with a Python exception set. */
static int wait_once(Core *self, km_env *env, const km_request *req, Lease *L, uint32_t ms)
{
    PyObject *envobj = self->envobj;
    if (!envobj) {
        kmerror("pool is closed");
        return 1;
    }
    Py_INCREF(envobj);
    if (env_busy(self, envobj, 1) < 0) {
        Py_DECREF(envobj);
        return 1;
    }
    int rc;
    uint64_t woke;
    Py_BEGIN_ALLOW_THREADS
    rc = km_acquire_wait(env, req, &L->c, ms);
    woke = km_now_ns();
    Py_END_ALLOW_THREADS
    L->woke_ns = woke;
    L->gil_ns = km_now_ns();
    int bad = env_busy(self, envobj, -1) < 0;
    int closing = bad ? 0 : env_closing(envobj);
    Py_DECREF(envobj);
    if (bad || closing < 0) {
        if (rc == 0)
            km_release(env, &L->c, NULL);
        return 1;
    }
    if (closing) {
        if (rc == 0)
            km_release(env, &L->c, NULL);
        kmerror("pool is closed");
        return 1;
    }
    return rc;
}

/* After KM_ENOKEY for a pinned request: key_id may be a key's secret (the
 * in-process pools pin by secret).  If a key of the pool holds it, its id
 * goes to id[] and req->key_id points there: 1 (try again); else 0.  Off
 * the hot path: only a pin that names no id comes here. */
static int pin_by_secret(km_env *env, km_request *req, char id[KM_ID_MAX + 1])
{
    km_key_info ki;
    if (!req->key_id)
        return 0;
    int k = km_key_find_secret(env, req->pool, req->key_id);
    if (k < 0 || km_key_info_get(env, k, &ki) != KM_OK) /* none, or removed meanwhile */
        return 0;
    memcpy(id, ki.id, KM_ID_MAX + 1);
    req->key_id = id;
    return 1;
}

/* Acquire into L: one try, then (timeout > 0) waits in chunks until the
 * deadline.  0, or -1 with an exception. */
static int acquire_into(Core *self, Lease *L, double timeout, PyObject *model,
                        PyObject *key_id, PyObject *strategy, int do_track)
{
    km_env *env = core_env(self);
    if (!env)
        return -1;
    km_request req;
    req.pool = self->pool;
    req.tokens = L->tokens;
    if (strategy_code(strategy, &req.strategy) < 0 || opt_utf8(model, "model", &req.model) < 0 ||
        opt_utf8(key_id, "key_id", &req.key_id) < 0)
        return -1;
    char pin[KM_ID_MAX + 1];
    int rc = km_acquire(env, &req, &L->c);
    if (rc == KM_ENOKEY && pin_by_secret(env, &req, pin))
        rc = km_acquire(env, &req, &L->c);
    if (rc == KM_EAGAIN && timeout > 0) {
        uint64_t deadline = km_now_ns() + (uint64_t)(timeout * 1e9);
        for (;;) {
            uint64_t now = km_now_ns();
            if (now >= deadline) {
                rc = km_acquire(env, &req, &L->c); /* for retry_at_ns */
                if (rc == KM_EAGAIN)
                    rc = KM_ETIMEDOUT;
                break;
            }
            uint64_t left = (deadline - now) / 1000000u;
            uint32_t ms = left < WAIT_CHUNK_MS ? (uint32_t)left : WAIT_CHUNK_MS;
            rc = wait_once(self, env, &req, L, ms);
            if (rc == 1)
                return -1;
            if (rc != KM_ETIMEDOUT && rc != KM_EAGAIN)
                break;
            if (PyErr_CheckSignals() < 0)
                return -1;
            if (self->env != env) { /* closed or rebound meanwhile */
                kmerror("pool is closed");
                return -1;
            }
        }
    }
    if (rc != 0) {
        raise_rc(rc, "acquire", self, L->c.retry_at_ns);
        return -1;
    }
    return made(self, env, L, do_track);
}

/* Arguments (timeout=None, *, model=None, estimated_tokens=0, key_id=None,
 * strategy=None), without building a dict: the hot path. */
typedef struct {
    PyObject *timeout, *model, *tokens, *key_id, *strategy;
} acq_args;

static int parse_acq(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames, acq_args *a, int timeout_first)
{
    a->timeout = a->model = a->tokens = a->key_id = a->strategy = NULL;
    /* acquire(timeout, ...) or lease(model, estimated_tokens, ...) */
    if (timeout_first) {
        if (nargs > 1)
            goto too_many;
        if (nargs == 1)
            a->timeout = args[0];
    } else {
        if (nargs > 2)
            goto too_many;
        if (nargs >= 1)
            a->model = args[0];
        if (nargs == 2)
            a->tokens = args[1];
    }
    if (kwnames) {
        Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
            PyObject **slot;
            if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0)
                slot = &a->timeout;
            else if (PyUnicode_CompareWithASCIIString(k, "model") == 0)
                slot = &a->model;
            else if (PyUnicode_CompareWithASCIIString(k, "estimated_tokens") == 0)
                slot = &a->tokens;
            else if (PyUnicode_CompareWithASCIIString(k, "key_id") == 0)
                slot = &a->key_id;
            else if (PyUnicode_CompareWithASCIIString(k, "strategy") == 0)
                slot = &a->strategy;
            else {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, k);
                return -1;
            }
            if (*slot) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for '%U'", fname, k);
                return -1;
            }
            *slot = v;
        }
    }
    return 0;
too_many:
    PyErr_Format(PyExc_TypeError, "%s() takes too many positional arguments", fname);
    return -1;
}

static int timeout_of(Core *self, PyObject *o, double *out)
{
    if (!o || o == Py_None) {
        *out = self->acquire_timeout;
        return 0;
    }
    double t = PyFloat_AsDouble(o);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds, not NaN");
        return -1;
    }
    *out = t;
    return 0;
}

static Lease *acquire_lease(Core *self, double timeout, PyObject *model, PyObject *tokens,
                            PyObject *key_id, PyObject *strategy, int do_track)
{
    uint32_t tok;
    if (check_tokens(tokens, &tok) < 0)
        return NULL;
    Lease *L = lease_new(self, model, tok);
    if (!L)
        return NULL;
    if (acquire_into(self, L, timeout, model, key_id, strategy, do_track) < 0) {
        Py_DECREF(L);
        return NULL;
    }
    return L;
}

static PyObject *Core_acquire(Core *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    acq_args a;
    double t;
    if (parse_acq("acquire", args, nargs, kwnames, &a, 1) < 0 || timeout_of(self, a.timeout, &t) < 0)
        return NULL;
    Lease *L = acquire_lease(self, t, a.model, a.tokens, a.key_id, a.strategy, 1);
    if (!L)
        return NULL;
    PyObject *s = lease_secret(L);
    Py_XINCREF(s);
    Py_DECREF(L);
    return s;
}

/* _acquire_lease(timeout, model, tokens, key_id, strategy, track) */
static PyObject *Core__acquire_lease(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_acquire_lease takes 6 arguments");
        return NULL;
    }
    double t;
    if (timeout_of(self, args[0], &t) < 0)
        return NULL;
    int tr = PyObject_IsTrue(args[5]);
    if (tr < 0)
        return NULL;
    return (PyObject *)acquire_lease(self, t, args[1], args[2], args[3], args[4], tr);
}

/* _try_lease(model, tokens, key_id, strategy, track) -> Lease | retry_at_ns */
static PyObject *Core__try_lease(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_try_lease takes 5 arguments");
        return NULL;
    }
    uint32_t tok;
    if (check_tokens(args[1], &tok) < 0)
        return NULL;
    km_env *env = core_env(self);
    if (!env)
        return NULL;
    int tr = PyObject_IsTrue(args[4]);
    if (tr < 0)
        return NULL;
    km_request req;
    req.pool = self->pool;
    req.tokens = tok;
    if (strategy_code(args[3], &req.strategy) < 0 || opt_utf8(args[0], "model", &req.model) < 0 ||
        opt_utf8(args[2], "key_id", &req.key_id) < 0)
        return NULL;
    Lease *L = lease_new(self, args[0], tok);
    if (!L)
        return NULL;
    char pin[KM_ID_MAX + 1];
    int rc = km_acquire(env, &req, &L->c);
    if (rc == KM_ENOKEY && pin_by_secret(env, &req, pin))
        rc = km_acquire(env, &req, &L->c);
    if (rc == KM_EAGAIN) {
        uint64_t at = L->c.retry_at_ns ? L->c.retry_at_ns : 1;
        Py_DECREF(L);
        return PyLong_FromUnsignedLongLong(at);
    }
    if (rc != 0) {
        uint64_t at = L->c.retry_at_ns;
        Py_DECREF(L);
        return raise_rc(rc, "acquire", self, at);
    }
    if (made(self, env, L, tr) < 0) {
        Py_DECREF(L);
        return NULL;
    }
    return (PyObject *)L;
}

/* _wait_lease(model, tokens, key_id, strategy, track, timeout_ms)
 *   -> Lease | km code (ETIMEDOUT / EAGAIN) */
static PyObject *Core__wait_lease(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_wait_lease takes 6 arguments");
        return NULL;
    }
    uint32_t tok;
    if (check_tokens(args[1], &tok) < 0)
        return NULL;
    long ms = PyLong_AsLong(args[5]);
    if (ms == -1 && PyErr_Occurred())
        return NULL;
    km_env *env = core_env(self);
    if (!env)
        return NULL;
    int tr = PyObject_IsTrue(args[4]);
    if (tr < 0)
        return NULL;
    km_request req;
    req.pool = self->pool;
    req.tokens = tok;
    if (strategy_code(args[3], &req.strategy) < 0 || opt_utf8(args[0], "model", &req.model) < 0 ||
        opt_utf8(args[2], "key_id", &req.key_id) < 0)
        return NULL;
    Lease *L = lease_new(self, args[0], tok);
    if (!L)
        return NULL;
    uint32_t wms = ms < 0 ? 0u : ms > 0x7fffffffL ? 0x7fffffffu : (uint32_t)ms;
    char pin[KM_ID_MAX + 1];
    int rc = wait_once(self, env, &req, L, wms);
    if (rc == KM_ENOKEY && pin_by_secret(env, &req, pin))
        rc = wait_once(self, env, &req, L, wms);
    if (rc == 1) {
        Py_DECREF(L);
        return NULL;
    }
    if (rc == KM_ETIMEDOUT || rc == KM_EAGAIN) {
        Py_DECREF(L);
        return PyLong_FromLong(rc);
    }
    if (rc != 0) {
        uint64_t at = L->c.retry_at_ns;
        Py_DECREF(L);
        return raise_rc(rc, "acquire", self, at);
    }
    if (made(self, env, L, tr) < 0) {
        Py_DECREF(L);
        return NULL;
    }
    return (PyObject *)L;
}

/* --------------------------------------------------------- Core: release */

/* End the lease with outcome *o (latency > 0: seconds, overriding the
 * measured one). */
static int finish_o(Core *self, Lease *L, km_outcome *o, double latency)
{
    if (L->done)
        { kmerror("lease already finished"); return -1; }
    if (!L->acquired)
        { kmerror("lease not acquired yet: use it in a with block"); return -1; }
    if (L->gen != fork_gen)
        { kmerror("lease belongs to another process (acquired before fork)"); return -1; }
    km_env *env = core_env(self);
    if (!env)
        return -1;
    if (latency > 0)
        o->latency_us = (int64_t)(latency * 1e6);
    L->done = 1;
    if (L->tracked && untrack(self, L) < 0)
        return -1;
    int rc = km_release(env, &L->c, o);
    if (rc != 0 && rc != KM_ESTALE) {
        raise_rc(rc, "release", NULL, 0);
        return -1;
    }
    if (o->kind == KM_OUT_FAILURE && self->exhaust) {
        PyObject *r = PyObject_CallMethodObjArgs((PyObject *)self, S_exhausted_check,
                                                 (PyObject *)L, Py_False, NULL);
        if (!r)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* The same with an outcome tuple (None: success). */
static int finish(Core *self, Lease *L, PyObject *otuple, double latency)
{
    km_outcome o;
    if (outcome_from_tuple(otuple, &o) < 0)
        return -1;
    return finish_o(self, L, &o, latency);
}

/* The outcome a lease ends with when nothing else is said: what report()
 * recorded, else a success. */
static km_outcome *lease_outcome(Lease *L, km_outcome *tmp)
{
    if (L->has_oc) {
        *tmp = L->oc;
        return tmp;
    }
    outcome_success(tmp);
    return tmp;
}

/* release(key, latency=0.0, *, tokens=None) */
static PyObject *Core_release(Core *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *key = NULL, *lat = NULL, *tokens = NULL;
    if (nargs >= 1)
        key = args[0];
    if (nargs >= 2)
        lat = args[1];
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "release() takes at most 2 positional arguments");
        return NULL;
    }
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(k, "latency") == 0 && !lat)
                lat = v;
            else if (PyUnicode_CompareWithASCIIString(k, "tokens") == 0 && !tokens)
                tokens = v;
            else if (PyUnicode_CompareWithASCIIString(k, "key") == 0 && !key)
                key = v;
            else {
                PyErr_Format(PyExc_TypeError, "release() got an unexpected keyword argument '%U'", k);
                return NULL;
            }
        }
    }
    if (!key || !PyUnicode_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "release(key): key must be the str acquire() returned");
        return NULL;
    }
    double latency;
    if (check_latency(lat, &latency) < 0)
        return NULL;
    long long ntok = -1;
    if (tokens && tokens != Py_None) {
        ntok = PyLong_AsLongLong(tokens);
        if (ntok == -1 && PyErr_Occurred())
            return NULL;
        if (ntok < 0) {
            PyErr_Format(PyExc_ValueError, "tokens must be >= 0 (got %lld)", ntok);
            return NULL;
        }
    }
    if (!core_env(self))
        return NULL;
    Lease *L = take(self, key);
    if (!L) {
        if (PyErr_Occurred())
            return NULL;
        return kmerror("release: no lease of that key is held here");
    }
    int rc;
    if (ntok >= 0) {
        PyObject *t = Py_BuildValue("(iLLdiKKKKLL)", KM_OUT_SUCCESS, -1LL, ntok, 0.0, 0,
                                    0ULL, 0ULL, 0ULL, 0ULL, -1LL, -1LL);
        if (!t) {
            Py_DECREF(L);
            return NULL;
        }
        rc = finish(self, L, t, latency);
        Py_DECREF(t);
    } else {
        rc = finish(self, L, NULL, latency);
    }
    Py_DECREF(L);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _finish(lease, outcome_tuple_or_None, latency_or_None) */
static PyObject *Core__finish(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyObject_TypeCheck(args[0], &LeaseType)) {
        PyErr_SetString(PyExc_TypeError, "_finish(lease, outcome, latency)");
        return NULL;
    }
    double latency;
    if (check_latency(args[2], &latency) < 0)
        return NULL;
    if (finish(self, (Lease *)args[0], args[1], latency) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core__take(Core *self, PyObject *key)
{
    if (!core_env(self))
        return NULL;
    Lease *L = take(self, key);
    if (!L) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    return (PyObject *)L;
}

/* lease(model=None, estimated_tokens=0, *, timeout=None, key_id=None,
 * strategy=None): not acquired until entered. */
static PyObject *Core_lease(Core *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    acq_args a;
    if (parse_acq("lease", args, nargs, kwnames, &a, 0) < 0)
        return NULL;
    uint32_t tok;
    if (check_tokens(a.tokens, &tok) < 0)
        return NULL;
    Lease *L = lease_new(self, a.model, tok);
    if (!L)
        return NULL;
    L->req_timeout = a.timeout ? a.timeout : Py_None;
    L->req_key_id = a.key_id ? a.key_id : Py_None;
    L->req_strategy = a.strategy ? a.strategy : Py_None;
    Py_INCREF(L->req_timeout);
    Py_INCREF(L->req_key_id);
    Py_INCREF(L->req_strategy);
    return (PyObject *)L;
}

/* _adopt(lease, got): `lease` (not acquired) takes what `got` holds. */
static PyObject *Core__adopt(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyObject_TypeCheck(args[0], &LeaseType) ||
        !PyObject_TypeCheck(args[1], &LeaseType)) {
        PyErr_SetString(PyExc_TypeError, "_adopt(lease, got)");
        return NULL;
    }
    Lease *L = (Lease *)args[0], *G = (Lease *)args[1];
    if (L->acquired || G->tracked)
        return kmerror("_adopt: lease already acquired, or got is tracked");
    memcpy(&L->c, &G->c, sizeof L->c);
    L->gen = G->gen;
    L->acquired = 1;
    Py_CLEAR(L->secret);
    G->done = 1;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------- Core: misc */

static PyObject *Core__hot_init(Core *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    Py_RETURN_NONE; /* tp_new set everything */
}

static PyObject *Core__bind(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_bind(env, pool)");
        return NULL;
    }
    km_env *env = NULL;
    if (args[0] != Py_None) {
        PyObject *p = PyObject_GetAttr(args[0], S_ptr);
        if (!p)
            return NULL;
        env = p == Py_None ? NULL : PyLong_AsVoidPtr(p);
        Py_DECREF(p);
        if (PyErr_Occurred())
            return NULL;
    }
    long pool = PyLong_AsLong(args[1]);
    if (pool == -1 && PyErr_Occurred())
        return NULL;
    PyObject *old = self->envobj;
    self->envobj = args[0] == Py_None ? NULL : args[0];
    Py_XINCREF(self->envobj);
    Py_XDECREF(old);
    self->env = env;
    self->pool = (int)pool;
    self->gen = fork_gen;
    Py_RETURN_NONE;
}

static PyObject *Core__reset_tracking(Core *self, PyObject *unused)
{
    (void)unused;
    PyDict_Clear(self->tracked);
    if (self->last)
        memset(self->last, 0, self->nlast * sizeof *self->last);
    Py_RETURN_NONE;
}

static PyObject *Core__ptr(Core *self, PyObject *unused)
{
    (void)unused;
    km_env *env = core_env(self);
    if (!env)
        return NULL;
    return PyLong_FromVoidPtr(env);
}

static PyObject *Core__held(Core *self, PyObject *unused)
{
    (void)unused;
    Py_ssize_t n = 0, pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(self->tracked, &pos, &k, &v))
        for (Lease *t = (Lease *)v; t; t = (Lease *)t->next)
            n++;
    return PyLong_FromSsize_t(n);
}

static PyObject *Core__last_used_ns(Core *self, PyObject *arg)
{
    unsigned long long k = PyLong_AsUnsignedLongLong(arg);
    if (k == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(k < self->nlast ? self->last[k] : 0);
}

static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->env = NULL;
    self->pool = -1;
    self->gen = fork_gen;
    self->envobj = NULL;
    self->tracked = PyDict_New();
    self->last = NULL;
    self->nlast = 0;
    self->checked_ns = 0;
    self->acquire_timeout = 30.0;
    self->exhaust = 0;
    if (!self->tracked) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int Core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(self->envobj);
    Py_VISIT(self->tracked);
    return 0;
}

static int Core_clear(Core *self)
{
    Py_CLEAR(self->envobj);
    Py_CLEAR(self->tracked);
    self->env = NULL;
    return 0;
}

static void Core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    PyMem_Free(self->last);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Core_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Core_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(timeout=None, *, model=None, estimated_tokens=0, key_id=None, strategy=None)"
     " -> str\n\nA key (the secret).  Waits up to `timeout` seconds (default "
     "acquire_timeout) for one\nto become admissible, then raises NoAvailableKeyError; "
     "KeyExhaustedError if\nnone can without an operator.  key_id= pins one key, by its id or "
     "its secret.\nGive it back with release(key), mark_failed(key) or mark_rate_limited(key)."},
    {"release", (PyCFunction)(void (*)(void))Core_release, METH_FASTCALL | METH_KEYWORDS,
     "release(key, latency=0.0, *, tokens=None)\n\nThe request made with `key` succeeded; "
     "`latency` in seconds (0: measured\nsince acquire); `tokens` used if known."},
    {"_release_key", (PyCFunction)(void (*)(void))Core_release, METH_FASTCALL | METH_KEYWORDS,
     NULL},
    {"lease", (PyCFunction)(void (*)(void))Core_lease, METH_FASTCALL | METH_KEYWORDS,
     "lease(model=None, estimated_tokens=0, *, timeout=None, key_id=None, strategy=None)\n\n"
     "A lease to use in `with` (or `async with`): the key is acquired on entering;\non "
     "leaving it is released, timed, with what Lease.report() recorded (success\nby "
     "default).  An exception is a failure (an SDK error with HTTP status 429,\nor whose "
     "text says 429 or \"rate limit\", cools the key down; 401 invalidates\nit) and "
     "propagates."},
    {"_acquire_lease", (PyCFunction)(void (*)(void))Core__acquire_lease, METH_FASTCALL, NULL},
    {"_try_lease", (PyCFunction)(void (*)(void))Core__try_lease, METH_FASTCALL, NULL},
    {"_wait_lease", (PyCFunction)(void (*)(void))Core__wait_lease, METH_FASTCALL, NULL},
    {"_finish", (PyCFunction)(void (*)(void))Core__finish, METH_FASTCALL, NULL},
    {"_take", (PyCFunction)Core__take, METH_O, NULL},
    {"_adopt", (PyCFunction)(void (*)(void))Core__adopt, METH_FASTCALL, NULL},
    {"_hot_init", (PyCFunction)Core__hot_init, METH_NOARGS, NULL},
    {"_bind", (PyCFunction)(void (*)(void))Core__bind, METH_FASTCALL, NULL},
    {"_reset_tracking", (PyCFunction)Core__reset_tracking, METH_NOARGS, NULL},
    {"_ptr", (PyCFunction)Core__ptr, METH_NOARGS, NULL},
    {"_held", (PyCFunction)Core__held, METH_NOARGS, NULL},
    {"_last_used_ns", (PyCFunction)Core__last_used_ns, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Core_members[] = {
    {"acquire_timeout", T_DOUBLE, offsetof(Core, acquire_timeout), 0,
     "default timeout of acquire(), seconds"},
    {"_exhaust", T_BOOL, offsetof(Core, exhaust), 0, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "keymesh._ext.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hot path of a KeyMesh pool (base of SyncKeyPool and KeyPool).",
    .tp_new = Core_new,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_methods = Core_methods,
    .tp_members = Core_members,
};

/* ------------------------------------------------------- Lease: methods */

static PyObject *Lease_key(Lease *L, void *unused)
{
    (void)unused;
    if (!L->acquired)
        return kmerror("lease not acquired yet: use it in a with block");
    PyObject *s = lease_secret(L);
    Py_XINCREF(s);
    return s;
}

static PyObject *Lease_key_id(Lease *L, void *unused)
{
    (void)unused;
    if (!L->acquired)
        return kmerror("lease not acquired yet: use it in a with block");
    return PyUnicode_DecodeUTF8(L->c.key_id, (Py_ssize_t)strnlen(L->c.key_id, KM_ID_MAX),
                                "replace");
}

static PyObject *Lease_meta(Lease *L, void *unused)
{
    (void)unused;
    if (!L->acquired)
        return kmerror("lease not acquired yet: use it in a with block");
    uint32_t n = L->c.meta_len <= KM_META_MAX ? L->c.meta_len : KM_META_MAX;
    PyObject *s = PyUnicode_DecodeUTF8(L->c.meta, n, "replace");
    if (!s)
        return NULL;
    PyObject *r = PyObject_CallOneArg(H_meta_loads, s);
    Py_DECREF(s);
    return r;
}

static PyObject *Lease_elapsed(Lease *L, void *unused)
{
    (void)unused;
    if (!L->acquired)
        return kmerror("lease not acquired yet: use it in a with block");
    uint64_t now = km_now_ns();
    return PyFloat_FromDouble(now > L->c.start_ns ? (double)(now - L->c.start_ns) / 1e9 : 0.0);
}

static PyObject *Lease_done(Lease *L, void *unused)
{
    (void)unused;
    return PyBool_FromLong(L->done);
}

static PyObject *Lease_acquired(Lease *L, void *unused)
{
    (void)unused;
    return PyBool_FromLong(L->acquired);
}

static PyObject *Lease_tokens(Lease *L, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(L->tokens);
}

static PyObject *Lease_key_index(Lease *L, void *unused)
{
    (void)unused;
    return PyLong_FromLong(L->c.key);
}

static PyObject *Lease_key_gen(Lease *L, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(L->c.key_gen);
}

static PyObject *Lease_start_ns(Lease *L, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(L->c.start_ns);
}

static PyObject *Lease_wait_stamps(Lease *L, void *unused)
{
    (void)unused;
    return Py_BuildValue("(KK)", (unsigned long long)L->woke_ns, (unsigned long long)L->gil_ns);
}

static PyObject *Lease_pool(Lease *L, void *unused)
{
    (void)unused;
    Py_INCREF(L->pool);
    return L->pool;
}

static PyObject *Lease_repr(Lease *L)
{
    if (!L->acquired)
        return PyUnicode_FromFormat("<Lease (not acquired) model=%R>", L->model);
    char masked[24];
    char secret[KM_SECRET_MAX + 1];
    uint32_t n = L->c.secret_len <= KM_SECRET_MAX ? L->c.secret_len : KM_SECRET_MAX;
    memcpy(secret, L->c.secret, n);
    secret[n] = '\0';
    km_mask_secret(secret, masked);
    memset(secret, 0, sizeof secret);
    PyObject *id = Lease_key_id(L, NULL);
    if (!id)
        return NULL;
    PyObject *mk = PyUnicode_DecodeUTF8(masked, (Py_ssize_t)strlen(masked), "replace");
    if (!mk) {
        Py_DECREF(id);
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<Lease key_id=%R key=%R model=%R%s>", id, mk, L->model,
                                       L->done ? " done" : "");
    Py_DECREF(id);
    Py_DECREF(mk);
    return r;
}

static Core *lease_core(Lease *L)
{
    return (Core *)L->pool;
}

static PyObject *Lease_release(Lease *L, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *lat = nargs >= 1 ? args[0] : NULL;
    if (nargs > 1 || (kwnames && (PyTuple_GET_SIZE(kwnames) != 1 || nargs ||
                                  PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                                                   "latency") != 0))) {
        PyErr_SetString(PyExc_TypeError, "release(latency=None)");
        return NULL;
    }
    if (kwnames)
        lat = args[0];
    double latency;
    if (check_latency(lat, &latency) < 0)
        return NULL;
    km_outcome o;
    if (finish_o(lease_core(L), L, lease_outcome(L, &o), latency) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Lease_cancel(Lease *L, PyObject *unused)
{
    (void)unused;
    if (finish(lease_core(L), L, H_cancelled, -1.0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Lease_fail(Lease *L, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "fail(exc=None)");
        return NULL;
    }
    km_outcome o;
    if (exc_outcome(nargs ? args[0] : Py_None, &o) < 0 ||
        finish_o(lease_core(L), L, &o, -1.0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Lease__set_outcome(Lease *L, PyObject *t)
{
    if (t == Py_None) {
        L->has_oc = 0;
        Py_RETURN_NONE;
    }
    km_outcome o;
    if (outcome_from_tuple(t, &o) < 0)
        return NULL;
    L->oc = o;
    L->has_oc = 1;
    Py_RETURN_NONE;
}

/* _release_http(status, headers=None, body=None): end the lease with the
 * provider's answer in one call (km_outcome_from_http, then km_release;
 * the tokens report()/usage() recorded are kept).  Returns the outcome
 * kind.  keymesh.httpx's KeyMeshAuth releases through it. */
static PyObject *Lease__release_http(Lease *L, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "_release_http(status, headers=None, body=None)");
        return NULL;
    }
    km_outcome o;
    if (http_outcome(args[0], nargs > 1 ? args[1] : Py_None, nargs > 2 ? args[2] : Py_None, NULL,
                     &o) < 0)
        return NULL;
    if (L->has_oc) {
        o.tokens = L->oc.tokens;
        o.input_tokens = L->oc.input_tokens;
        o.output_tokens = L->oc.output_tokens;
    }
    if (finish_o(lease_core(L), L, &o, -1.0) < 0)
        return NULL;
    return PyLong_FromLong(o.kind);
}

static PyObject *Lease_report(Lease *L, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"status", "headers", "body", "error_code", "tokens", "input_tokens",
                          "output_tokens", NULL};
    PyObject *st = Py_None, *h = Py_None, *b = Py_None, *ec = Py_None, *tk = Py_None,
             *in = Py_None, *out = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O$OOOOOO:report", kwl, &st, &h, &b, &ec, &tk,
                                     &in, &out))
        return NULL;
    km_outcome o;
    if (report_outcome(st, h, b, ec, tk, in, out, &o) < 0)
        return NULL;
    L->oc = o;
    L->has_oc = 1;
    Py_RETURN_NONE;
}

static PyObject *Lease_usage(Lease *L, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"input_tokens", "output_tokens", "tokens", NULL};
    PyObject *in = Py_None, *out = Py_None, *tk = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOO:usage", kwl, &in, &out, &tk))
        return NULL;
    km_outcome o;
    if (report_outcome(Py_None, Py_None, Py_None, Py_None, tk, in, out, &o) < 0)
        return NULL;
    L->oc = o;
    L->has_oc = 1;
    Py_RETURN_NONE;
}

static PyObject *Lease__request(Lease *L, PyObject *unused)
{
    (void)unused;
    return PyTuple_Pack(3, L->req_timeout ? L->req_timeout : Py_None,
                        L->req_key_id ? L->req_key_id : Py_None,
                        L->req_strategy ? L->req_strategy : Py_None);
}

static PyObject *Lease_enter(Lease *L, PyObject *unused)
{
    (void)unused;
    if (!L->acquired) {
        if (L->done)
            return kmerror("lease already finished");
        Core *self = lease_core(L);
        double t;
        if (timeout_of(self, L->req_timeout, &t) < 0 ||
            acquire_into(self, L, t, L->model, L->req_key_id, L->req_strategy, 0) < 0)
            return NULL;
        Py_CLEAR(L->req_timeout);
        Py_CLEAR(L->req_key_id);
        Py_CLEAR(L->req_strategy);
    }
    Py_INCREF(L);
    return (PyObject *)L;
}

static PyObject *Lease_exit(Lease *L, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments");
        return NULL;
    }
    if (L->done || !L->acquired)
        Py_RETURN_FALSE;
    int rc;
    km_outcome o;
    if (args[0] == Py_None) {
        rc = finish_o(lease_core(L), L, lease_outcome(L, &o), -1.0);
    } else if (!PyObject_TypeCheck(args[1], (PyTypeObject *)PyExc_Exception)) {
        /* Cancellation, KeyboardInterrupt, SystemExit: the caller gave
         * up; the key did nothing wrong. */
        rc = finish(lease_core(L), L, H_cancelled, -1.0);
    } else {
        if (exc_outcome(args[1], &o) < 0)
            return NULL;
        rc = finish_o(lease_core(L), L, &o, -1.0);
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *Lease_aenter(Lease *L, PyObject *unused)
{
    (void)unused;
    return PyObject_CallOneArg(H_aenter, (PyObject *)L);
}

static PyObject *Lease_aexit(Lease *L, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__aexit__ takes 3 arguments");
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(H_aexit, (PyObject *)L, args[0], args[1], args[2], NULL);
}

static PyMethodDef Lease_methods[] = {
    {"release", (PyCFunction)(void (*)(void))Lease_release, METH_FASTCALL | METH_KEYWORDS,
     "release(latency=None)\n\nEnd the lease with what report() recorded (success if nothing)."},
    {"cancel", (PyCFunction)Lease_cancel, METH_NOARGS,
     "End the lease as never sent: the token reservation comes back."},
    {"fail", (PyCFunction)(void (*)(void))Lease_fail, METH_FASTCALL,
     "fail(exc=None)\n\nEnd the lease as failed; an exception carrying an HTTP status (SDK "
     "errors)\nis mapped like report() (429 -> rate limited)."},
    {"report", (PyCFunction)(void (*)(void))Lease_report, METH_VARARGS | METH_KEYWORDS,
     "report(status=None, *, headers=None, body=None, error_code=None, tokens=None,\n"
     "       input_tokens=None, output_tokens=None)\n\nRecord the provider's answer and "
     "the tokens used; applied when the lease ends."},
    {"usage", (PyCFunction)(void (*)(void))Lease_usage, METH_VARARGS | METH_KEYWORDS,
     "usage(input_tokens=None, output_tokens=None, tokens=None)\n\nRecord the tokens a "
     "successful response used."},
    {"_set_outcome", (PyCFunction)Lease__set_outcome, METH_O, NULL},
    {"_release_http", (PyCFunction)(void (*)(void))Lease__release_http, METH_FASTCALL, NULL},
    {"_request", (PyCFunction)Lease__request, METH_NOARGS, NULL},
    {"__enter__", (PyCFunction)Lease_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Lease_exit, METH_FASTCALL, NULL},
    {"__aenter__", (PyCFunction)Lease_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))Lease_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Lease_getset[] = {
    {"key", (getter)Lease_key, NULL, "The secret (the API key to send).", NULL},
    {"key_id", (getter)Lease_key_id, NULL, "The key's id.", NULL},
    {"meta", (getter)Lease_meta, NULL, "The key's metadata (a dict).", NULL},
    {"elapsed", (getter)Lease_elapsed, NULL, "Seconds since the key was acquired.", NULL},
    {"done", (getter)Lease_done, NULL, "True once released.", NULL},
    {"estimated_tokens", (getter)Lease_tokens, NULL, "Tokens charged at acquire.", NULL},
    {"_acquired", (getter)Lease_acquired, NULL, NULL, NULL},
    {"_key_index", (getter)Lease_key_index, NULL, NULL, NULL},
    {"_key_gen", (getter)Lease_key_gen, NULL, NULL, NULL},
    {"_start_ns", (getter)Lease_start_ns, NULL, NULL, NULL},
    {"_pool", (getter)Lease_pool, NULL, NULL, NULL},
    {"_wait_stamps", (getter)Lease_wait_stamps, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Lease_members[] = {
    {"model", T_OBJECT, offsetof(Lease, model), READONLY, "The model asked for, or None."},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "keymesh.Lease",
    .tp_basicsize = sizeof(Lease),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One key handed out: `key` is the secret to send, `key_id` its id, `meta`\n"
              "the key's metadata.  Finish it once, with release()/report() or by leaving\n"
              "`with pool.lease(...)`; repr() never shows the secret.",
    .tp_dealloc = (destructor)lease_dealloc,
    .tp_traverse = (traverseproc)lease_traverse,
    .tp_clear = (inquiry)lease_clear,
    .tp_repr = (reprfunc)Lease_repr,
    .tp_str = (reprfunc)Lease_repr,
    .tp_methods = Lease_methods,
    .tp_getset = Lease_getset,
    .tp_members = Lease_members,
    .tp_weaklistoffset = offsetof(Lease, weakreflist),
};

/* ------------------------------------------------------------- module */

static int take_helper(PyObject *d, const char *name, PyObject **slot)
{
    PyObject *v = PyDict_GetItemString(d, name);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "keymesh._ext.setup: no helper %s", name);
        return -1;
    }
    Py_INCREF(v);
    Py_XSETREF(*slot, v);
    return 0;
}

static PyObject *mod_setup(PyObject *m, PyObject *d)
{
    (void)m;
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "setup(dict)");
        return NULL;
    }
    if (take_helper(d, "KeyMeshError", &H_KeyMeshError) < 0 ||
        take_helper(d, "raise", &H_raise) < 0 ||
        take_helper(d, "raise_closed", &H_raise_closed) < 0 ||
        take_helper(d, "strategy_code", &H_strategy_code) < 0 ||
        take_helper(d, "meta_loads", &H_meta_loads) < 0 ||
        take_helper(d, "exc_http", &H_exc_http) < 0 ||
        take_helper(d, "cancelled", &H_cancelled) < 0 || take_helper(d, "aenter", &H_aenter) < 0 ||
        take_helper(d, "aexit", &H_aexit) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mod_acquire_fn_address(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    /* Which copy of libkeymesh this module is bound to: keymesh._pool
     * compares it with the one ctypes loaded. */
    int (*fn)(km_env *, const km_request *, km_lease *) = km_acquire;
    void *p;
    memcpy(&p, &fn, sizeof p);
    return PyLong_FromVoidPtr(p);
}

static PyObject *mod_header_version(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyUnicode_FromString(KM_VERSION_STRING);
}

static PyMethodDef mod_methods[] = {
    {"setup", (PyCFunction)mod_setup, METH_O, "setup(helpers): keymesh._pool's helpers."},
    {"acquire_fn_address", (PyCFunction)mod_acquire_fn_address, METH_NOARGS,
     "Address of the km_acquire this module calls."},
    {"header_version", (PyCFunction)mod_header_version, METH_NOARGS,
     "KM_VERSION_STRING of the keymesh.h this module was built with."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef ext_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "keymesh._ext",
    .m_doc = "The hot path of the KeyMesh binding in C (see keymesh._hot for the ctypes twin).",
    .m_size = -1,
    .m_methods = mod_methods,
};

PyMODINIT_FUNC PyInit__ext(void);
PyMODINIT_FUNC PyInit__ext(void)
{
    static int atfork_done;
    if (!atfork_done) {
        if (pthread_atfork(NULL, NULL, on_fork_child) != 0) {
            PyErr_SetString(PyExc_ImportError, "keymesh._ext: pthread_atfork failed");
            return NULL;
        }
        atfork_done = 1;
    }
    /* Compiled against one keymesh.h, bound at run time to whatever
     * libkeymesh.so.0 the dynamic linker found: refuse a library whose
     * structs differ (keymesh._pool then uses ctypes, which checks its own
     * declarations the same way). */
    static const struct { int id; size_t size; const char *name; } structs[] = {
        {KM_ST_REQUEST, sizeof(km_request), "km_request"},
        {KM_ST_LEASE, sizeof(km_lease), "km_lease"},
        {KM_ST_OUTCOME, sizeof(km_outcome), "km_outcome"},
    };
    for (size_t i = 0; i < sizeof structs / sizeof structs[0]; i++) {
        size_t lib = km_struct_size(structs[i].id);
        if (lib != structs[i].size) {
            PyErr_Format(PyExc_ImportError,
                         "keymesh._ext: built with %s of %zu bytes, libkeymesh has %zu: "
                         "rebuild the extension against this library",
                         structs[i].name, structs[i].size, lib);
            return NULL;
        }
    }
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&LeaseType) < 0)
        return NULL;
#define INTERN(var, s)                                                                          \
    if (!(var = PyUnicode_InternFromString(s)))                                                 \
        return NULL;
    INTERN(S_reattach, "_reattach")
    INTERN(S_check_segment, "_check_segment")
    INTERN(S_exhausted_check, "_exhausted_check")
    INTERN(S_busy, "busy")
    INTERN(S_closing, "closing")
    INTERN(S_ptr, "ptr")
    INTERN(S_pool_name, "pool_name")
#undef INTERN
    PyObject *m = PyModule_Create(&ext_module);
    if (!m)
        return NULL;
    Py_INCREF(&CoreType);
    Py_INCREF(&LeaseType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObject(m, "Lease", (PyObject *)&LeaseType) < 0 ||
        PyModule_AddIntConstant(m, "WAIT_CHUNK_MS", WAIT_CHUNK_MS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
