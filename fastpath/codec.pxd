# The decoded message's layout, shared with classify.pyx so the classifier
# reads digits straight from the frame without making Python objects.
from libc.stdint cimport uint64_t

from fastpath.crypto cimport DesKey


cdef class Message:
    cdef readonly bytes raw     # the buffer decoded (whole frame body, or bare ISO)
    cdef Py_ssize_t base        # offset of the MTI in raw
    cdef Py_ssize_t tpdu_at     # offset of the TPDU, or -1 for a bare message
    cdef readonly int mti_code  # e.g. 200 for 0200
    cdef readonly uint64_t bitmap
    cdef int off[65]            # data offset of each present field, -1 if absent
    cdef int nbytes[65]         # data bytes of each field
    cdef int units[65]          # digits for n/z, bytes otherwise
    cdef int prefix[65]         # bytes of its length prefix

    cdef object _value(self, int f)
    cdef object _digits(self, int f, int start, int count)
    cdef object _number(self, int f, int start, int count)
    cpdef bint verify_mac(self, DesKey key)


cdef long long field_number(Message m, int f, int start, int count) noexcept
