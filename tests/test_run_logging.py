from reopold_agent.run_logging import RunLogger, is_evaluation_record, read_metrics


def _log_run(logger: RunLogger, steps: int, *, eval_every: int) -> None:
    """Rows as the trainer writes them: evaluations at 0 and every ``eval_every`` steps done."""
    logger.log_metrics(0, {"eval/teacher_greedy_accuracy": 1.0})
    logger.log_metrics(0, {"eval/greedy_accuracy": 0.1})
    for step in range(steps):
        logger.log_metrics(step, {"objective/loss": float(step)})
        (logger.run_dir / "trajectories").mkdir(exist_ok=True)
        (logger.run_dir / "trajectories" / f"step_{step:06d}.jsonl").write_text("")
        if (step + 1) % eval_every == 0:
            logger.log_metrics(step + 1, {"eval/greedy_accuracy": 0.1 * (step + 1)})
            (logger.run_dir / "trajectories" / f"eval_{step + 1:06d}.jsonl").write_text("")


def test_rewind_keeps_exactly_what_checkpoint_n_had_seen(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    _log_run(logger, 5, eval_every=2)  # killed after step 4 was logged; checkpoint 2 is the newest
    with open(logger.metrics_path, "a") as fh:
        fh.write('{"step": 5, "objective/lo')  # a line cut by the kill
    kept = logger.rewind_to(2)
    rows = [(r["step"], next(k for k in r if k != "step")) for r in read_metrics(tmp_path)]
    assert rows == [(0, "eval/teacher_greedy_accuracy"), (0, "eval/greedy_accuracy"), (0, "objective/loss"),
                    (1, "objective/loss"), (2, "eval/greedy_accuracy")]
    assert [r["step"] for r in kept] == [0, 0, 0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "trajectories").iterdir()) == [
        "eval_000002.jsonl", "step_000000.jsonl", "step_000001.jsonl"]
    # training on from step 2 writes each step once
    for step in range(2, 5):
        logger.log_metrics(step, {"objective/loss": float(step)})
    train_steps = [r["step"] for r in read_metrics(tmp_path) if not is_evaluation_record(r)]
    assert train_steps == [0, 1, 2, 3, 4]


def test_rewind_hides_later_tensorboard_events_and_keeps_the_evaluation_at_n(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path)
    _log_run(logger, 4, eval_every=2)
    logger.rewind_to(2)
    logger.log_metrics(2, {"objective/loss": 20.0})
    logger.log_metrics(3, {"objective/loss": 30.0})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("objective/loss")]
    assert loss == [(0, 0.0), (1, 1.0), (2, 20.0), (3, 30.0)]
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("eval/greedy_accuracy")] == [
        (0, 0.1), (2, 0.2)]


def test_is_evaluation_record():
    assert is_evaluation_record({"step": 3, "eval/greedy_accuracy": 0.5, "eval/pass@1": 0.5})
    assert not is_evaluation_record({"step": 3, "objective/loss": 1.0, "eval/x": 1.0})
    assert not is_evaluation_record({"step": 3})
