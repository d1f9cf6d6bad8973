# Types for the compiled build of accounting.py (Cython reads this next to the source; the
# interpreted build never sees it): counting a request reads the listener context's fields
# as C struct members.
import cython

from forklane.proxy.listener.context cimport ListenerContext

@cython.locals(row=list)
cpdef count_request(ListenerContext ctx, route, int status, double elapsed)
