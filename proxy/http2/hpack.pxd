# C types for the compiled build of hpack.py (see conn.pxd): the two compression contexts as
# C structs, and offsets, sizes and the byte being decoded as C integers, so a field costs a
# few C operations instead of Python integer arithmetic. Integers that a peer can make large
# (`_read_int`'s value and shift) stay Python integers: no C overflow to reason about.
import cython

cdef class Decoder:
    cdef public list _dynamic
    cdef public Py_ssize_t _size
    cdef public Py_ssize_t _bad
    cdef public Py_ssize_t max_allowed
    cdef public Py_ssize_t max_size
    cdef public Py_ssize_t max_list_size
    cdef public bint oversized
    cdef public bint check
    cdef public object problem

    @cython.locals(pos=Py_ssize_t, dynamic=list)
    cpdef tuple _get(self, Py_ssize_t index)

    @cython.locals(size=Py_ssize_t, dynamic=list)
    cpdef _add(self, tuple field, bint bad)

    @cython.locals(dynamic=list, cut=Py_ssize_t)
    cpdef _evict(self)

    @cython.locals(headers=list, listed=Py_ssize_t, limit=Py_ssize_t, pos=Py_ssize_t,
                   end=Py_ssize_t, first=bint, byte=Py_ssize_t, index=Py_ssize_t, check=bint,
                   bad=bint, field=tuple, size=Py_ssize_t)
    cpdef list decode(self, bytes block)

cdef class Encoder:
    cdef public Py_ssize_t max_size
    cdef public list _entries
    cdef public Py_ssize_t _inserted
    cdef public Py_ssize_t _size
    cdef public dict _full
    cdef public dict _names
    cdef public Py_ssize_t _pending_size

    @cython.locals(entries=list, cut=Py_ssize_t, first=Py_ssize_t, number=Py_ssize_t)
    cpdef _evict(self)

    @cython.locals(out=list, full=dict, names=dict, indexed=tuple, field=tuple,
                   size=Py_ssize_t, at=Py_ssize_t)
    cpdef bytes encode(self, headers)

@cython.locals(mask=Py_ssize_t, end=Py_ssize_t, byte=Py_ssize_t)
cpdef tuple _read_int(bytes block, Py_ssize_t pos, Py_ssize_t prefix)

@cython.locals(huffman=Py_ssize_t, length=Py_ssize_t, stop=Py_ssize_t, raw=bytes,
               decoded=dict, first=Py_ssize_t)
cpdef tuple _read_string(bytes block, Py_ssize_t pos)

@cython.locals(clean=set)
cpdef _check(tuple field)
