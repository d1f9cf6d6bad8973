# Types for the compiled build of upstream.py (Cython reads this next to the source; the
# interpreted build never sees it): the connection and the pools are extension types, so
# their fields are C struct members instead of CPython's generic attribute look-ups.
import cython

cimport forklane.proxy.http1.head as c_head
from forklane.proxy.listener.context cimport Clock

cdef class UpstreamConnection

cdef class ResponseSink:
    cpdef response_head_raw(self, UpstreamConnection conn, c_head.ResponseHead head)
    cpdef response_body(self, data)
    cpdef response_end(self, UpstreamConnection conn, trailers)
    cpdef cork(self)
    cpdef uncork(self)

cdef class UpstreamConnection:
    cdef public Pools pools
    cdef public str address
    cdef public object transport
    cdef public object parser
    cdef public ResponseSink sink
    cdef public list headers
    cdef public int status
    cdef public bytes reason
    cdef public bint interim
    cdef public bint in_trailers
    cdef public bint head_request
    cdef public bint reset_parser
    cdef public bint keep_alive
    cdef public bint seen_bytes
    cdef public double last_used
    cdef public bint tunnel
    cdef public bint upgrade_expected
    cdef public bint busy
    cdef public Py_ssize_t body_left

    @cython.locals(head=c_head.ResponseHead)
    cpdef _fast_head(self, data, sink)
    cpdef _fast_body(self, data)
    cpdef _finish(self)
    cpdef attach(self, sink, bint head_request)
    cpdef close(self)
    cpdef abort(self)

cdef class Pools:
    cdef public object loop
    cdef public Clock clock
    cdef public Py_ssize_t max_idle
    cdef public dict idle
    cdef public Py_ssize_t opened
    cdef public dict open_by_address

    cpdef closed(self, UpstreamConnection conn)
    cpdef take(self, str address)
    cpdef give_back(self, UpstreamConnection conn)
    cpdef forget(self, UpstreamConnection conn)
