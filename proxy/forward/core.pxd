# Types for the compiled build of core.py (Cython reads this next to the source; the
# interpreted build never sees it): the per-table field classification and the per-connection
# hop are extension types, so the listeners read their fields as C struct members.
cdef class TableFields:
    cdef public dict cache
    cdef public dict h1
    cdef public dict h2
    cdef public frozenset interesting_raw
    cdef public dict names
    cdef public object table
    cdef public bint tp_matters

cdef class Hop:
    cdef public tuple forwarded
    cdef public bytes forwarded_raw
    cdef public bytes peer
    cdef public bytes proto
    cdef public tuple proto_field
    cdef public tuple via_field
    cdef public bytes via_hop
    cdef public bytes via_raw
