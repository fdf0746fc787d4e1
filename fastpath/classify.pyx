"""The classifier: which transaction a request is (PROTOCOL.md §3).

Financial requests are keyed by MTI + F3[0:2] + F25 + 60.1, management
messages by MTI + 60.3. The answer is ``(kind, original, response_code)``:
``original`` is the kind an 0400 reverses (else None); ``response_code`` is
None for a supported request, otherwise what to answer:

- ``30`` (format error): a field the classification needs is missing;
- ``12`` (invalid transaction): an MTI that is not a request this host
  takes, or an 0400 that names a kind that cannot be reversed;
- ``40`` (function not supported): a request MTI whose F3/F25/60.1 (or
  60.3) combination is not in the table.
"""

from fastpath.codec cimport Message, field_number

from fastpath.kinds import Kind

cdef tuple KINDS = tuple(Kind)
cdef object UNSUPPORTED = Kind.UNSUPPORTED

# 60.1 -> (kind, MTI, F3[0:2], F25). 60.1 alone names the kind; MTI, F3 and
# F25 must agree with it (for an 0400, all but the MTI).
cdef dict FINANCIAL = {
    1: (Kind.BALANCE, 200, 31, 0),
    10: (Kind.PREAUTH, 100, 3, 6),
    11: (Kind.PREAUTH_CANCEL, 100, 20, 6),
    20: (Kind.COMPLETION, 200, 0, 6),
    24: (Kind.COMPLETION_ADVICE, 220, 0, 6),
    21: (Kind.COMPLETION_VOID, 200, 20, 6),
    22: (Kind.SALE, 200, 0, 0),
    23: (Kind.VOID, 200, 20, 0),
    25: (Kind.REFUND, 220, 20, 0),
}

cdef frozenset REVERSIBLE = frozenset(
    {Kind.PREAUTH, Kind.PREAUTH_CANCEL, Kind.COMPLETION, Kind.COMPLETION_VOID, Kind.SALE,
     Kind.VOID}
)

# (MTI, 60.3) -> kind
cdef dict MANAGEMENT = {
    (800, 1): Kind.SIGN_ON,
    (800, 3): Kind.SIGN_ON,
    (800, 4): Kind.SIGN_ON,
    (800, 360): Kind.PARAM_DOWNLOAD,
    (820, 2): Kind.SIGN_OFF,
    (820, 301): Kind.ECHO,
    (500, 201): Kind.SETTLEMENT,
    (320, 201): Kind.BATCH_UPLOAD,
    (320, 202): Kind.BATCH_UPLOAD,
    (320, 203): Kind.BATCH_UPLOAD,
    (320, 204): Kind.BATCH_UPLOAD,
    (320, 205): Kind.BATCH_UPLOAD,
    (320, 206): Kind.BATCH_UPLOAD,
    (320, 207): Kind.BATCH_UPLOAD,
}

cdef tuple _FORMAT = (UNSUPPORTED, None, "30")
cdef tuple _INVALID = (UNSUPPORTED, None, "12")
cdef tuple _NOT_SUPPORTED = (UNSUPPORTED, None, "40")


cpdef tuple classify(Message m):
    """(kind, original kind for a reversal or None, response code or None)."""
    cdef int mti = m.mti_code
    cdef long long type_code, proc, cond, netcode
    cdef tuple row
    if mti == 100 or mti == 200 or mti == 220 or mti == 400:
        type_code = field_number(m, 60, 0, 2)
        proc = field_number(m, 3, 0, 2)
        cond = field_number(m, 25, 0, 2)
        if type_code < 0 or proc < 0 or cond < 0:
            return _FORMAT
        row = FINANCIAL.get(type_code)
        if row is None or row[2] != proc or row[3] != cond:
            return _INVALID if mti == 400 else _NOT_SUPPORTED
        if mti == 400:
            if row[0] not in REVERSIBLE:
                return _INVALID
            return (Kind.REVERSAL, row[0], None)
        if row[1] != mti:
            return _NOT_SUPPORTED
        return (row[0], None, None)
    if mti == 800 or mti == 820 or mti == 500 or mti == 320:
        netcode = field_number(m, 60, 8, 3)
        if netcode < 0:
            return _FORMAT
        kind = MANAGEMENT.get((mti, netcode))
        if kind is None:
            return _NOT_SUPPORTED
        return (kind, None, None)
    return _INVALID
