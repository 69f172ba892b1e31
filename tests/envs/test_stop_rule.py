"""The one stop rule of collectors and evaluators (Meta-World's convention: success at any step)."""

from genba.envs.registry import StopRule, get_task


def play(rule: StopRule, flags):
    """(steps played, success) of an episode whose steps report ``flags``."""
    verdict = rule.judge()
    for t, flag in enumerate(flags):
        if verdict.step(t, flag):
            return t + 1, verdict.success
    return len(flags), verdict.success


FLAGS = [0, 0, 1, 0, 0, 0, 0]  # success reached at step 2, then lost


def test_collector_holds_n_steps_and_evaluator_stops_at_first_success():
    assert play(StopRule(3), FLAGS) == (6, True)  # step 2 + 3 held steps, success at any step
    assert play(StopRule(0), FLAGS) == (3, True)
    assert play(StopRule(None), FLAGS) == (7, False)  # judged on the last step
    assert play(StopRule(None), [0, 1, 1]) == (3, True)
    assert play(StopRule(2), [0.0] * 5) == (5, False)


def test_tasks_give_collect_and_eval_the_same_verdict():
    mw, drive = get_task("metaworld/reach-v3"), get_task("drive/pmsm-current")
    assert mw.stop_rule().hold == mw.stop_after_success and mw.stop_rule(evaluating=True).hold == 0
    assert drive.stop_rule() == drive.stop_rule(evaluating=True) == StopRule(None)
    for flags in (FLAGS, [0] * 7, [1] * 7, [0, 0, 0, 0, 0, 0, 1]):  # same success whether holding or not
        assert play(mw.stop_rule(), flags)[1] == play(mw.stop_rule(evaluating=True), flags)[1]
