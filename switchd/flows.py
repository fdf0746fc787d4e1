"""Which participants run, in order, for each transaction kind.

Read a row to know what the switch does with that request; the participants
live in checks.py (shared checks), money.py (ledger) and management.py.
"""

from __future__ import annotations

from fastpath.kinds import Kind
from switchd import checks, management, money

# Checks before any money: who is asking, is it signed, is it new, which card.
_SIGNED = (checks.terminal, checks.mac, checks.duplicate)
_CARD = (*_SIGNED, checks.card, checks.permitted)
# Requests that post money: under the terminal's open batch only. Checked
# before the duplicate key is claimed, so a refusal is not journaled.
_POSTING = (checks.terminal, checks.mac, checks.batch, checks.duplicate, checks.card,
            checks.permitted)  # fmt: skip

FLOWS = {
    Kind.SIGN_ON: (checks.terminal, management.sign_on),
    Kind.SIGN_OFF: (*_SIGNED, management.sign_off),
    Kind.ECHO: (checks.terminal, checks.mac, management.echo),
    Kind.PARAM_DOWNLOAD: (checks.terminal, checks.mac, management.parameter_download),
    Kind.SETTLEMENT: (*_SIGNED, management.settlement),
    Kind.BATCH_UPLOAD: (*_SIGNED, management.batch_upload),
    Kind.BALANCE: (*_CARD, checks.pin, money.balance),
    Kind.SALE: (*_POSTING, checks.amount, checks.pin, money.sale),
    Kind.PREAUTH: (*_POSTING, checks.amount, checks.pin, money.preauth),
    Kind.PREAUTH_CANCEL: (*_POSTING, money.preauth_cancel),
    Kind.COMPLETION: (*_POSTING, checks.amount, money.completion),
    Kind.COMPLETION_ADVICE: (*_POSTING, checks.amount, money.completion),
    Kind.VOID: (*_POSTING, money.void),
    Kind.COMPLETION_VOID: (*_POSTING, money.completion_void),
    Kind.REFUND: (*_POSTING, checks.amount, money.refund),
    # A reversal undoes whatever was done: no card or batch check can refuse
    # it (it names the original's batch, which may have closed since).
    Kind.REVERSAL: (*_SIGNED, money.reversal),
}
