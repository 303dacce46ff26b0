"""The ledger's own arithmetic (the suite's summary must not lie)."""

from __future__ import annotations

from tests.security.ledger import Ledger


def test_totals_and_table() -> None:
    ledger = Ledger()
    first = ledger.start("a")
    first.leaked(0)
    first.bad_inputs(5)
    first.fault("api 500")
    first.finish("passed")
    second = ledger.start("b")
    second.leaked(2)
    second.fault("nft missing")
    second.finish("failed")
    assert (ledger.leaked, ledger.bad_inputs, ledger.faults) == (2, 5, 1)
    assert ledger.table()[-1] == (
        "scenarios run: 2 (passed 1); packets leaked: 2; bad inputs tried: 5; faults survived: 1"
    )
