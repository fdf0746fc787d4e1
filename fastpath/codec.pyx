"""ISO 8583 for the CUP POS field set: a lazy decoder and a one-buffer encoder.

Operations
----------
- ``decode(iso)`` / ``decode_frame(body)``: validate a whole message in one
  pass (lengths, maxima, BCD nibbles, text bytes, bitmap against the spec,
  trailing bytes) and record where each field lies. No Python object is made
  for a field until it is read, so a handler pays only for what it touches.
- ``encode(...)``, ``encode_frame(...)``, ``build_response(...)``: write the
  whole message into one C buffer, copying echoed fields from the request as
  raw bytes, and append the CUP MAC when a key is given.

Goals: every read is checked against the buffer's end, so a hostile frame
can only ever produce a :class:`DecodeError` naming the field and offset;
the cost is O(n) in the frame's length.

The spec table (PROTOCOL.md §2) is compiled in below. Fixed odd-length
numerics are right-aligned behind one pad nibble, except field 22, which is
left-aligned; variable numerics are left-aligned with a trailing pad nibble.
Pad nibbles are written as 0 and accepted as 0 or F.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.long cimport PyLong_AsUnsignedLongLong
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

from fastpath.crypto cimport DesKey, cup_mac_raw, des_load64, des_store64

from fastpath.errors import DecodeError, EncodeError


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)

# Field formats and length kinds.
cdef enum:
    F_NONE = 0   # not in the CUP POS field set: a bitmap naming it is an error
    F_N = 1      # packed BCD digits
    F_Z = 2      # track data: BCD digits with D as the separator
    F_AN = 3     # text (an/ans): ASCII, or GBK where Chinese text appears
    F_B = 4      # raw bytes

cdef enum:
    L_FIXED = 0
    L_LL = 1     # 1 byte BCD length
    L_LLL = 2    # 2 bytes BCD length

# A response never needs more: the largest fields are 62 (512), 55 (255),
# 48 (161 bytes) and 63 (163); the frame limit is 2048 by default.
cdef enum:
    BUF_SIZE = 4096
    TPDU_HEADER = 11  # TPDU (5) + header (6)

cdef uint8_t FMT[65]
cdef uint8_t LENKIND[65]
cdef int MAXLEN[65]       # digits for F_N / F_Z, bytes otherwise
cdef bint LEFT_ALIGN[65]  # fixed odd numerics: pad nibble last instead of first


cdef void _spec(int f, uint8_t fmt, uint8_t kind, int maxlen, bint left=False):
    FMT[f] = fmt
    LENKIND[f] = kind
    MAXLEN[f] = maxlen
    LEFT_ALIGN[f] = left or kind != L_FIXED


cdef void _init_spec():
    memset(FMT, 0, sizeof(FMT))
    _spec(2, F_N, L_LL, 19)
    _spec(3, F_N, L_FIXED, 6)
    _spec(4, F_N, L_FIXED, 12)
    _spec(11, F_N, L_FIXED, 6)
    _spec(12, F_N, L_FIXED, 6)
    _spec(13, F_N, L_FIXED, 4)
    _spec(14, F_N, L_FIXED, 4)
    _spec(15, F_N, L_FIXED, 4)
    _spec(22, F_N, L_FIXED, 3, True)
    _spec(23, F_N, L_FIXED, 3)
    _spec(25, F_N, L_FIXED, 2)
    _spec(26, F_N, L_FIXED, 2)
    _spec(32, F_N, L_LL, 11)
    _spec(35, F_Z, L_LL, 37)
    _spec(36, F_Z, L_LLL, 104)
    _spec(37, F_AN, L_FIXED, 12)
    _spec(38, F_AN, L_FIXED, 6)
    _spec(39, F_AN, L_FIXED, 2)
    _spec(41, F_AN, L_FIXED, 8)
    _spec(42, F_AN, L_FIXED, 15)
    _spec(44, F_AN, L_LL, 25)
    _spec(48, F_N, L_LLL, 322)
    _spec(49, F_AN, L_FIXED, 3)
    _spec(52, F_B, L_FIXED, 8)
    _spec(53, F_N, L_FIXED, 16)
    _spec(54, F_AN, L_LLL, 20)
    _spec(55, F_B, L_LLL, 255)
    _spec(60, F_N, L_LLL, 17)
    _spec(61, F_N, L_LLL, 29)
    _spec(62, F_B, L_LLL, 512)
    _spec(63, F_AN, L_LLL, 163)
    _spec(64, F_B, L_FIXED, 8)


_init_spec()

#: The fields this codec knows, for callers and tests.
DEFINED_FIELDS = tuple(f for f in range(2, 65) if FMT[f] != F_NONE)
#: Field number -> (format, length kind, maximum), as in PROTOCOL.md §2.
FIELD_SPECS = {
    f: (("n", "z", "an", "b")[FMT[f] - 1], ("fixed", "LLVAR", "LLLVAR")[LENKIND[f]], MAXLEN[f])
    for f in DEFINED_FIELDS
}

#: Fields a response echoes from its request (PROTOCOL.md §3, sale).
DEFAULT_ECHO = (2, 3, 4, 11, 25, 41, 42, 49, 60)

cdef const char *HEXCHARS = b"0123456789ABCDEF"


cdef inline bint _bit(uint64_t bitmap, int f) noexcept nogil:
    return (bitmap >> (64 - f)) & 1


cdef inline int _bcd_len(const uint8_t *p, int nbytes) noexcept nogil:
    """A BCD length prefix as an int, or -1 when a nibble is not a digit."""
    cdef int v = 0, i, hi, lo
    for i in range(nbytes):
        hi = p[i] >> 4
        lo = p[i] & 15
        if hi > 9 or lo > 9:
            return -1
        v = v * 100 + hi * 10 + lo
    return v


cdef class SettlementTotals:
    """Field 48 of an 0500: per card class, debit/credit amounts, counts, code."""

    cdef public object debit_amount, debit_count, credit_amount, credit_count, code
    cdef public object foreign_debit_amount, foreign_debit_count
    cdef public object foreign_credit_amount, foreign_credit_count, foreign_code

    def __repr__(self):
        return (
            f"SettlementTotals(debit={self.debit_amount}/{self.debit_count}, "
            f"credit={self.credit_amount}/{self.credit_count}, code={self.code}, "
            f"foreign_debit={self.foreign_debit_amount}/{self.foreign_debit_count}, "
            f"foreign_credit={self.foreign_credit_amount}/{self.foreign_credit_count}, "
            f"foreign_code={self.foreign_code})"
        )


cdef class Message:
    """A decoded ISO 8583 message: where each field lies in the frame.

    Values are made on access: ``msg[n]`` / ``msg.get(n)`` give ``str`` for
    numeric, track and text fields (track separators as ``=``) and ``bytes``
    for binary ones; named properties cover the fields a handler reads.
    """

    # -- whole message -----------------------------------------------------

    @property
    def mti(self) -> str:
        return f"{self.mti_code:04d}"

    @property
    def fields(self) -> tuple:
        """The numbers of the fields present, in order."""
        return tuple(f for f in range(2, 65) if self.off[f] >= 0)

    @property
    def tpdu(self):
        if self.tpdu_at < 0:
            return None
        return self.raw[self.tpdu_at : self.tpdu_at + 5]

    @property
    def header(self):
        if self.tpdu_at < 0:
            return None
        return self.raw[self.tpdu_at + 5 : self.tpdu_at + 11]

    @property
    def destination(self) -> int:
        """TPDU destination address (the application), e.g. 0x0001."""
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(self.raw)
        if self.tpdu_at < 0:
            return -1
        return (p[self.tpdu_at + 1] << 8) | p[self.tpdu_at + 2]

    @property
    def source(self) -> int:
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(self.raw)
        if self.tpdu_at < 0:
            return -1
        return (p[self.tpdu_at + 3] << 8) | p[self.tpdu_at + 4]

    @property
    def iso(self) -> bytes:
        """The ISO 8583 message itself, MTI through the last field."""
        return self.raw[self.base :]

    # -- fields ------------------------------------------------------------

    def __contains__(self, int f):
        return 2 <= f <= 64 and self.off[f] >= 0

    def __getitem__(self, int f):
        if not (2 <= f <= 64) or self.off[f] < 0:
            raise KeyError(f)
        return self._value(f)

    def get(self, int f, default=None):
        if not (2 <= f <= 64) or self.off[f] < 0:
            return default
        return self._value(f)

    def raw_field(self, int f):
        """The field's data bytes as they are on the wire, without the length prefix."""
        if not (2 <= f <= 64) or self.off[f] < 0:
            return None
        return self.raw[self.off[f] : self.off[f] + self.nbytes[f]]

    def to_dict(self) -> dict:
        return {f: self._value(f) for f in range(2, 65) if self.off[f] >= 0}

    cdef object _value(self, int f):
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(self.raw) + self.off[f]
        if FMT[f] == F_B:
            return PyBytes_FromStringAndSize(<const char *>p, self.nbytes[f])
        if FMT[f] == F_AN:
            return self.raw[self.off[f] : self.off[f] + self.nbytes[f]].decode("gbk", "replace")
        return self._digits(f, 0, self.units[f])

    cdef object _digits(self, int f, int start, int count):
        """Digits [start, start+count) of an n/z field, as str (D shown as '=')."""
        cdef char buf[340]
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(self.raw) + self.off[f]
        cdef int skip = 0, i, k, nib
        if self.off[f] < 0:
            return None
        if start + count > self.units[f]:
            count = self.units[f] - start
        if count <= 0:
            return ""
        if not LEFT_ALIGN[f] and (self.units[f] & 1):
            skip = 1
        for i in range(count):
            k = i + start + skip
            nib = (p[k >> 1] >> 4) if not (k & 1) else (p[k >> 1] & 15)
            buf[i] = b"=" if nib == 13 else <char>(48 + nib)
        return PyUnicode_DecodeASCII(buf, count, NULL)

    cdef object _number(self, int f, int start, int count):
        """Digits of an n field as an int, None when absent or out of range."""
        cdef long long v = field_number(self, f, start, count)
        return None if v < 0 else v

    # Named accessors for what handlers read. Absent fields give None.
    @property
    def pan(self): return self.get(2)
    @property
    def card_number(self):
        """The PAN: field 2 when keyed in, else the digits of track 2 before '='."""
        cdef int i
        cdef const uint8_t *p
        if self.off[2] >= 0:
            return self._value(2)
        if self.off[35] < 0:
            return None
        p = <const uint8_t *>PyBytes_AS_STRING(self.raw) + self.off[35]
        for i in range(self.units[35]):
            if ((p[i >> 1] >> 4) if not (i & 1) else (p[i >> 1] & 15)) == 13:
                return self._digits(35, 0, i)
        return self._digits(35, 0, self.units[35])
    @property
    def processing_code(self): return self.get(3)
    @property
    def amount(self):
        """Field 4 in minor units (fen), as an int."""
        return self._number(4, 0, 12)
    @property
    def stan(self): return self.get(11)
    @property
    def local_time(self): return self.get(12)
    @property
    def local_date(self): return self.get(13)
    @property
    def expiry(self): return self.get(14)
    @property
    def settlement_date(self): return self.get(15)
    @property
    def entry_mode(self): return self.get(22)
    @property
    def card_sequence(self): return self.get(23)
    @property
    def condition_code(self): return self.get(25)
    @property
    def pin_capture_code(self): return self.get(26)
    @property
    def acquirer_id(self): return self.get(32)
    @property
    def track2(self): return self.get(35)
    @property
    def track3(self): return self.get(36)
    @property
    def rrn(self): return self.get(37)
    @property
    def auth_code(self): return self.get(38)
    @property
    def response_code(self): return self.get(39)
    @property
    def tid(self): return self.get(41)
    @property
    def mid(self): return self.get(42)
    @property
    def currency(self): return self.get(49)
    @property
    def pin_block(self): return self.get(52)
    @property
    def security_control(self): return self.get(53)
    @property
    def icc_data(self): return self.get(55)
    @property
    def mac(self): return self.get(64)

    # Field 60: 60.1 n2 type code, 60.2 n6 batch, 60.3 n3 network code,
    # 60.4 n1 read capability, 60.5 n1 IC condition.
    @property
    def msg_type_code(self): return self._digits(60, 0, 2) if self.off[60] >= 0 else None
    @property
    def batch(self): return self._digits(60, 2, 6) if self.off[60] >= 0 else None
    @property
    def network_code(self): return self._digits(60, 8, 3) if self.off[60] >= 0 else None
    @property
    def read_capability(self): return self._digits(60, 11, 1) if self.off[60] >= 0 else None
    @property
    def ic_condition(self): return self._digits(60, 12, 1) if self.off[60] >= 0 else None

    # Field 61: 61.1 n6 original batch, 61.2 n6 original STAN, 61.3 n4 original date.
    @property
    def original_batch(self): return self._digits(61, 0, 6) if self.off[61] >= 0 else None
    @property
    def original_stan(self): return self._digits(61, 6, 6) if self.off[61] >= 0 else None
    @property
    def original_date(self): return self._digits(61, 12, 4) if self.off[61] >= 0 else None

    def settlement_totals(self):
        """Field 48 of a settlement (0500/0510): domestic then foreign totals.

        Each part is debit amount n12, debit count n3, credit amount n12,
        credit count n3, code n1 (31 digits); the foreign part may be absent.
        Raises DecodeError when field 48 is absent or too short.
        """
        if self.off[48] < 0 or self.units[48] < 31:
            raise DecodeError("settlement totals need 31 or 62 digits", 48,
                              self.off[48] if self.off[48] >= 0 else 0)
        t = SettlementTotals.__new__(SettlementTotals)
        t.debit_amount = self._number(48, 0, 12)
        t.debit_count = self._number(48, 12, 3)
        t.credit_amount = self._number(48, 15, 12)
        t.credit_count = self._number(48, 27, 3)
        t.code = self._number(48, 30, 1)
        if self.units[48] >= 62:
            t.foreign_debit_amount = self._number(48, 31, 12)
            t.foreign_debit_count = self._number(48, 43, 3)
            t.foreign_credit_amount = self._number(48, 46, 12)
            t.foreign_credit_count = self._number(48, 58, 3)
            t.foreign_code = self._number(48, 61, 1)
        return t

    # -- MAC ---------------------------------------------------------------

    def mac_input(self) -> bytes:
        """The MAB: the message from the MTI through field 63."""
        end = self.off[64] if self.off[64] >= 0 else PyBytes_GET_SIZE(self.raw)
        return self.raw[self.base : end]

    def mac_input_without(self, int f):
        """The MAB with field f's data left out (its bitmap bit and length prefix stay)."""
        end = self.off[64] if self.off[64] >= 0 else PyBytes_GET_SIZE(self.raw)
        if not (2 <= f <= 63) or self.off[f] < 0:
            return self.raw[self.base : end]
        return self.raw[self.base : self.off[f]] + self.raw[self.off[f] + self.nbytes[f] : end]

    cpdef bint verify_mac(self, DesKey key):
        """True when field 64 is present and is the CUP MAC of the MAB under key."""
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(self.raw)
        if self.off[64] < 0:
            return False
        return cup_mac_raw(key, p + self.base, self.off[64] - self.base) == des_load64(
            p + self.off[64]
        )

    def __repr__(self):
        # No field values: a repr can reach a log, and fields hold PANs and tracks.
        return f"<Message {self.mti} fields={list(self.fields)}>"


