# C types for the compiled build of _flow.py (see conn.pxd): the relay's per-connection and
# per-stream state as C structs, and the connection state it drives typed, so a DATA frame
# relayed is C calls into conn's methods rather than Python attribute look-ups.
import cython
from forklane.proxy.http2.conn cimport H2Conn

cdef class Peer:
    cdef public H2Conn h2
    cdef public object transport
    cdef public bint write_paused
    cdef public bint dirty
    cdef public Py_ssize_t sent_bytes
    cdef public Hub hub
    cdef public set blocked


cdef class Hub:
    cdef public list dirty
    cdef public object loop
    cdef public bint scheduled

    @cython.locals(dirty=list, peer=Peer)
    cpdef flush(self)

cdef class Pipe:
    cdef public object chunks
    cdef public bint done
    cdef public Peer dst
    cdef public Py_ssize_t dst_sid
    cdef public bint ended
    cdef public object on_done
    cdef public Py_ssize_t sent
    cdef public Peer src
    cdef public Py_ssize_t src_sid
    cdef public object trailers

    @cython.locals(src=Peer)
    cpdef ack(self, Py_ssize_t size)

    @cython.locals(dst=Peer, h2=H2Conn, sid=Py_ssize_t, window=Py_ssize_t, size=Py_ssize_t,
                   last=bint)
    cpdef pump(self)

@cython.locals(hub=Hub)
cpdef _mark(Peer peer)
