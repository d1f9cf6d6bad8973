# C types for the compiled build of frames.py (see conn.pxd): offsets and header fields as C
# integers in the splitting loop.
import cython

@cython.locals(frames=list, pos=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t,
               stop=Py_ssize_t, high=Py_ssize_t, low=Py_ssize_t, ftype=Py_ssize_t,
               flags=Py_ssize_t, sid=Py_ssize_t)
cpdef tuple split(buf, Py_ssize_t max_size)
