# Types for the compiled build of context.py (Cython reads this next to the source; the
# interpreted build never sees it): the clock and the listener context are extension types,
# so the request path reads their fields as C struct members.
from forklane.proxy.metrics cimport Stats

cdef class Clock:
    cdef public double now
    cdef public object time

    cpdef double tick(self)

cdef class ListenerContext:
    cdef public object kind
    cdef public object holder
    cdef public object settings
    cdef public Stats stats
    cdef public object pools
    cdef public object balancer
    cdef public object draw
    cdef public object loop
    cdef public Clock clock
    cdef public set connections
    cdef public list expiring
    cdef public Py_ssize_t opening
    cdef public object overload
    cdef public set watched
    cdef public set tasks
    cdef public bint draining
    cdef public object on_idle
    cdef public object on_busy
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_header_count
    cdef public double header_timeout
    cdef public double idle_timeout
    cdef public double body_timeout
    cdef public object min_body_rate
    cdef public Py_ssize_t max_pipelined
    cdef public object retries
    cdef public object explain_raw
    cdef public bint access_log
    cdef public dict rows
    cdef public bytes host_ok
    cdef public object hooks
    cdef public object fields
    cdef public object open_h2
    cdef public object h2
