import os
import signal

import pytest

from reopold_agent.interruption import StopSignals, TrainingInterrupted


def test_a_signal_outside_a_deferred_block_stops_at_once():
    with StopSignals() as stop:
        with pytest.raises(TrainingInterrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        assert stop.pending is None
    assert info.value.name == "SIGTERM" and info.value.exit_code == 143
    assert isinstance(info.value, KeyboardInterrupt)


def test_a_signal_inside_a_deferred_block_waits_for_its_end():
    reached_end = []
    with StopSignals() as stop:
        with pytest.raises(TrainingInterrupted) as info:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                with stop.deferred():  # nested blocks hold it too
                    os.kill(os.getpid(), signal.SIGTERM)
                assert stop.pending == signal.SIGINT
                reached_end.append(True)
    assert reached_end == [True] and info.value.name == "SIGINT" and info.value.exit_code == 130


def test_handlers_are_restored_on_exit():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
