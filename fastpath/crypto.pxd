# C-level view of the DES keys, so codec.pyx computes MACs without Python calls.
from libc.stdint cimport uint8_t, uint64_t


cdef extern from "des.h":
    ctypedef struct tdes_key:
        int single
    void tdes_setup(tdes_key *key, const uint8_t *bytes, int key_len)
    uint64_t tdes_encrypt64(const tdes_key *key, uint64_t x) nogil
    uint64_t tdes_decrypt64(const tdes_key *key, uint64_t x) nogil
    uint64_t des_load64(const uint8_t *p) nogil
    void des_store64(uint8_t *p, uint64_t v) nogil


cdef class DesKey:
    cdef tdes_key key
    cdef readonly int length

cdef uint64_t cup_mac_raw(DesKey key, const uint8_t *data, Py_ssize_t n) noexcept nogil
