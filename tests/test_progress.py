import io

from rich.console import Console

from reopold_agent.progress import TrainProgress, accuracy_summary, evaluation_line, format_duration


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _plain(progress: TrainProgress) -> io.StringIO:
    """Send the progress output to a non-terminal buffer (as in a log file)."""
    out = io.StringIO()
    progress.console = Console(file=out, soft_wrap=True, force_terminal=False, width=80)
    progress._progress.disable = True
    return out


def test_seconds_per_step_is_a_running_median_and_eta_uses_it():
    clock = _Clock()
    progress = TrainProgress(10, clock=clock)
    out = _plain(progress)
    with progress:
        for step, (gap, own) in enumerate([(0, 1.0), (1.0, 9.0), (30.0, 9.0), (1.2, 9.0), (0.8, 9.0)]):
            clock.now += gap
            progress.update(step, {"time/step_s": own, "objective/loss": 0.5})
        # durations: 1.0 (the first step's own), then 1.0, 30.0 (an evaluation between), 1.2, 0.8
        assert progress.seconds_per_step == 1.0
        assert progress.eta_seconds(5) == 5.0
        for step in range(5, 10):
            clock.now += 1.0
            progress.update(step, {"time/step_s": 1.0})
    lines = out.getvalue().splitlines()  # one plain line every 10 steps
    assert lines == ["step 10/10  s/step 1.00  ETA 0:00:00"]


def test_the_eta_is_printed_on_the_plain_lines():
    clock = _Clock()
    progress = TrainProgress(30, clock=clock)
    out = _plain(progress)
    with progress:
        for step in range(10):
            clock.now += 2.0
            progress.update(step, {"time/step_s": 2.0})
    assert "s/step 2.00  ETA 0:00:40" in out.getvalue()


def test_a_long_evaluation_line_is_not_wrapped_in_a_log():
    progress = TrainProgress(10)
    out = _plain(progress)
    metrics = {"eval/greedy_accuracy": 0.5, "eval/sampled_accuracy": 0.25, **{f"eval/pass@{k}": 0.5 for k in range(1, 9)},
               **{f"eval/maj@{k}": 0.5 for k in range(1, 9)}}
    with progress:
        progress.update(100, metrics)
        progress.log("a note " * 30)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and len(lines[0]) > 80 and lines[0] == evaluation_line(100, metrics)
    assert lines[0].startswith("eval at step 100: greedy_accuracy 0.500, sampled_accuracy 0.250, pass@1 0.500")


def test_format_duration():
    assert format_duration(None) == "-:--:--"
    assert format_duration(3723.4) == "1:02:03" and format_duration(59.6) == "0:01:00"


def test_accuracy_summary_reports_teacher_and_student_before_and_after():
    records = [
        {"step": 0, "eval/teacher_greedy_accuracy": 0.998, "eval/teacher_sampled_accuracy": 0.994,
         "eval/teacher_num_problems": 500.0},
        {"step": 0, "eval/greedy_accuracy": 0.192, "eval/sampled_accuracy": 0.112, "eval/num_problems": 500.0},
        {"step": 0, "objective/loss": 1.0},
        {"step": 100, "eval/greedy_accuracy": 0.5, "eval/sampled_accuracy": 0.4, "eval/num_problems": 500.0},
        {"step": 400, "eval/greedy_accuracy": 0.71, "eval/sampled_accuracy": 0.628, "eval/num_problems": 500.0},
    ]
    assert accuracy_summary(records) == [
        "greedy accuracy on 500 problems: teacher 0.998, student before 0.192 (step 0), after 0.710 (step 400)",
        "sampled accuracy on 500 problems: teacher 0.994, student before 0.112 (step 0), after 0.628 (step 400)",
    ]
    no_teacher = [r for r in records if "eval/teacher_greedy_accuracy" not in r and r["step"] == 0]
    assert accuracy_summary(no_teacher) == [
        "greedy accuracy on 500 problems: student before 0.192 (step 0)",
        "sampled accuracy on 500 problems: student before 0.112 (step 0)",
    ]
    assert accuracy_summary([{"step": 0, "objective/loss": 1.0}]) == []