cdef long long field_number(Message m, int f, int start, int count) noexcept:
    """Digits [start, start+count) of numeric field f as a number; -1 if absent."""
    cdef const uint8_t *p
    cdef int skip = 0, i, k
    cdef long long v = 0
    if m.off[f] < 0 or start + count > m.units[f] or count > 18:
        return -1
    p = <const uint8_t *>PyBytes_AS_STRING(m.raw) + m.off[f]
    if not LEFT_ALIGN[f] and (m.units[f] & 1):
        skip = 1
    for i in range(count):
        k = i + start + skip
        v = v * 10 + ((p[k >> 1] >> 4) if not (k & 1) else (p[k >> 1] & 15))
    return v


cdef Message _decode(bytes raw, Py_ssize_t base, Py_ssize_t tpdu_at):
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), pos = base, units, nb
    cdef Py_ssize_t field_at  # where the field being read starts: the readable part's end
    cdef int f, i, lenbytes, nib, first_data, last_data, pad_at
    cdef uint8_t fmt, c
    cdef Message m = Message.__new__(Message)
    m.raw = raw
    m.base = base
    m.tpdu_at = tpdu_at
    if n - pos < 10:
        raise DecodeError("message shorter than MTI and bitmap", 0 if n - pos < 2 else 1, pos)
    for i in range(2):
        if (p[pos + i] >> 4) > 9 or (p[pos + i] & 15) > 9:
            raise DecodeError("MTI is not BCD", 0, pos + i)
    m.mti_code = ((p[pos] >> 4) * 1000 + (p[pos] & 15) * 100
                  + (p[pos + 1] >> 4) * 10 + (p[pos + 1] & 15))
    m.bitmap = des_load64(p + pos + 2)
    if m.bitmap >> 63:
        raise DecodeError("secondary bitmap (field 1) is not used by this protocol", 1, pos + 2)
    pos += 10
    m.off[0] = m.off[1] = -1
    for f in range(2, 65):
        if not _bit(m.bitmap, f):
            m.off[f] = -1
            continue
        fmt = FMT[f]
        field_at = pos
        if fmt == F_NONE:
            raise DecodeError("bitmap names a field the CUP POS field set does not define",
                              f, pos, field_at)
        lenbytes = LENKIND[f]
        if lenbytes == L_FIXED:
            units = MAXLEN[f]
        else:
            if pos + lenbytes > n:
                raise DecodeError("truncated length prefix", f, pos, field_at)
            units = _bcd_len(p + pos, lenbytes)
            if units < 0:
                raise DecodeError("length prefix is not BCD", f, pos, field_at)
            if units > MAXLEN[f]:
                raise DecodeError(f"length {units} over the maximum {MAXLEN[f]}", f, pos,
                                  field_at)
        m.prefix[f] = lenbytes
        pos += lenbytes
        nb = (units + 1) >> 1 if fmt == F_N or fmt == F_Z else units
        if pos + nb > n:
            raise DecodeError(f"truncated: needs {nb} bytes, {n - pos} left", f, pos, field_at)
        if fmt == F_N or fmt == F_Z:
            # Nibble positions of the data; the other one, if any, is padding.
            pad_at = -1
            if units & 1:
                pad_at = 2 * nb - 1 if LEFT_ALIGN[f] else 0
            for i in range(2 * nb):
                nib = (p[pos + (i >> 1)] >> 4) if not (i & 1) else (p[pos + (i >> 1)] & 15)
                if i == pad_at:
                    if nib != 0 and nib != 15:
                        raise DecodeError("pad nibble is neither 0 nor F", f, pos + (i >> 1),
                                          field_at)
                elif nib > 9 and not (fmt == F_Z and nib == 13):
                    raise DecodeError("non-BCD nibble in a numeric field", f, pos + (i >> 1),
                                      field_at)
        elif fmt == F_AN:
            for i in range(nb):
                c = p[pos + i]
                if c < 0x20 or c == 0x7F:
                    raise DecodeError("control byte in a text field", f, pos + i, field_at)
        m.off[f] = <int>pos
        m.nbytes[f] = <int>nb
        m.units[f] = <int>units
        pos += nb
    if pos != n:
        raise DecodeError(f"{n - pos} trailing bytes after the last field", None, pos, pos)
    return m


