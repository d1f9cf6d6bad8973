# Types for the compiled build of metrics.py (Cython reads this next to the source; the
# interpreted build never sees it): the latency histogram's fields are C struct members and
# its bucket arithmetic C doubles and integers. Every other counter stays an ordinary
# attribute (the instance keeps a __dict__ for them).
import cython

cdef class Stats:
    cdef dict __dict__
    cdef public list latency_buckets
    cdef public double latency_sum
    cdef public Py_ssize_t latency_count

    @cython.locals(scaled=double, step=Py_ssize_t)
    cpdef observe_latency(self, double seconds)
