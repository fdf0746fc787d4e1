"""fastpath against an independent codec (pyiso8583 with the CUP field specs)."""

from __future__ import annotations

import iso8583
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.iso8583_baseline import cup_spec
from fastpath.codec import FIELD_SPECS, decode, encode

SPEC = cup_spec()
PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E))


def value_for(field: int) -> st.SearchStrategy[object]:
    fmt, kind, max_len = FIELD_SPECS[field]
    lo = max_len if kind == "fixed" else 0
    if fmt == "n":
        return st.text(alphabet="0123456789", min_size=lo, max_size=max_len)
    if fmt == "z":
        return st.text(alphabet="0123456789=", min_size=lo, max_size=max_len)
    if fmt == "an":
        return st.text(
            alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
            min_size=lo,
            max_size=max_len,
        )
    return st.binary(min_size=lo, max_size=max_len)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, dict[int, object]]:
    mti = draw(
        st.sampled_from(
            ["0100", "0110", "0200", "0210", "0220", "0320", "0400", "0500", "0800", "0830"]
        )
    )
    chosen = draw(st.sets(st.sampled_from(sorted(FIELD_SPECS)), max_size=len(FIELD_SPECS)))
    return mti, {f: draw(value_for(f)) for f in sorted(chosen)}


def as_pyiso(mti: str, fields: dict[int, object]) -> dict[str, str]:
    doc = {"t": mti}
    for f, v in fields.items():
        if isinstance(v, bytes):
            doc[str(f)] = v.hex().upper()
        elif FIELD_SPECS[f][0] == "z":
            doc[str(f)] = str(v).replace("=", "D")  # the track separator nibble
        else:
            doc[str(f)] = str(v)
    return doc


@settings(max_examples=400)
@given(messages())
def test_pyiso8583_decodes_what_fastpath_encodes(msg: tuple[str, dict[int, object]]) -> None:
    mti, fields = msg
    ours = encode(mti, fields)
    decoded, _ = iso8583.decode(ours, SPEC)
    expected = as_pyiso(mti, fields)
    assert decoded["t"] == mti
    for f in fields:
        assert decoded[str(f)] == expected[str(f)], f


@settings(max_examples=400)
@given(messages())
def test_fastpath_decodes_what_pyiso8583_encodes(msg: tuple[str, dict[int, object]]) -> None:
    mti, fields = msg
    theirs, _ = iso8583.encode(as_pyiso(mti, fields), SPEC)
    decoded = decode(bytes(theirs))
    assert decoded.mti == mti
    assert decoded.to_dict() == fields
    # and the two encoders agree byte for byte
    assert encode(mti, fields) == bytes(theirs)