def decode(iso) -> Message:
    """Decode a bare ISO 8583 message (MTI first)."""
    if type(iso) is not bytes:
        iso = bytes(iso)
    return _decode(<bytes>iso, 0, -1)


def decode_frame(body) -> Message:
    """Decode a frame body as the splitter yields it: TPDU (5), header (6), ISO."""
    if type(body) is not bytes:
        body = bytes(body)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(<bytes>body)
    if PyBytes_GET_SIZE(<bytes>body) < TPDU_HEADER:
        raise DecodeError("frame shorter than TPDU and header", None, 0)
    if p[0] != 0x60:
        raise DecodeError(f"TPDU ID is {p[0]:02X}, not 60", None, 0)
    return _decode(<bytes>body, TPDU_HEADER, 0)


def decode_readable(body, exc):
    """What of a frame body could be read before ``exc`` (the DecodeError that
    ``decode_frame(body)`` raised): a Message of the fields before the one that
    failed (all of them when bytes trail the last), or None when none could be.
    For an answer that echoes what it can of a request that does not decode."""
    if exc.start < 0:
        return None
    head = bytes(body[: exc.start])
    if exc.field is not None:
        # Field f is bit 64 - f of the big-endian bitmap: that field's bit and
        # every later one cleared, the fields before it decode as they did.
        at = TPDU_HEADER + 2
        bitmap = int.from_bytes(head[at : at + 8], "big") & ~((1 << (65 - exc.field)) - 1)
        head = head[:at] + bitmap.to_bytes(8, "big") + head[at + 8 :]
    try:
        return decode_frame(head)
    except DecodeError:
        return None


