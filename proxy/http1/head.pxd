# Types for the compiled build of head.py (Cython reads this next to the source; the
# interpreted build never sees it). Offsets are C integers; the heads are C structs.
import cython

# Constants compared on every field line: C integers here, not module-level Python ints.
cdef int _SPACE, _TAB, F_PLAIN
cdef int _R_PLAIN, _R_LENGTH, _R_CONNECTION, _R_VIA, _R_DROP, _R_UNSURE

cdef class RequestHead:
    cdef public Py_ssize_t end
    cdef public bytes method
    cdef public bytes target
    cdef public bytes host
    cdef public bytes kept
    cdef public dict view
    cdef public Py_ssize_t content_length
    cdef public bint keep_alive
    cdef public object xff
    cdef public bint xfp
    cdef public bint xfh
    cdef public object via
    cdef public bint explain
    cdef public Py_ssize_t header_bytes

cdef class ResponseHead:
    cdef public Py_ssize_t end
    cdef public int status
    cdef public bytes line
    cdef public bytes kept
    cdef public bytes length
    cdef public Py_ssize_t content_length
    cdef public bint keep_alive
    cdef public object via

@cython.locals(raw=bytes, lines=list, size=Py_ssize_t, pos=Py_ssize_t, c=int,
               chars="const unsigned char *")
cpdef list _lines(bytes data, Py_ssize_t start, Py_ssize_t end)

@cython.locals(chars="const unsigned char *", table="const unsigned char *", size=Py_ssize_t,
               pos=Py_ssize_t)
cpdef bint _only(bytes value, bytes allowed)

@cython.locals(lname=bytes, entry=tuple)
cpdef tuple _field_action(dict names, dict actions, bytes name)

@cython.locals(end=Py_ssize_t, count=Py_ssize_t, host_count=Py_ssize_t, run=Py_ssize_t,
               pos=Py_ssize_t, index=Py_ssize_t, first=int, last=int, action=int,
               lines=list, line=bytes, block=bytes, name=bytes, sep=bytes, value=bytes,
               method=bytes, target=bytes, rest=bytes, version=bytes, head=RequestHead,
               parts=list, view=dict, entry=tuple)
cpdef RequestHead parse_request(bytes data, Py_ssize_t start, dict actions, dict names,
                                Py_ssize_t max_bytes, Py_ssize_t max_count)

@cython.locals(lowered=bytes, out=list, line=bytes)
cpdef bytes drop_fields(bytes block, frozenset names)

@cython.locals(lname=bytes)
cpdef int _response_action(bytes name)

@cython.locals(end=Py_ssize_t, count=Py_ssize_t, status=int, run=Py_ssize_t,
               pos=Py_ssize_t, index=Py_ssize_t, first=int, last=int, action=int,
               lines=list, line=bytes, block=bytes, name=bytes, sep=bytes, value=bytes,
               head=ResponseHead, parts=list, d1=int, d2=int, d3=int)
cpdef ResponseHead parse_response(bytes data, Py_ssize_t start)
