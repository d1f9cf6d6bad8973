# C types for the compiled build of _guard.py (see conn.pxd): the guard's counters as C
# fields and its scanning loop over C integers; it runs on every read of every client
# connection. Floats stay IEEE doubles, as they are interpreted.
import cython

cdef class FrameGuard:
    cdef public object _limits
    cdef public Py_ssize_t _preface
    cdef public object _hdr
    cdef public Py_ssize_t _remaining
    cdef public Py_ssize_t _block
    cdef public double _control
    cdef public double _streams
    cdef public double _sent
    cdef public Py_ssize_t _sent_seen
    cdef public double _last

    @cython.locals(pos=Py_ssize_t, size=Py_ssize_t, take=Py_ssize_t, frames=Py_ssize_t,
                   control=Py_ssize_t, streams=Py_ssize_t, remaining=Py_ssize_t,
                   step=Py_ssize_t, start=Py_ssize_t, need=Py_ssize_t, length=Py_ssize_t,
                   ftype=Py_ssize_t, flags=Py_ssize_t, block=Py_ssize_t,
                   per_turn=Py_ssize_t, max_frame=Py_ssize_t)
    cpdef tuple scan(self, data, double now, Py_ssize_t sent_total=*)

    cpdef double budget(self) except? -1.0

    @cython.locals(elapsed=double, keep=double)
    cpdef _decay(self, double now)
