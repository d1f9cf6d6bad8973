# C types for the compiled build of conn.py (Cython reads this next to the source; the
# interpreted build never sees it): the connection and stream state as C structs, so their
# fields are read and written directly instead of through CPython's generic attribute access.
import cython
from forklane.proxy.http2.hpack cimport Decoder, Encoder

cdef class _Stream:
    cdef public Py_ssize_t send_window
    cdef public Py_ssize_t recv_window
    cdef public Py_ssize_t recv_pending
    cdef public bint local_open
    cdef public bint remote_open
    cdef public bint head_seen

cdef class H2Conn:
    cdef public bint client_side
    cdef public dict streams
    cdef public list out
    cdef public object buf
    cdef public bint preface_pending
    cdef public Encoder encoder
    cdef public Decoder decoder
    cdef public dict problems
    cdef public Py_ssize_t max_concurrent
    cdef public Py_ssize_t max_header_list
    cdef public Py_ssize_t peer_max_concurrent
    cdef public Py_ssize_t peer_initial_window
    cdef public Py_ssize_t max_outbound_frame_size
    cdef public bint settings_seen
    cdef public Py_ssize_t send_window
    cdef public Py_ssize_t recv_window
    cdef public Py_ssize_t recv_target
    cdef public Py_ssize_t recv_pending
    cdef public Py_ssize_t _initial_increment
    cdef public Py_ssize_t stream_window
    cdef public Py_ssize_t _stream_update
    cdef public Py_ssize_t next_sid
    cdef public Py_ssize_t last_remote_sid
    cdef public Py_ssize_t remote_open_count
    cdef public Py_ssize_t local_open_count
    cdef public bint goaway_received
    cdef public bint goaway_sent
    cdef public Py_ssize_t _block_sid
    cdef public Py_ssize_t _block_flags
    cdef public list _block

    @cython.locals(events=list, parsed=list, ftype=Py_ssize_t, flags=Py_ssize_t,
                   sid=Py_ssize_t)
    cpdef list receive(self, data)

    cpdef _on_headers(self, list events, Py_ssize_t flags, Py_ssize_t sid, payload)

    cpdef _close(self, Py_ssize_t sid, _Stream stream)

    @cython.locals(stream=_Stream, size=Py_ssize_t)
    cpdef _on_data(self, list events, Py_ssize_t flags, Py_ssize_t sid, payload)

    @cython.locals(stream=_Stream, decoder=Decoder, ended=bint)
    cpdef _header_block(self, list events, Py_ssize_t flags, Py_ssize_t sid, block)

    @cython.locals(stream=_Stream)
    cpdef _new_remote_head(self, list events, Py_ssize_t sid, headers, bint ended, problem)

    cpdef _remote_end(self, list events, Py_ssize_t sid, _Stream stream)

    @cython.locals(pending=Py_ssize_t)
    cpdef _give_back(self, Py_ssize_t size)

    @cython.locals(stream=_Stream, pending=Py_ssize_t)
    cpdef ack(self, Py_ssize_t size, Py_ssize_t sid)

    @cython.locals(stream=_Stream, window=Py_ssize_t)
    cpdef Py_ssize_t window(self, Py_ssize_t sid) except? -1

    @cython.locals(stream=_Stream)
    cpdef _Stream _sendable(self, Py_ssize_t sid)

    cpdef _local_end(self, Py_ssize_t sid, _Stream stream)

    @cython.locals(stream=_Stream)
    cpdef send_headers(self, Py_ssize_t sid, headers, bint end_stream=*)

    @cython.locals(stream=_Stream, size=Py_ssize_t, out=list)
    cpdef send_data(self, Py_ssize_t sid, data, bint end_stream=*)