# -- encoding ----------------------------------------------------------------

cdef class _Buf:
    cdef uint8_t data[BUF_SIZE]
    cdef Py_ssize_t pos

    cdef inline int room(self, Py_ssize_t n, int f) except -1:
        if self.pos + n > BUF_SIZE:
            raise EncodeError("message too long", f)
        return 0


cdef inline int _put_bcd_len(_Buf b, int f, Py_ssize_t units) except -1:
    if units > MAXLEN[f]:
        raise EncodeError(f"length {units} over the maximum {MAXLEN[f]}", f)
    b.room(2, f)
    if LENKIND[f] == L_LL:
        b.data[b.pos] = <uint8_t>(((units // 10) << 4) | (units % 10))
        b.pos += 1
    elif LENKIND[f] == L_LLL:
        b.data[b.pos] = <uint8_t>(units // 100)
        b.data[b.pos + 1] = <uint8_t>((((units // 10) % 10) << 4) | (units % 10))
        b.pos += 2
    return 0


cdef int _put_digits(_Buf b, int f, const char *s, Py_ssize_t n) except -1:
    """Pack n ASCII digits (and '='/'D' in track fields) as BCD into field f."""
    cdef Py_ssize_t i, nb, k
    cdef int nib, skip = 0
    cdef char c
    if LENKIND[f] == L_FIXED:
        if n != MAXLEN[f]:
            raise EncodeError(f"needs exactly {MAXLEN[f]} digits, got {n}", f)
    else:
        _put_bcd_len(b, f, n)
    nb = (n + 1) >> 1
    b.room(nb, f)
    if (n & 1) and not LEFT_ALIGN[f]:
        skip = 1
    memset(b.data + b.pos, 0, nb)
    for i in range(n):
        c = s[i]
        if 48 <= c <= 57:
            nib = c - 48
        elif FMT[f] == F_Z and (c == b"=" or c == b"D"):
            nib = 13
        else:
            raise EncodeError(f"{chr(c)!r} is not a digit", f)
        k = i + skip
        if k & 1:
            b.data[b.pos + (k >> 1)] |= nib
        else:
            b.data[b.pos + (k >> 1)] |= nib << 4
    b.pos += nb
    return 0


cdef int _put_bytes(_Buf b, int f, const char *s, Py_ssize_t n, bint text) except -1:
    cdef Py_ssize_t width = n
    if LENKIND[f] == L_FIXED:
        width = MAXLEN[f]
        if n > width or (n < width and not text):
            raise EncodeError(f"needs {'at most ' if text else ''}{width} bytes, got {n}", f)
    else:
        _put_bcd_len(b, f, n)
    b.room(width, f)
    memcpy(b.data + b.pos, s, n)
    if width > n:
        memset(b.data + b.pos + n, 0x20, width - n)  # text is space-padded
    b.pos += width
    return 0


cdef int _put_value(_Buf b, int f, object v) except -1:
    cdef uint8_t fmt = FMT[f]
    cdef unsigned long long num
    cdef char digits[24]
    cdef int i
    if fmt == F_N or fmt == F_Z:
        if isinstance(v, int) and fmt == F_N:
            try:
                num = PyLong_AsUnsignedLongLong(v)
            except (OverflowError, TypeError):
                raise EncodeError("a negative or too large number", f) from None
            if LENKIND[f] != L_FIXED:
                v = str(v)
            else:
                if MAXLEN[f] > 20:
                    v = str(v).zfill(MAXLEN[f])
                else:
                    for i in range(MAXLEN[f] - 1, -1, -1):
                        digits[i] = <char>(48 + num % 10)
                        num //= 10
                    if num:
                        raise EncodeError(f"{v} has more than {MAXLEN[f]} digits", f)
                    return _put_digits(b, f, digits, MAXLEN[f])
        if not isinstance(v, str) or not PyUnicode_IS_ASCII(v):
            raise EncodeError(f"expects a string of digits, got {type(v).__name__}", f)
        return _put_digits(b, f, <const char *>PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v))
    if fmt == F_AN:
        if isinstance(v, str):
            if PyUnicode_IS_ASCII(v):
                return _put_bytes(b, f, <const char *>PyUnicode_DATA(v),
                                  PyUnicode_GET_LENGTH(v), True)
            try:
                v = (<str>v).encode("gbk")
            except UnicodeEncodeError:
                raise EncodeError("text not encodable in GBK", f) from None
        if not isinstance(v, (bytes, bytearray)):
            raise EncodeError(f"expects text, got {type(v).__name__}", f)
        v = bytes(v)
        return _put_bytes(b, f, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), True)
    if not isinstance(v, bytes):
        if not isinstance(v, (bytearray, memoryview)):
            raise EncodeError(f"expects bytes, got {type(v).__name__}", f)
        v = bytes(v)
    return _put_bytes(b, f, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), False)


cdef bytes _encode(str mti, dict fields, Message echo_from, uint64_t echo_mask,
                   DesKey mac_key, const uint8_t *prefix, Py_ssize_t prefix_len,
                   bint framed):
    """Encode into one buffer: [LEN][prefix] MTI bitmap fields [MAC]."""
    cdef _Buf b = _Buf.__new__(_Buf)
    cdef PyObject *values[65]
    cdef PyObject *k
    cdef PyObject *v
    cdef Py_ssize_t it = 0, start, mti_at, total
    cdef uint64_t bitmap = 0, drop = 0
    cdef int f, i
    cdef const uint8_t *src
    if mti is None or len(mti) != 4 or not mti.isdigit() or not mti.isascii():
        raise EncodeError("MTI must be 4 digits", 0)
    for i in range(65):
        values[i] = NULL
    if fields is not None:
        while PyDict_Next(fields, &it, &k, &v):
            if not isinstance(<object>k, int) or not 2 <= <object>k <= 64:
                raise EncodeError(f"no field {<object>k!r} in a primary bitmap", None)
            f = <object>k
            if FMT[f] == F_NONE:
                raise EncodeError("not in the CUP POS field set", f)
            if <object>v is None:
                drop |= (<uint64_t>1) << (64 - f)  # None removes an echoed field
                continue
            values[f] = v
            bitmap |= (<uint64_t>1) << (64 - f)
    if echo_from is not None:
        bitmap |= echo_from.bitmap & echo_mask & ~drop
    if mac_key is not None:
        bitmap |= 1
    b.pos = 2 if framed else 0
    memcpy(b.data + b.pos, prefix, prefix_len)
    b.pos += prefix_len
    mti_at = b.pos
    b.data[b.pos] = <uint8_t>(((ord(mti[0]) - 48) << 4) | (ord(mti[1]) - 48))
    b.data[b.pos + 1] = <uint8_t>(((ord(mti[2]) - 48) << 4) | (ord(mti[3]) - 48))
    des_store64(b.data + b.pos + 2, bitmap)
    b.pos += 10
    for f in range(2, 65):
        if not _bit(bitmap, f):
            continue
        if f == 64 and mac_key is not None:
            b.room(8, 64)
            des_store64(b.data + b.pos, cup_mac_raw(mac_key, b.data + mti_at, b.pos - mti_at))
            b.pos += 8
        elif values[f] != NULL:
            _put_value(b, f, <object>values[f])
        else:
            # Echoed: copy the request's bytes, length prefix included.
            start = echo_from.off[f] - echo_from.prefix[f]
            total = echo_from.prefix[f] + echo_from.nbytes[f]
            b.room(total, f)
            src = <const uint8_t *>PyBytes_AS_STRING(echo_from.raw)
            memcpy(b.data + b.pos, src + start, total)
            if (FMT[f] == F_N or FMT[f] == F_Z) and (echo_from.units[f] & 1):
                # An odd digit count's pad nibble is written 0 (PROTOCOL.md
                # §2), even when the request used the F we accept.
                if LEFT_ALIGN[f]:
                    b.data[b.pos + total - 1] &= 0xF0
                else:
                    b.data[b.pos + echo_from.prefix[f]] &= 0x0F
            b.pos += total
    if framed:
        total = b.pos - 2
        if total > 0xFFFF:
            raise EncodeError("frame longer than 65535 bytes", None)
        b.data[0] = <uint8_t>(total >> 8)
        b.data[1] = <uint8_t>(total & 0xFF)
    return PyBytes_FromStringAndSize(<char *>b.data, b.pos)


cdef uint64_t _mask(fields) except? 0:
    cdef uint64_t m = 0
    for f in fields:
        if 2 <= f <= 63:  # field 64 is never echoed: the MAC is recomputed
            m |= (<uint64_t>1) << (64 - <int>f)
    return m


cdef uint64_t DEFAULT_ECHO_MASK = _mask(DEFAULT_ECHO)


def encode(str mti, dict fields, DesKey mac_key=None) -> bytes:
    """A bare ISO message. With ``mac_key``, bit 64 is set and the MAC appended.

    Values: ``int`` or digit ``str`` for numeric fields (ints are zero-padded
    to fixed widths), ``str`` with ``=`` or ``D`` for tracks, ``str`` or
    ``bytes`` for text (fixed text is space-padded), ``bytes`` for binary.
    """
    return _encode(mti, fields, None, 0, mac_key, NULL, 0, False)


def encode_frame(tpdu, header, str mti, dict fields, DesKey mac_key=None) -> bytes:
    """A whole frame: LEN (2, big-endian), TPDU (5), header (6), ISO message."""
    cdef bytes prefix = bytes(tpdu) + bytes(header)
    if len(prefix) != TPDU_HEADER:
        raise EncodeError("TPDU is 5 bytes and header 6", None)
    return _encode(mti, fields, None, 0, mac_key,
                   <const uint8_t *>PyBytes_AS_STRING(prefix), TPDU_HEADER, True)


def build_response(Message request not None, str mti, dict fields, DesKey mac_key=None,
                   echo=None, bint swap_tpdu=True, int processing=-1) -> bytes:
    """The response frame to ``request``.

    Fields in ``echo`` (default: PROTOCOL.md's sale echo list) are copied
    byte for byte from the request when it has them; ``fields`` adds or
    overrides (a value of None drops an echoed field). The TPDU swaps
    destination and source unless ``swap_tpdu`` is false; the header is
    echoed, with its processing-requirement nibble set to ``processing``
    when that is 0-15. A bare request (no TPDU) gives a bare message.
    """
    cdef uint64_t mask = DEFAULT_ECHO_MASK if echo is None else _mask(echo)
    cdef uint8_t prefix[TPDU_HEADER]
    cdef const uint8_t *p
    if request.tpdu_at < 0:
        return _encode(mti, fields, request, mask, mac_key, NULL, 0, False)
    p = <const uint8_t *>PyBytes_AS_STRING(request.raw) + request.tpdu_at
    memcpy(prefix, p, TPDU_HEADER)
    if swap_tpdu:
        prefix[1] = p[3]
        prefix[2] = p[4]
        prefix[3] = p[1]
        prefix[4] = p[2]
    if 0 <= processing <= 15:
        prefix[7] = (p[7] & 0xF0) | processing
    return _encode(mti, fields, request, mask, mac_key, prefix, TPDU_HEADER, True)
