"""The suite's own settings (conftest.py): the XLA flags it compiles with reach this
process and its subprocesses, and a flag this XLA does not know is never passed to it
(XLA aborts the process on one)."""

import os
import types

from conftest import FAST_COMPILE, OLDER_EMITTERS, _xla_accepts, with_fast_compile


def test_the_suite_compiles_with_its_flags_and_yours_come_last():
    flags = with_fast_compile("")
    assert flags.startswith(FAST_COMPILE)
    assert os.environ["XLA_FLAGS"].startswith(flags)
    assert with_fast_compile("--xla_mine=1").endswith(" --xla_mine=1")


def test_a_flag_xla_does_not_know_is_refused_and_the_older_emitters_taken_where_known():
    uncached = types.SimpleNamespace(cache=None)
    assert not _xla_accepts("--xla_jaxbp_no_such_flag=true", uncached)
    assert (OLDER_EMITTERS in with_fast_compile("")) == _xla_accepts(OLDER_EMITTERS, uncached)
