# Types for the compiled build of server.py (Cython reads this next to the source; the
# interpreted build never sees it): the exchange and the client connection are extension
# types, so their fields are C struct members instead of CPython's generic attribute look-ups.
import cython

cimport forklane.proxy.http1.head as c_head
from forklane.proxy.forward.core cimport Hop, TableFields
from forklane.proxy.http1.upstream cimport ResponseSink, UpstreamConnection
from forklane.proxy.listener.context cimport ListenerContext

cdef class Downstream

cdef class Exchange(ResponseSink):
    cdef public Downstream down
    cdef public TableFields fields
    cdef public object table
    cdef public dict actions
    cdef public double started
    cdef public list kept
    cdef public dict view
    cdef public list pending
    cdef public object phase
    cdef public bytes method
    cdef public bytes url
    cdef public bytes host
    cdef public Py_ssize_t host_count
    cdef public object xff
    cdef public bint xfp
    cdef public bint xfh
    cdef public object via
    cdef public list conn_tokens
    cdef public object te
    cdef public object upgrade
    cdef public Py_ssize_t header_bytes
    cdef public Py_ssize_t header_count
    cdef public str version
    cdef public bint keep_alive
    cdef public bint chunked
    cdef public bint has_body
    cdef public bint is_head
    cdef public bint req_done
    cdef public list req_trailers
    cdef public Py_ssize_t pending_bytes
    cdef public object decision
    cdef public object route
    cdef public object dest
    cdef public object endpoint
    cdef public bint track
    cdef public object lease
    cdef public object circuit
    cdef public bint retrying
    cdef public int answer_retries
    cdef public Py_ssize_t body_received
    cdef public double body_checked
    cdef public double body_excused
    cdef public UpstreamConnection up
    cdef public bytes head
    cdef public object reply
    cdef public int status
    cdef public int framing
    cdef public bint close_after
    cdef public double deadline
    cdef public int attempts
    cdef public bint reused
    cdef public bint fallback_used
    cdef public bint explain
    cdef public list mirrors
    cdef public object span
    cdef public object block
    cdef public object capture

    cpdef send_body(self, data)
    cpdef send_end(self)
    cpdef release(self)
    cpdef response_head_raw(self, UpstreamConnection conn, c_head.ResponseHead head)
    cpdef _response_tail(self, Downstream down, int status, list parts, length, upgrade_value,
                         via)
    cpdef response_body(self, data)
    cpdef response_end(self, UpstreamConnection conn, trailers)
    cpdef cork(self)
    cpdef uncork(self)
    cpdef explanation(self)

cdef class Downstream:
    cdef public ListenerContext ctx
    cdef public object transport
    cdef public object parser
    cdef public object queue
    cdef public Exchange parsing
    cdef public bint closing
    cdef public bint read_paused
    cdef public bint upstream_blocked
    cdef public bint write_paused
    cdef public bytes peer
    cdef public Hop hop
    cdef public double deadline
    cdef public int deadline_kind
    cdef public object tunnel
    cdef public list out
    cdef public bint first
    cdef public object held
    cdef public bint client_eof
    cdef public Py_ssize_t body_left
    cdef public object passthrough

    cpdef _head_done(self, Exchange ex, target, authority)
    @cython.locals(head=c_head.RequestHead, fields=TableFields, ex=Exchange)
    cpdef _fast_heads(self, data)
    cpdef _fast_body(self, data)
    cpdef on_body(self, body)
    cpdef on_message_complete(self)
    cpdef _request_head(self, Exchange ex, decision, injection, target)
    cpdef start(self, Exchange ex)
    cpdef dispatch(self, Exchange ex, dest, exclude, bint fresh)
    cpdef bind(self, Exchange ex, UpstreamConnection conn)
    cpdef reply(self, Exchange ex, reply)
    cpdef finish(self, Exchange ex)
    cpdef _count(self, Exchange ex, int status)
    cpdef cork(self)
    cpdef write(self, data)
    cpdef flush(self)
    cpdef _update_reading(self)
