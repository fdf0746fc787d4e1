"""Thales error codes (THALES.md §7) and the exception handlers raise to reply with one."""

from __future__ import annotations

OK = "00"
VERIFY_FAILED = "01"  # also: parity corrected (A7), MAC verification failed (M9)
INVALID_MODE = "02"
INVALID_INPUT_FORMAT = "03"
INVALID_KEY_TYPE_CODE = "04"  # on M6/M8: invalid MAC algorithm
INVALID_KEY_LENGTH_FLAG = "05"  # on M6/M8: invalid key type
INVALID_MESSAGE_LENGTH = "06"
INVALID_PADDING = "09"
SOURCE_KEY_PARITY = "10"
DEST_KEY_PARITY = "11"
PIN_UNDER_LMK_INVALID = "14"
INVALID_INPUT = "15"
PIN_BLOCK_INVALID = "20"
INVALID_INDEX = "21"
INVALID_ACCOUNT = "22"
INVALID_PIN_FORMAT = "23"
PIN_LENGTH = "24"
INVALID_KEY_SCHEME = "26"
INCOMPATIBLE_KEY_LENGTH = "27"
INTERNAL_ERROR = "41"
PIN_FORMAT_DISABLED = "69"
# Unknown command code: LB's behaviour (reply code + 1, error 99) was chosen
# over PT's ZZ00, because a `00` would read as success to a host.
UNKNOWN_COMMAND = "99"


class HsmError(Exception):
    """A command failed with a Thales error code; the reply ends after the code."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
